"""How strangers and operators fared at the door: enrollments, renewals, operator logins.

Counted in the process as plain integers, whether metrics are on or not (an add per event), and
exported at scrape time by ``controlplane.metrics`` as ``stanch_cp_enrollments_total``,
``stanch_cp_certificate_renewals_total``, ``stanch_cp_operator_authentications_total``,
``stanch_cp_console_logins_total`` and ``stanch_cp_console_sessions`` (the web console's
logins by result, and its sessions open now).
Kept on :class:`~controlplane.auth.Authenticator` (``plane.auth.events``) because the two
places that count, the enrollment servicer and the operator interceptor, both reach it; neither
needs ``prometheus_client``.

Cardinality is fixed in this file: every label value is one of the tuples below, and anything
else is counted under ``other``. A host id, a token id, an operator name or a peer address is
never a label (they are in the log and the audit trail, where they belong).

Every key exists from the start (at 0), so the dictionaries never change size: the scrape thread
can copy them while the event loop counts, and ``increase()`` sees the first event.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

ENROLL_RESULTS = (
    "issued",
    "rate_limited",
    "disabled",
    "bad_csr",
    "bad_token",
    "token_used",
    "token_expired",
    "wrong_host",
    "revoked",
    "other",
)
"""``Enroll`` outcomes: ``issued``, or why it was refused. ``bad_token`` is a malformed, unknown
or wrong-secret token (a guess, a typo, a stale paste); ``wrong_host`` a token bound to another
host, or an unbound token for a host that already holds a live certificate."""

TOKEN_CHECKS: Mapping[str, str] = {
    "unknown": "bad_token",
    "wrong_secret": "bad_token",
    "used": "token_used",
    "expired": "token_expired",
    "wrong_host": "wrong_host",
}
"""Storage's token verdict (``base_pki.TokenCheck``) as an enrollment result."""

RENEW_RESULTS = ("renewed", "refused", "bad_csr", "disabled", "other")
"""``Renew`` outcomes. ``refused``: no host certificate, or a revoked host or certificate."""

AUTH_METHODS = ("token", "certificate", "insecure_dev", "none")
"""How an operator call tried to authenticate: a bearer token (the legacy shared token too), an
operator certificate, the ``--insecure`` development admin, or nothing usable at all."""

AUTH_RESULTS = ("ok", "unauthenticated", "permission_denied")

CONSOLE_LOGIN_RESULTS = (
    "ok",
    "bad_token",
    "forbidden",
    "rate_limited",
    "csrf",
    "bad_form",
    "other",
)
"""Web console login attempts: ``ok`` (a session was opened), ``bad_token`` (empty, malformed,
unknown, wrong, expired or revoked), ``forbidden`` (a valid token whose role may not use the
console), ``rate_limited`` (429 before any check), ``csrf`` (the login form's own CSRF cookie
missing or wrong, or another origin), ``bad_form`` (a form too large or unreadable)."""


class SecurityEvents:
    """The tallies. Called on the event loop; read (copied) from the scrape thread."""

    def __init__(self) -> None:
        self.enrollments: dict[str, int] = dict.fromkeys(ENROLL_RESULTS, 0)
        self.renewals: dict[str, int] = dict.fromkeys(RENEW_RESULTS, 0)
        self.authentications: dict[tuple[str, str], int] = {
            (method, result): 0 for method in AUTH_METHODS for result in AUTH_RESULTS
        }
        self.console_logins: dict[str, int] = dict.fromkeys(CONSOLE_LOGIN_RESULTS, 0)
        self.console_sessions = 0
        """In a snapshot (:meth:`copy`): console sessions open then."""
        self.count_console_sessions: Callable[[], int] | None = None
        """Set by the web console when it starts: its open sessions now (called on the event
        loop, by :meth:`copy`). None without a console: 0 sessions."""
        self.expiring: int | None = None
        """Hosts whose certificate expires soon, as ``controlplane.metrics`` last counted them
        (a storage scan it caches here, next to the plane, rather than repeat every scrape)."""
        self.expiring_checked = float("-inf")
        """When that count was made (monotonic seconds)."""

    def enrolled(self, result: str) -> None:
        self.enrollments[result if result in self.enrollments else "other"] += 1

    def renewed(self, result: str) -> None:
        self.renewals[result if result in self.renewals else "other"] += 1

    def authenticated(self, method: str, result: str) -> None:
        """One operator call's authentication: ``method`` from :data:`AUTH_METHODS` (else
        ``none``), ``result`` from :data:`AUTH_RESULTS` (else ``unauthenticated``)."""
        key = (
            method if method in AUTH_METHODS else "none",
            result if result in AUTH_RESULTS else "unauthenticated",
        )
        self.authentications[key] += 1

    def console_login(self, result: str) -> None:
        """One web console login attempt, ``result`` from :data:`CONSOLE_LOGIN_RESULTS`
        (else ``other``)."""
        self.console_logins[result if result in self.console_logins else "other"] += 1

    def copy(self) -> SecurityEvents:
        """A consistent-enough snapshot for one scrape (each dictionary copied at once), with
        the console's open sessions counted now. Call it on the event loop."""
        snap = SecurityEvents()
        snap.enrollments = dict(self.enrollments)
        snap.renewals = dict(self.renewals)
        snap.authentications = dict(self.authentications)
        snap.console_logins = dict(self.console_logins)
        count = self.count_console_sessions
        snap.console_sessions = count() if count is not None else 0
        return snap


VIA_METHOD: Mapping[str, str] = {
    "token": "token",
    "cert": "certificate",
    "insecure-dev": "insecure_dev",
}
"""``Principal.via`` as an authentication method label."""

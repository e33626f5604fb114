"""The security part of the control plane's ``/metrics``: enrollment, renewal, operator
authentication and web console login outcomes (tallied by ``controlplane.security_events``) as
counters, the console's open sessions as a gauge, and the hosts whose certificate is about to
expire, read from storage.

Read at scrape time by ``controlplane.metrics`` (``snapshot_plane`` copies the tallies on the
event loop and counts the certificates on the storage thread, at most every
:data:`EXPIRY_REFRESH` seconds). Labels are the fixed results and methods of
``security_events``: never a host id, a token id or an operator name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from controlplane.security_events import SecurityEvents
from controlplane.storage.base import Storage
from controlplane.storage.base_pki import OPERATOR_SUBJECT

EXPIRY_WINDOW = 7 * 86400.0
"""``stanch_cp_host_certificates_expiring_soon`` counts hosts whose certificate ends within this."""
EXPIRY_REFRESH = 300.0
"""That count reads every certificate row (one per enrollment and renewal), so it is recomputed
at most this often (monotonic seconds), not on every scrape: a day-scale alert loses nothing."""


def expiring_hosts(db: Storage, now: float, window: float = EXPIRY_WINDOW) -> int:
    """On the storage thread: hosts whose newest certificate is unrevoked, still valid, and
    ends within ``window``. An older certificate of a host that has renewed does not count,
    nor do operators' (recorded only when revoked) or revoked hosts'."""
    newest: dict[str, tuple[float, float, float]] = {}
    for cert in db.certificates():
        if cert.host_id.startswith(OPERATOR_SUBJECT):
            continue
        seen = newest.get(cert.host_id)
        if seen is None or cert.issued_at > seen[0]:
            newest[cert.host_id] = (cert.issued_at, cert.not_after, cert.revoked_at)
    return sum(
        1
        for _, not_after, revoked_at in newest.values()
        if not revoked_at and now < not_after <= now + window
    )


def _counter(
    name: str, text: str, labels: list[str], tally: Mapping[Any, int]
) -> CounterMetricFamily:
    """One counter family from a tally keyed by a label value (or a tuple of them)."""
    family = CounterMetricFamily(name, text, labels=labels)
    for key, count in tally.items():
        family.add_metric(list(key) if isinstance(key, tuple) else [key], float(count))
    return family


def security_families(
    events: SecurityEvents,
) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    yield _counter(
        "stanch_cp_enrollments",
        "Enroll calls by result: issued, or why refused (rate_limited, disabled, bad_csr, "
        "bad_token, token_used, token_expired, wrong_host, revoked).",
        ["result"],
        events.enrollments,
    )
    yield _counter(
        "stanch_cp_certificate_renewals",
        "Renew calls by result: renewed, refused (no host certificate, or revoked), bad_csr, "
        "disabled.",
        ["result"],
        events.renewals,
    )
    yield _counter(
        "stanch_cp_operator_authentications",
        "Operator calls by how the caller authenticated (token, certificate, insecure_dev, or "
        "none) and the result (ok, unauthenticated, permission_denied).",
        ["method", "result"],
        events.authentications,
    )
    yield _counter(
        "stanch_cp_console_logins",
        "Web console login attempts by result: ok, bad_token (unknown, wrong, expired or "
        "revoked), forbidden (a role that may not use the console), rate_limited, csrf, "
        "bad_form.",
        ["result"],
        events.console_logins,
    )
    yield GaugeMetricFamily(
        "stanch_cp_console_sessions",
        "Web console sessions open now (logged in, not expired; 0 without --console-listen).",
        value=float(events.console_sessions),
    )

"""Operator identity: roles, principals, API tokens, operator certificates.

A caller is a :class:`Principal` (name, role, how it proved it). Roles are ordered
``viewer < operator < admin``; :func:`allows` is the one comparison. Three ways in:

- an API token ``stk_<id>_<secret>`` in ``authorization: Bearer ...`` metadata. Only the SHA-256
  of the secret is stored. Why not bcrypt or argon2: they exist to slow down guessing of
  low-entropy *passwords*. The secret here is 256 random bits (``secrets.token_urlsafe(32)``), so
  no dictionary applies and a brute force of the hash is as hopeless as one of the token itself;
  a deliberately slow hash would only spend ~100 ms of CPU on every RPC (and make every call a
  cheap denial-of-service lever). Hashes are compared in constant time.
- an operator client certificate issued by the control plane's CA (verified by TLS before we see
  it): SAN URI ``stanch://operator/<name>``, role in the subject's OU.
- ``--insecure`` development mode while *no* token has ever been created: every caller is
  ``insecure-dev`` with the admin role, and the server says so loudly. Creating the first token
  (``stanch-cp tokens create``) ends that for good, since revoked tokens still count.

The legacy shared ``STANCH_ADMIN_TOKEN`` is accepted as one more admin token (deprecated).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from agent.clock import Clock
from controlplane.errors import InvalidRequest, NotFound, Refused
from controlplane.pki_revocation import OperatorRevocations
from controlplane.security_events import SecurityEvents
from controlplane.storage.base_auth import ApiTokenRecord, RoleChange
from controlplane.storage.runner import StorageThread

log = logging.getLogger("stanch.cp.auth")
ROLES = ("viewer", "operator", "admin")
TOKEN_PREFIX = "stk_"
TOUCH_EVERY = 60.0
"""``last_used_at`` is written at most this often per token: a busy CI token must not turn every
read into a write."""
OPERATOR_URI = "stanch://operator/"


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    via: str
    """token | cert | insecure-dev | console"""


INSECURE_DEV = Principal("insecure-dev", "admin", "insecure-dev")
LEGACY_ADMIN = Principal("legacy-admin-token", "admin", "token")

_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "stanch_principal", default=None
)
_notes: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "stanch_audit_notes", default=None
)


def allows(principal: Principal, needed_role: str) -> bool:
    """Whether ``principal``'s role is at least ``needed_role`` (an unknown role never is)."""
    if principal.role not in ROLES or needed_role not in ROLES:
        return False
    return ROLES.index(principal.role) >= ROLES.index(needed_role)


def current_principal() -> Principal | None:
    """Who made the call being handled (set by ``controlplane.auth_interceptor``)."""
    return _current.get()


def set_principal(principal: Principal | None) -> contextvars.Token[Principal | None]:
    return _current.set(principal)


def reset_principal(token: contextvars.Token[Principal | None]) -> None:
    _current.reset(token)


def open_audit_notes() -> dict[str, Any]:
    """A fresh set of notes for the call being handled (the interceptor opens one per call and
    adds it to the call's audit entry ``detail``)."""
    notes: dict[str, Any] = {}
    _notes.set(notes)
    return notes


def note_audit(**fields: Any) -> None:
    """Add what only the handler knows to the call's audit entry (e.g. a token's role before
    the change). Outside an audited call, nothing is recorded."""
    notes = _notes.get()
    if notes is not None:
        notes.update(fields)


def actor(claimed: str = "") -> str:
    """The name to record for the call being handled: the authenticated principal's, never what
    the request claims. In insecure development mode nobody is authenticated, so the claim is
    all there is (the audit entry still says ``via insecure-dev``), as outside any call."""
    principal = current_principal()
    if principal is None:
        return claimed
    if principal.via == "insecure-dev":
        return claimed or principal.name
    return principal.name


# ---- tokens ------------------------------------------------------------------------------------


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidRequest(f"role {role!r}: unknown; use one of {', '.join(ROLES)}")
    return role


def mint(
    name: str, role: str, now: float, expires_in: float = 0.0, by: str = ""
) -> tuple[str, ApiTokenRecord]:
    """A new token: the text to hand over once, and the record to store (hash only)."""
    if not name.strip():
        raise InvalidRequest("token name: empty; name who holds it (e.g. alice, ci-deploy)")
    if expires_in < 0:
        raise InvalidRequest(f"expiry {expires_in:g}s: negative; give a duration such as 30d")
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    record = ApiTokenRecord(
        id=token_id,
        name=name.strip(),
        role=check_role(role),
        secret_hash=secret_hash(secret),
        created_at=now,
        expires_at=now + expires_in if expires_in else 0.0,
        created_by=by,
    )
    return f"{TOKEN_PREFIX}{token_id}_{secret}", record


def split_token(text: str) -> tuple[str, str] | None:
    """``stk_<id>_<secret>`` -> (id, secret); None when it is not shaped like one."""
    if not text.startswith(TOKEN_PREFIX):
        return None
    token_id, sep, secret = text[len(TOKEN_PREFIX) :].partition("_")
    if not sep or not token_id or not secret:
        return None
    return token_id, secret


def usable(record: ApiTokenRecord, now: float) -> bool:
    return not record.revoked_at and not (record.expires_at and now >= record.expires_at)


class Authenticator:
    """Checks operator credentials against the token table; available as ``plane.auth``."""

    def __init__(self, store: StorageThread, clock: Clock) -> None:
        self.store = store
        self.db = store.storage
        self.clock = clock
        self.dev_mode = False
        """Set by the server in ``--insecure`` mode: allows :data:`INSECURE_DEV` while no
        token exists."""
        self._legacy: bytes | None = None
        self._tokens_exist = False
        self._touched: dict[str, float] = {}
        self.revocations = OperatorRevocations(store, clock)
        """Revoked operator certificates and names (cached; see ``pki_revocation``)."""
        self.events = SecurityEvents()
        """Enrollment, renewal and operator authentication outcomes, for metrics."""

    def accept_legacy(self, token: str | None) -> None:
        """The deprecated shared admin token (``--admin-token-env``); None: none."""
        self._legacy = secret_hash(token).encode() if token else None

    async def from_token(self, token: str) -> Principal | None:
        """The principal a bearer token stands for; None when it is unknown, malformed, wrong,
        expired or revoked (the caller is told nothing more). Never logs the token."""
        if self._legacy is not None and hmac.compare_digest(
            secret_hash(token).encode(), self._legacy
        ):
            return LEGACY_ADMIN
        parts = split_token(token)
        if parts is None:
            return None
        token_id, secret = parts
        record = await self.store.run(self.db.api_token, token_id)
        if record is None:
            return None
        if not hmac.compare_digest(secret_hash(secret).encode(), record.secret_hash.encode()):
            return None
        return await self._principal(record)

    async def from_token_id(self, token_id: str) -> Principal | None:
        """The principal of token ``token_id`` while it is still usable; None once it is
        unknown, expired or revoked. No secret is checked: this is for a holder that proved the
        secret before and keeps only the id (a console session re-checking its token)."""
        record = await self.store.run(self.db.api_token, token_id)
        return None if record is None else await self._principal(record)

    async def _principal(self, record: ApiTokenRecord) -> Principal | None:
        now = self.clock.now()
        if not usable(record, now):
            return None
        if now - max(record.last_used_at, self._touched.get(record.id, 0.0)) >= TOUCH_EVERY:
            self._touched[record.id] = now
            await self.store.run(self.db.touch_api_token, record.id, now)
        return Principal(record.name, record.role, "token")

    async def from_certificate(
        self, auth_context: Mapping[str, Iterable[bytes]]
    ) -> Principal | None:
        """The operator of a verified client certificate, unless its serial or its operator's
        name is revoked (None then, and the reason is logged, never told to the caller)."""
        found = operator_certificate(auth_context)
        if found is None:
            return None
        principal, cert = found
        try:
            why = await self.revocations.refuses(principal.name, cert)
        except Exception:  # storage down: the revoked set is unknown, so fail closed
            log.exception(
                "operator certificate of %r refused: revocations unreadable", principal.name
            )
            return None
        if why is not None:
            log.warning("operator certificate of %r refused: %s", principal.name, why)
            return None
        return principal

    async def dev_principal(self) -> Principal | None:
        """:data:`INSECURE_DEV` in ``--insecure`` mode while no credential exists; else None.
        Once a token was seen it stays required (no query per call from then on)."""
        if not self.dev_mode or self._legacy is not None or self._tokens_exist:
            return None
        if await self.store.run(self.db.any_api_token):
            self._tokens_exist = True
            return None
        return INSECURE_DEV

    async def create(
        self, name: str, role: str, expires_in: float, by: str
    ) -> tuple[str, ApiTokenRecord]:
        token, record = mint(name, role, self.clock.now(), expires_in, by)
        await self.store.run(self.db.put_api_token, record)
        self._tokens_exist = True
        return token, record

    async def tokens(self, include_inactive: bool = False) -> list[ApiTokenRecord]:
        now = self.clock.now()
        found: list[ApiTokenRecord] = await self.store.run(self.db.api_tokens)
        return [t for t in found if include_inactive or usable(t, now)]

    async def revoke(self, token_or_id: str) -> ApiTokenRecord | None:
        parts = split_token(token_or_id)
        token_id = parts[0] if parts else token_or_id
        revoked: ApiTokenRecord | None = await self.store.run(
            self.db.revoke_api_token, token_id, self.clock.now()
        )
        return revoked

    async def set_role(self, token_or_id: str, role: str) -> RoleChange:
        """Give token ``token_or_id`` a new role, effective from its next call (roles are read
        from storage on every call). A revoked token stays revoked: changing its role is refused,
        as it could only mislead a reader of ``tokens list``."""
        check_role(role)
        parts = split_token(token_or_id)
        token_id = parts[0] if parts else token_or_id
        record: ApiTokenRecord | None = await self.store.run(self.db.api_token, token_id)
        if record is None:
            raise NotFound(f"token {token_id[:24]!r}: no such token; see 'opsctl tokens list'")
        if record.revoked_at:
            raise Refused(
                f"token {token_id!r} is revoked; create a new one with "
                f"'opsctl tokens create --name {record.name} --role {role}'"
            )
        change: RoleChange | None = await self.store.run(self.db.set_api_token_role, token_id, role)
        if change is None:  # deleted in between: tokens are never deleted, but say it right
            raise NotFound(f"token {token_id[:24]!r}: no such token; see 'opsctl tokens list'")
        note_audit(old_role=change.old_role, new_role=change.token.role, holder=record.name)
        log.warning(
            "token %s (%s): role %s -> %s by %s",
            token_id,
            record.name,
            change.old_role,
            change.token.role,
            actor(),
        )
        return change


# ---- operator certificates ---------------------------------------------------------------------


def from_certificate(auth_context: Mapping[str, Iterable[bytes]]) -> Principal | None:
    """The operator a TLS peer certificate names, or None.

    gRPC puts the peer's certificate in the auth context only after the TLS layer verified it
    against the server's client CA, so here we only read it: the SAN URI
    ``stanch://operator/<name>`` and the role in the subject's OU. A host certificate
    (``stanch://host/...``) is not an operator, whatever its OU says. Revocation is not checked
    here: :meth:`Authenticator.from_certificate` does that.
    """
    found = operator_certificate(auth_context)
    return None if found is None else found[0]


def operator_certificate(
    auth_context: Mapping[str, Iterable[bytes]],
) -> tuple[Principal, x509.Certificate] | None:
    """:func:`from_certificate`, with the certificate itself (for its serial and issue time)."""
    pem = next(iter(auth_context.get("x509_pem_cert") or ()), None)
    if pem is None:
        return None
    try:
        cert = x509.load_pem_x509_certificate(pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    names = [
        uri[len(OPERATOR_URI) :]
        for uri in sans.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(OPERATOR_URI)
    ]
    units = [
        str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    ]
    if len(names) != 1 or not names[0] or len(units) != 1 or units[0] not in ROLES:
        return None
    return Principal(names[0], units[0], "cert"), cert


def bearer(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header, if any."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None

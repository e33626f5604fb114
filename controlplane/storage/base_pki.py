"""Storage for host identity: enrollment tokens, issued client certificates, revoked hosts.

Kept apart from ``base`` so the security records have one home; ``Storage`` includes this
Protocol, so every backend implements it. Only a hash of an enrollment token's secret is ever
stored; the token itself is shown once, to the operator who created it.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

OPERATOR_SUBJECT = "operator:"
"""Operator certificates are issued offline (``opsctl pki issue-operator``) and so never
recorded; a revoked one is kept in ``certificates`` with ``host_id = "operator:<name>"`` (or
:data:`UNKNOWN_OPERATOR`), and a revoked operator *name* in ``revoked_hosts`` under the same
key. ``:`` is not allowed in a host id, so neither can collide with a host."""
UNKNOWN_OPERATOR = OPERATOR_SUBJECT + "?"


def operator_subject(name: str) -> str:
    return OPERATOR_SUBJECT + name if name else UNKNOWN_OPERATOR


TokenCheck = Literal["ok", "unknown", "wrong_secret", "used", "expired", "wrong_host"]
"""Why a token was (not) accepted: logged by the control plane, never told to the caller."""


@dataclass(frozen=True)
class EnrollmentTokenRecord:
    id: str
    secret_hash: str
    host_id: str
    """Empty when the token may enroll any host id not already enrolled."""
    created_at: float
    expires_at: float
    used_at: float = 0.0
    used_by: str = ""
    created_by: str = ""


@dataclass(frozen=True)
class CertificateRecord:
    serial: str
    """Lower-case hex, as ``format(cert.serial_number, "x")``."""
    host_id: str
    not_before: float
    not_after: float
    issued_at: float
    revoked_at: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class RevokedHost:
    host_id: str
    at: float
    revoked_by: str
    reason: str


@dataclass(frozen=True)
class RevokedOperators:
    """What the auth interceptor refuses among operator certificates."""

    serials: frozenset[str] = frozenset()
    """Every revoked certificate serial that is not a host's."""
    names: Mapping[str, float] = field(default_factory=dict)
    """Operator name -> when it was revoked: its certificates issued until then are refused."""


class PkiStorage(Protocol):
    """Tables ``enrollment_tokens``, ``certificates`` and ``revoked_hosts``."""

    def add_enrollment_token(self, token: EnrollmentTokenRecord) -> None: ...

    def consume_enrollment_token(
        self, token_id: str, secret_hash: str, host_id: str, now: float
    ) -> TokenCheck:
        """Check the token and, when it is good, mark it used by ``host_id`` in the same
        transaction: of two concurrent uses exactly one gets ``"ok"``. A token bound to no
        host may not enroll a host that holds a live (unexpired, unrevoked) certificate:
        ``"wrong_host"``; re-enrolling such a host takes a token bound to it."""
        ...

    def add_certificate(self, cert: CertificateRecord) -> None: ...

    def certificates(self, host_id: str = "") -> list[CertificateRecord]:
        """Newest first; every host when ``host_id`` is empty."""
        ...

    def certificate(self, serial: str) -> CertificateRecord | None: ...

    def revoke_host(self, host_id: str, at: float, by: str, reason: str) -> int:
        """Record the host as revoked and mark each of its certificates revoked; returns how
        many certificates were newly revoked. Revoking twice keeps the first record."""
        ...

    def revoked_certificates_since(self, since: float) -> list[CertificateRecord]:
        """Host certificates (not operators') revoked at or after ``since``, oldest revocation
        first. Read by every replica's revocation sweep every few seconds: served by the partial
        index ``certificates_by_revocation``, so it costs the recent revocations, not the
        table."""
        ...

    def revoked_host(self, host_id: str) -> RevokedHost | None: ...

    def revoked_hosts(self) -> list[RevokedHost]: ...

    def revoke_certificate(self, serial: str, subject: str, at: float, reason: str) -> bool:
        """Mark one certificate revoked; True when it was not already. A serial never recorded
        (an operator's) is added with ``host_id = subject`` and zero validity times."""
        ...

    def revoke_operator(self, name: str, at: float, by: str, reason: str) -> None:
        """Refuse every certificate of operator ``name`` issued up to ``at``. Unlike a host,
        revoking again moves the time forward (a certificate issued in between is cut too)."""
        ...

    def revoked_operators(self) -> RevokedOperators: ...

    def unrevoke_host(self, host_id: str) -> bool:
        """Forget the host's revocation (True when there was one). Its certificates stay
        revoked: it enrolls again with a fresh token."""
        ...


class Row(Protocol):
    """A stored row by column name: ``sqlite3.Row`` and psycopg's ``DictRow`` both are."""

    def __getitem__(self, key: str) -> Any: ...


def token_verdict(
    row: Row | None, secret_hash: str, host_id: str, now: float, enrolled: Callable[[], bool]
) -> TokenCheck:
    """Whether enrollment token ``row`` may enroll ``host_id`` now; the one rule every backend
    applies inside its transaction, before it marks the token used. ``enrolled`` says whether
    the host already holds a live certificate (asked only for a token bound to no host: such a
    token never takes over an enrolled host)."""
    if row is None:
        return "unknown"
    if not hmac.compare_digest(str(row["secret_hash"]), secret_hash):
        return "wrong_secret"
    if row["used_at"]:
        return "used"
    if row["expires_at"] <= now:
        return "expired"
    if row["host_id"] and row["host_id"] != host_id:
        return "wrong_host"
    if not row["host_id"] and enrolled():
        return "wrong_host"
    return "ok"


def certificate_record(row: Row) -> CertificateRecord:
    return CertificateRecord(
        serial=row["serial"],
        host_id=row["host_id"],
        not_before=row["not_before"],
        not_after=row["not_after"],
        issued_at=row["issued_at"],
        revoked_at=row["revoked_at"],
        reason=row["reason"],
    )


def revoked_host_record(row: Row) -> RevokedHost:
    return RevokedHost(
        host_id=row["host_id"], at=row["at"], revoked_by=row["revoked_by"], reason=row["reason"]
    )

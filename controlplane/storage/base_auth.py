"""Storage for operator authentication and the audit trail: API tokens and the audit log.

Kept apart from ``base`` so the security records have one home; ``Storage`` includes this
Protocol, so every backend implements it.

The audit chain rule lives here, next to the records, because every backend computes it inside
its append transaction: ``hash = sha256(canonical JSON of the entry's fields + prev_hash)``, the
first entry's ``prev_hash`` being :data:`GENESIS`. Appends must be serialised (the previous hash
is read and the new row written in one transaction that no other append can interleave): SQLite
gets that from its single writer; PostgreSQL needs ``pg_advisory_xact_lock`` (or ``SELECT ...
FOR UPDATE`` on the last row) at the start of the transaction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

GENESIS = "0" * 64


@dataclass(frozen=True)
class ApiTokenRecord:
    """One operator API token. ``secret_hash`` is the SHA-256 of the secret; the secret itself is
    never stored. Times are epoch seconds; 0 means "never" (no expiry, not revoked, unused)."""

    id: str
    name: str
    role: str
    secret_hash: str
    created_at: float
    expires_at: float = 0.0
    revoked_at: float = 0.0
    created_by: str = ""
    last_used_at: float = 0.0


@dataclass(frozen=True)
class RoleChange:
    """What :meth:`AuthStorage.set_api_token_role` did: the role the token had, read in the same
    transaction as the write, and the token as stored after it."""

    old_role: str
    token: ApiTokenRecord


@dataclass(frozen=True)
class AuditDraft:
    """What a caller appends; storage gives it a ``seq`` and chains it."""

    at: float
    actor: str
    role: str
    via: str
    action: str
    target: str
    source: str
    result: str
    detail: str = "{}"
    """Canonical JSON text (sorted keys, no spaces); hashed as stored."""


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: float
    actor: str
    role: str
    via: str
    action: str
    target: str
    source: str
    result: str
    detail: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class AuditQuery:
    since: float = 0.0
    actor: str = ""
    action: str = ""
    limit: int = 200
    """The newest ``limit`` matching entries, returned oldest first."""


def entry_hash(seq: int, draft: AuditDraft, prev_hash: str) -> str:
    """The chain rule. ``seq`` is hashed too, so moving a row to another position breaks it."""
    fields = {"seq": seq, **asdict(draft), "prev_hash": prev_hash}
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def chained(seq: int, draft: AuditDraft, prev_hash: str) -> AuditEntry:
    return AuditEntry(
        seq=seq,
        at=draft.at,
        actor=draft.actor,
        role=draft.role,
        via=draft.via,
        action=draft.action,
        target=draft.target,
        source=draft.source,
        result=draft.result,
        detail=draft.detail,
        prev_hash=prev_hash,
        hash=entry_hash(seq, draft, prev_hash),
    )


def draft_of(entry: AuditEntry) -> AuditDraft:
    return AuditDraft(
        at=entry.at,
        actor=entry.actor,
        role=entry.role,
        via=entry.via,
        action=entry.action,
        target=entry.target,
        source=entry.source,
        result=entry.result,
        detail=entry.detail,
    )


class AuthStorage(Protocol):
    """API tokens (hashed) and the hash-chained audit log (tables ``api_tokens``, ``audit_log``)."""

    def put_api_token(self, token: ApiTokenRecord) -> None:
        """Store a new token (its id is unique; a clash raises)."""
        ...

    def api_token(self, token_id: str) -> ApiTokenRecord | None: ...

    def api_tokens(self) -> list[ApiTokenRecord]:
        """Every token, revoked and expired ones included, oldest first."""
        ...

    def any_api_token(self) -> bool:
        """Whether any token was ever created (revoked ones count: tokens stay required)."""
        ...

    def revoke_api_token(self, token_id: str, at: float) -> ApiTokenRecord | None:
        """Mark revoked (kept for the record; a second revoke keeps the first time)."""
        ...

    def touch_api_token(self, token_id: str, at: float) -> None:
        """Record a use (callers throttle these writes)."""
        ...

    def set_api_token_role(self, token_id: str, role: str) -> RoleChange | None:
        """Give the token ``role``; None when no such token. The old role is read and the new
        one written in one transaction that no other change interleaves (SQLite: ``BEGIN
        IMMEDIATE``; PostgreSQL: ``SELECT ... FOR UPDATE``), so the old role the audit entry
        records is the one the token really had, even when two admins change it at once.
        Whether ``role`` is valid, and whether a revoked token may change, is the caller's
        business (``controlplane.auth``); storage keeps what it is given."""
        ...

    def append_audit(self, draft: AuditDraft) -> AuditEntry:
        """Chain and append in one serialised transaction (see the module docstring)."""
        ...

    def audit_entries(self, query: AuditQuery) -> list[AuditEntry]: ...

    def audit_range(self, after_seq: int, limit: int) -> Sequence[AuditEntry]:
        """Entries with ``seq > after_seq`` in seq order, at most ``limit`` (for verify)."""
        ...

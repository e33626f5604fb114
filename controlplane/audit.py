"""The audit log: who changed what, when, from where, and how it ended. Tamper-evident.

Every mutating operator call is appended by the interceptor (``controlplane.auth_interceptor``),
refused ones included (``PERMISSION_DENIED``); the web console and the plane append through
:meth:`AuditLog.record`. Each entry is chained to the previous one by a hash
(``controlplane.storage.base_auth.entry_hash``), so editing a row, deleting one from the middle or
swapping two is found by :func:`verify_chain` at the first entry that no longer fits. Deleting
entries from the *end* leaves a shorter valid chain, so ``opsctl audit verify`` prints the head as
an :class:`Anchor` (``SEQ:HASH``): kept somewhere else (a ticket, a log shipper) and given back as
``verify --anchor SEQ:HASH``, it fails the check when the entry it names is gone (entries cut from
the end) or differs (the log rewritten and rehashed from there on).

What is recorded about a request: its scalar fields, never a secret. Fields whose name suggests
one (token, secret, password, passphrase, key material) are replaced by ``<redacted>``, and bytes
(bundle files, CSRs) by their SHA-256 and size. Long strings are cut.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.clock import Clock
from controlplane.auth import TOKEN_PREFIX, Principal, split_token
from controlplane.storage.base_auth import (
    GENESIS,
    AuditDraft,
    AuditEntry,
    AuditQuery,
    draft_of,
    entry_hash,
)
from controlplane.storage.runner import StorageThread

SECRET_FIELD = re.compile(r"token|secret|password|passphrase|private|credential", re.I)
MAX_TEXT = 200
VERIFY_BATCH = 1000
TARGET_FIELDS = ("id", "bundle", "host", "host_id", "policy", "name", "scope", "serial", "operator")
ACTIONS: dict[str, str] = {
    "/stanch.v1.Admin/PublishBundle": "bundle.publish",
    "/stanch.v1.Admin/StartRollout": "rollout.start",
    "/stanch.v1.Admin/ControlRollout": "rollout.{action}",
    "/stanch.v1.Admin/Pause": "fleet.pause",
    "/stanch.v1.Admin/Resume": "fleet.resume",
    "/stanch.v1.Admin/DecideApproval": "approval.decide",
    "/stanch.v1.Security/CreateToken": "token.create",
    "/stanch.v1.Security/RevokeToken": "token.revoke",
    "/stanch.v1.Security/SetTokenRole": "token.set_role",
    "/stanch.v1.Pki/CreateEnrollmentToken": "enrollment_token.create",
    "/stanch.v1.Pki/RevokeHost": "host.revoke",
    "/stanch.v1.Pki/UnrevokeHost": "host.unrevoke",
    "/stanch.v1.Pki/RevokeCertificate": "certificate.revoke",
}


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def scrub(value: Any, key: str = "") -> Any:
    """A JSON-able copy with secrets redacted, bytes digested and long text cut."""
    if key and SECRET_FIELD.search(key):
        return "<redacted>"
    if isinstance(value, bytes):
        return {"sha256": hashlib.sha256(value).hexdigest(), "size": len(value)}
    if isinstance(value, Mapping):
        return {str(k): scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, key) for v in value[:50]]
    if isinstance(value, str) and (parts := split_token(value)) is not None:
        return f"{TOKEN_PREFIX}{parts[0]}_<redacted>"  # an API token pasted into any field
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[:MAX_TEXT] + "..."
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)[:MAX_TEXT]


def request_fields(request: Any) -> dict[str, Any]:
    """A protobuf request's set fields (bytes kept as bytes for :func:`scrub` to digest)."""
    if request is None or not hasattr(request, "ListFields"):
        return {}
    from google.protobuf import json_format

    doc: dict[str, Any] = json_format.MessageToDict(request, preserving_proto_field_name=True)
    for field, value in request.ListFields():
        if field.type == field.TYPE_BYTES:
            doc[field.name] = value
    return doc


def summarize(method: str, request: Any) -> tuple[str, str, dict[str, Any]]:
    """(action, target, detail) of an operator call, without secrets."""
    detail = scrub(request_fields(request))
    action = ACTIONS.get(method, method.rsplit("/", 1)[-1])
    if "{action}" in action:
        action = action.format(action=str(detail.get("action", "")) or "control")
    target = ""
    if "data" in detail and isinstance(detail["data"], Mapping):
        target = f"sha256:{detail['data']['sha256']}"
    for name in TARGET_FIELDS:
        value = detail.get(name)
        if not target and isinstance(value, str) and value and value != "<redacted>":
            target = f"{name}={value}"
    if not target and detail.get("selector"):
        target = "selector=" + ",".join(f"{k}={v}" for k, v in sorted(detail["selector"].items()))
    return action, target, detail


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_seq: int = 0
    problem: str = ""
    head_hash: str = GENESIS
    head_seq: int = 0
    anchor_checked: bool = False


HEX64 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class Anchor:
    """An entry known from outside the control plane: its seq and hash (``SEQ:HASH``)."""

    seq: int
    hash: str

    @classmethod
    def parse(cls, text: str) -> Anchor:
        seq, sep, digest = text.strip().partition(":")
        if not (sep and seq.isdigit() and int(seq) > 0 and HEX64.fullmatch(digest)):
            raise ValueError(
                f"anchor {text!r}: expected SEQ:HASH as printed by `opsctl audit verify` "
                "(a positive seq, a colon, 64 hex digits)"
            )
        return cls(int(seq), digest.lower())

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"


class ChainCheck:
    """Walks the log in seq order, one batch at a time; stops at the first bad entry. With an
    ``anchor``, the entry at its seq must carry its hash, and the log must reach that far."""

    def __init__(self, anchor: Anchor | None = None) -> None:
        self.prev_seq = 0
        self.prev_hash = GENESIS
        self.checked = 0
        self.bad: VerifyResult | None = None
        self.anchor = anchor

    def feed(self, entries: Iterable[AuditEntry]) -> bool:
        """False once a bad entry was found (``self.bad`` says which)."""
        for entry in entries:
            problem = self._problem(entry)
            if problem:
                self.bad = self._failed(entry.seq, problem)
                return False
            self.prev_seq, self.prev_hash = entry.seq, entry.hash
            self.checked += 1
        return True

    def _problem(self, entry: AuditEntry) -> str:
        if entry.seq != self.prev_seq + 1:
            return f"seq {entry.seq} follows {self.prev_seq}: entries missing or moved"
        if entry.prev_hash != self.prev_hash:
            return (
                "prev_hash does not match the previous entry's hash: that entry was edited "
                "(and rehashed) or an entry between them was removed"
            )
        if entry_hash(entry.seq, draft_of(entry), entry.prev_hash) != entry.hash:
            return "hash does not match its fields: the entry was edited"
        if self.anchor and entry.seq == self.anchor.seq and entry.hash != self.anchor.hash:
            return (
                f"not the entry the anchor {self.anchor.seq}:{self.anchor.hash[:12]}... recorded: "
                "the log was rewritten (and rehashed) from here or earlier"
            )
        return ""

    def _failed(self, seq: int, problem: str) -> VerifyResult:
        return VerifyResult(False, self.checked, seq, problem, self.prev_hash, self.prev_seq)

    def result(self) -> VerifyResult:
        if self.bad:
            return self.bad
        if self.anchor and self.anchor.seq > self.prev_seq:
            problem = (
                f"the log ends at seq {self.prev_seq}, before the anchor's seq "
                f"{self.anchor.seq}: entries were cut from the end"
            )
            return self._failed(self.prev_seq + 1, problem)
        return VerifyResult(
            True,
            self.checked,
            head_hash=self.prev_hash,
            head_seq=self.prev_seq,
            anchor_checked=self.anchor is not None,
        )


def verify_chain(entries: Iterable[AuditEntry], anchor: Anchor | None = None) -> VerifyResult:
    check = ChainCheck(anchor)
    check.feed(entries)
    return check.result()


class AuditLog:
    """Appends and reads the audit log through the storage thread; ``plane.audit``."""

    def __init__(self, store: StorageThread, clock: Clock) -> None:
        self.store = store
        self.db = store.storage
        self.clock = clock

    async def record(
        self,
        principal: Principal,
        action: str,
        target: str,
        source: str,
        result: str,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        draft = AuditDraft(
            at=self.clock.now(),
            actor=principal.name,
            role=principal.role,
            via=principal.via,
            action=action,
            target=target[:MAX_TEXT],
            source=source,
            result=result,
            detail=canonical(scrub(dict(detail or {}))),
        )
        entry: AuditEntry = await self.store.run(self.db.append_audit, draft)
        return entry

    async def entries(
        self, since: float = 0.0, actor: str = "", action: str = "", limit: int = 200
    ) -> list[AuditEntry]:
        found: list[AuditEntry] = await self.store.run(
            self.db.audit_entries, AuditQuery(since, actor, action, limit)
        )
        return found

    async def verify(self, anchor: Anchor | None = None) -> VerifyResult:
        check = ChainCheck(anchor)
        while True:
            batch = await self.store.run(self.db.audit_range, check.prev_seq, VERIFY_BATCH)
            if not check.feed(batch) or len(batch) < VERIFY_BATCH:
                return check.result()

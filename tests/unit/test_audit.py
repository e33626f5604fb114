"""The audit chain: appended in real SQLite, verified; any edit, removal from the middle or
reordering is found at the first entry that no longer fits (a hypothesis property); request
summaries never carry secrets or bundle bytes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.clock import FakeClock
from controlplane.audit import Anchor, AuditLog, summarize, verify_chain
from controlplane.auth import Principal
from controlplane.storage.base_auth import GENESIS, AuditDraft, AuditEntry, chained, draft_of
from controlplane.storage.runner import StorageThread
from controlplane.storage.sqlite import SqliteStorage
from stanch.v1 import admin_pb2, security_pb2

ALICE = Principal("alice", "operator", "token")


def build(drafts: list[AuditDraft]) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    prev = GENESIS
    for seq, draft in enumerate(drafts, start=1):
        entries.append(chained(seq, draft, prev))
        prev = entries[-1].hash
    return entries


text = st.text(max_size=12)
drafts = st.builds(
    AuditDraft,
    at=st.floats(0, 2e9, allow_nan=False),
    actor=text,
    role=st.sampled_from(["viewer", "operator", "admin"]),
    via=st.sampled_from(["token", "cert"]),
    action=text,
    target=text,
    source=text,
    result=st.sampled_from(["ok", "PERMISSION_DENIED", "NOT_FOUND"]),
    detail=st.dictionaries(text, text, max_size=3).map(
        lambda d: json.dumps(d, sort_keys=True, separators=(",", ":"))
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(drafts, min_size=0, max_size=12))
def test_an_untouched_chain_verifies(items: list[AuditDraft]) -> None:
    entries = build(items)
    result = verify_chain(entries)
    assert result.ok and result.checked == len(entries)
    assert result.head_hash == (entries[-1].hash if entries else GENESIS)


@settings(max_examples=300, deadline=None)
@given(st.lists(drafts, min_size=2, max_size=12), st.data())
def test_any_tampering_is_found_at_the_first_bad_entry(
    items: list[AuditDraft], data: st.DataObject
) -> None:
    entries = build(items)
    kind = data.draw(st.sampled_from(["edit", "edit_rehash", "delete", "swap"]))
    i = data.draw(st.integers(0, len(entries) - 2))  # never the last: see the truncation note
    tampered = list(entries)
    if kind == "edit":
        field = data.draw(st.sampled_from(["actor", "action", "target", "result", "at"]))
        new: object = tampered[i].at + 1 if field == "at" else getattr(tampered[i], field) + "!"
        tampered[i] = replace(tampered[i], **{field: new})  # type: ignore[arg-type]  # a field drawn at run time
        expected = tampered[i].seq
    elif kind == "edit_rehash":  # the attacker recomputes the edited entry's own hash
        forged = replace(draft_of(tampered[i]), result="ok!")
        tampered[i] = chained(tampered[i].seq, forged, tampered[i].prev_hash)
        expected = tampered[i + 1].seq  # its own hash fits; the next entry's link does not
        i += 1
    elif kind == "delete":
        del tampered[i]
        expected = tampered[i].seq
    else:
        tampered[i], tampered[i + 1] = tampered[i + 1], tampered[i]
        expected = tampered[i].seq
    result = verify_chain(tampered)
    assert not result.ok
    assert result.first_bad_seq == expected
    assert result.checked == i  # every entry before the bad one is vouched for


def test_records_in_sqlite_chain_and_a_row_edit_is_found(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        store = StorageThread(SqliteStorage(tmp_path / "cp.db"))
        log = AuditLog(store, clock)
        try:
            for n in range(5):
                clock.advance(1)
                await log.record(ALICE, "fleet.pause", f"policy=p{n}", "ipv4:127.0.0.1:1", "ok")
            await log.record(
                Principal("bob", "viewer", "token"), "rollout.start", "", "local", "DENIED"
            )
            assert (await log.verify()).ok
            assert [e.seq for e in await log.entries(limit=2)] == [5, 6]
            assert [e.target for e in await log.entries(actor="bob")] == [""]
            assert len(await log.entries(action="fleet.pause")) == 5
            assert [e.seq for e in await log.entries(since=clock.now() - 0.5)] == [5, 6]
        finally:
            await asyncio.get_running_loop().run_in_executor(None, store.close)

        with sqlite3.connect(tmp_path / "cp.db") as db:
            db.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
        store = StorageThread(SqliteStorage(tmp_path / "cp.db"))
        try:
            result = await AuditLog(store, clock).verify()
            assert (result.ok, result.first_bad_seq, result.checked) == (False, 3, 2)
            assert "edited" in result.problem
        finally:
            await asyncio.get_running_loop().run_in_executor(None, store.close)

    asyncio.run(scenario())


def test_verify_walks_past_one_batch(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "cp.db")
    try:
        for n in range(2500):
            storage.append_audit(AuditDraft(float(n), "a", "admin", "token", "x", "", "", "ok"))
        entries = [e for start in (0, 1000, 2000) for e in storage.audit_range(start, 1000)]
        assert [e.seq for e in entries] == list(range(1, 2501))
        assert verify_chain(entries).ok
    finally:
        storage.close()


def test_summaries_record_digests_not_bundles_and_never_secrets() -> None:
    data = b"bundle bytes " * 1000
    action, target, detail = summarize(
        "/stanch.v1.Admin/PublishBundle", admin_pb2.PublishBundleRequest(data=data)
    )
    digest = hashlib.sha256(data).hexdigest()
    assert (action, target) == ("bundle.publish", f"sha256:{digest}")
    assert detail == {"data": {"sha256": digest, "size": len(data)}}

    action, target, detail = summarize(
        "/stanch.v1.Admin/ControlRollout",
        admin_pb2.ControlRolloutRequest(id="r-1", action="abort", reason="bad canary"),
    )
    assert (action, target, detail["reason"]) == ("rollout.abort", "id=r-1", "bad canary")

    _, target, detail = summarize(
        "/stanch.v1.Admin/Pause", admin_pb2.PauseRequest(selector={"env": "prod"})
    )
    assert target == "selector=env=prod"

    pasted = "stk_0123abcd_" + "S" * 43
    _, target, detail = summarize(
        "/stanch.v1.Security/RevokeToken", security_pb2.RevokeTokenRequest(id=pasted)
    )
    assert "S" * 43 not in json.dumps(detail) + target
    assert target == "id=stk_0123abcd_<redacted>"

    _, _, detail = summarize("/x.Y/Z", None)
    assert detail == {}


def test_fields_named_like_secrets_are_redacted() -> None:
    from controlplane.audit import scrub

    doc = scrub({"token": "t", "nested": {"password": "p", "ok": 1}, "long": "x" * 500})
    assert doc["token"] == "<redacted>" and doc["nested"] == {"password": "<redacted>", "ok": 1}
    assert len(doc["long"]) == 203


@given(st.lists(drafts, min_size=2, max_size=12), st.data())
@settings(max_examples=60, deadline=None)
def test_an_anchor_catches_entries_cut_from_the_end(
    items: list[AuditDraft], data: st.DataObject
) -> None:
    """Cutting the tail leaves a valid shorter chain; an anchor kept from before catches it."""
    entries = build(items)
    at = data.draw(st.integers(1, len(entries)))
    anchor = Anchor(at, entries[at - 1].hash)
    assert verify_chain(entries, anchor).anchor_checked
    keep = data.draw(st.integers(0, at - 1))
    assert verify_chain(entries[:keep]).ok, "without an anchor a truncated chain looks fine"
    cut = verify_chain(entries[:keep], anchor)
    assert not cut.ok and cut.first_bad_seq == keep + 1 and "cut from the end" in cut.problem


def test_an_anchor_catches_a_log_rewritten_and_rehashed_from_its_entry() -> None:
    honest = build(
        [
            AuditDraft(float(i), "alice", "operator", "token", "a", "", "", "ok", "{}")
            for i in range(5)
        ]
    )
    forged = build(
        [
            replace(draft_of(e), result="PERMISSION_DENIED") if e.seq >= 3 else draft_of(e)
            for e in honest
        ]
    )
    assert verify_chain(forged).ok, "rehashed throughout: the chain alone cannot tell"
    result = verify_chain(forged, Anchor(4, honest[3].hash))
    assert not result.ok and result.first_bad_seq == 4 and "rewritten" in result.problem
    head = verify_chain(honest)
    assert (head.head_seq, head.head_hash) == (5, honest[-1].hash)


def test_an_anchor_must_be_seq_colon_hash() -> None:
    good = Anchor.parse(f"12:{'AB' * 32}")
    assert good == Anchor(12, "ab" * 32) and str(good) == f"12:{'ab' * 32}"
    for bad in ("", "12", "0:" + "a" * 64, "x:" + "a" * 64, "12:abc", "12:" + "g" * 64):
        with pytest.raises(ValueError, match="expected SEQ:HASH"):
            Anchor.parse(bad)

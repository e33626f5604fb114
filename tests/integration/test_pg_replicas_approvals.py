"""Approvals decided through one control-plane replica for an agent streaming to another, end to
end: two real ``stanch-cp`` processes (replicas ``a`` and ``b``) on one PostgreSQL, real agent
processes (``python -m agent.cli run``) streaming to ``a`` only, the approve-mode bundle of
``test_cp_approvals`` rolled out, and every operator command a real ``opsctl`` against ``b``:

- ``b`` lists the pending approvals of ``a``'s agents, shown connected;
- ``opsctl approvals approve web-1 ...`` through ``b`` is answered (the decision was queued in
  the shared store, sent by ``a``'s delivery pass on web-1's stream, and the agent's answer came
  back through ``a``): web-1 runs the fix, recorded on the host as decided by ``cp:alice``, and
  the decision is on the audit log as ``approval.decide``, read through either replica;
- a host connected nowhere (its agent stopped) is refused through ``b``, and nothing is queued.

Skipped, naming the URL tried, when no PostgreSQL answers (``STANCH_TEST_PG`` overrides it)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from approval_fleet import NAME, ApprovalFleet

from controlplane.fleet_demo import read_line, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "storage"))
from pg_schema import fresh_schema  # noqa: E402

HOSTS = [("web-1", "web"), ("web-2", "web")]


class ReplicatedApprovalFleet(ApprovalFleet):
    """The approval fleet on two replicas sharing ``db``; ``addr`` is replica ``a`` (the agents'
    and the rollout's), ``b_addr`` replica ``b`` (the operator's)."""

    def __init__(self, work: Path, db: str) -> None:
        super().__init__(work, HOSTS)
        self.db = db
        self.b_addr = ""

    def spawn_control_plane(self, listen: str = "127.0.0.1:0") -> str:
        self.addr = self.spawn_replica("a", listen)
        return f"replica a listening on {self.addr}"

    def spawn_replica(self, name: str, listen: str = "127.0.0.1:0") -> str:
        """Start replica ``name`` on the shared database; returns its address."""
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "controlplane.server", "--insecure",
                "--db", self.db, "--replica-id", name, "--listen", listen,
                "--assignment-key", str(self.work / "cp" / "assign.key"),
                "--trust", str(self.work / "keys"),
                *self.cp_flags, "--log-format", "json",
            ],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=(self.work / f"cp-{name}.log").open("ab"),
        )  # fmt: skip
        self.procs.append(proc)
        line = read_line(proc, 30)
        if "listening on" not in line:
            proc.kill()
            log = (self.work / f"cp-{name}.log").read_text()
            raise AssertionError(f"replica {name} did not start: {log}")
        return line.split()[-1]

    def decisions(self) -> list[dict[str, Any]]:
        """The queued-decision rows, read straight from the shared database."""
        with psycopg.connect(self.db) as conn:
            cursor = conn.execute(
                "SELECT host_id, nonce, queued_by, delivered_at, delivered_by, expires_at "
                "FROM approval_decisions ORDER BY created_at"
            )
            names = [c.name for c in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def replica_of(self, host: str) -> tuple[bool, str]:
        with psycopg.connect(self.db) as conn:
            row = conn.execute(
                "SELECT connected, replica FROM agents WHERE host_id = %s", (host,)
            ).fetchone()
        return (bool(row[0]), str(row[1])) if row else (False, "")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicatedApprovalFleet]:
    with fresh_schema() as url:
        work = Path(tmp_path_factory.mktemp("replica-approvals"))
        demo = ReplicatedApprovalFleet(work, url)
        try:
            demo.start_control_plane()
            demo.start_agents()
            demo.b_addr = demo.spawn_replica("b")
            demo.release()
            for host, _role in HOSTS:
                demo.break_app(host)
            wait_for(
                "every host to ask for approval, as listed by replica b",
                lambda: set(demo.pending(demo.b_addr)) == {h for h, _ in HOSTS},
                60,
                AssertionError,
            )
            yield demo
        finally:
            demo.stop()


def test_approve_through_another_replica_runs_the_fix(fleet: ReplicatedApprovalFleet) -> None:
    assert fleet.replica_of("web-1") == (True, "a")
    listed = fleet.pending(fleet.b_addr)["web-1"]
    assert listed["connected"] is True  # connected to a, shown so by b
    approval_id = listed["approval_id"]

    done = fleet.ctl("approvals", "approve", "web-1", NAME, "--reason", "INC-9", addr=fleet.b_addr)
    assert done.returncode == 0, done.stderr
    assert f"approved {NAME} on web-1 (approval {approval_id}) as cp:alice" in done.stdout

    [row] = [r for r in fleet.approval_rows("web-1") if r["id"] == approval_id]
    assert row["decided_by"].startswith("cp:alice"), row
    [queued] = fleet.decisions()
    assert (queued["host_id"], queued["queued_by"]) == ("web-1", "b")
    assert queued["delivered_at"] > 0  # claimed and sent by a's pass, once
    assert queued["delivered_by"] == "a"
    fixed = wait_for(
        "web-1's approved fix to be reported",
        lambda: [r for r in fleet.reports("web-1", "execution") if r["outcome"] == "fixed"],
        30,
        AssertionError,
    )
    used = wait_for(
        "web-1's approval to be reported used",
        lambda: [r for r in fleet.reports("web-1", "approval") if r["outcome"] == "used"],
        30,
        AssertionError,
    )
    assert (
        json.loads(used[0]["body_json"])["execution_id"] == json.loads(fixed[0]["body_json"])["id"]
    )
    fleet.faulty.discard("web-1")  # the app is healthy again
    assert "web-1" not in fleet.pending(fleet.b_addr)

    for via in (fleet.b_addr, fleet.addr):  # one audit log, whichever replica reads it
        [entry] = fleet.json("audit", "list", "--action", "approval.decide", addr=via)["entries"]
        assert (entry["target"], entry["result"]) == ("host=web-1", "ok"), entry
        detail = json.loads(entry["detail_json"])
        assert (detail["approve"], detail["by"], detail["reason"]) == (True, "alice", "INC-9")
    verified = fleet.ctl("audit", "verify", addr=fleet.b_addr)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_host_connected_nowhere_is_refused_through_any_replica(
    fleet: ReplicatedApprovalFleet,
) -> None:
    before = len(fleet.decisions())
    proc = fleet.agents["web-2"]
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    wait_for(
        "web-2 to show as disconnected on replica b",
        lambda: fleet.pending(fleet.b_addr).get("web-2", {}).get("connected") is False,
        60,
        AssertionError,
    )
    assert fleet.replica_of("web-2") == (False, "a")
    for via in (fleet.b_addr, fleet.addr):
        done = fleet.ctl("approvals", "approve", "web-2", NAME, addr=via)
        assert done.returncode == 1
        assert "web-2 is not connected; the decision was not sent" in done.stderr
    assert len(fleet.decisions()) == before  # nothing queued
    assert all(r["status"] == "pending" for r in fleet.approval_rows("web-2"))
    entries = fleet.json("audit", "list", "--action", "approval.decide", addr=fleet.b_addr)
    refused = [(e["target"], e["result"]) for e in entries["entries"]][-2:]
    assert refused == [("host=web-2", "FAILED_PRECONDITION")] * 2, entries

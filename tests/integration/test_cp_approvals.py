"""Approvals decided from the control plane, end to end with real processes on loopback.

A real ``stanch-cp`` on SQLite, three real agent processes (``python -m agent.cli run``), the
demo's bundle with its one policy switched to ``mode: approve``, built, signed, published and
rolled out with ``opsctl``. Each host's app then stops touching its heartbeat (the fault): every
agent asks for approval instead of acting, and:

- the requests appear in ``opsctl approvals list`` with the values the agents saw;
- ``opsctl approvals approve web-1 app-heartbeat`` makes web-1 run the fix (its execution is
  reported ``fixed``; its approval reported ``used`` with that execution), recorded on the host
  as decided by ``cp:alice``;
- ``opsctl approvals reject web-2 ...`` is recorded as rejected and nothing runs on web-2;
- a host that is not connected is refused (exit 1, FAILED_PRECONDITION), not queued.

Forged and replayed decisions and expiry are covered against the agent's code directly in
``tests/unit/test_approvals_agent.py``.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from approval_fleet import HOSTS, NAME, ApprovalFleet

from controlplane.fleet_demo import wait_for


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApprovalFleet]:
    work = Path(tmp_path_factory.mktemp("approvals"))
    demo = ApprovalFleet(work, HOSTS)
    try:
        demo.start_control_plane()
        demo.start_agents()
        demo.release()
        for host, _role in HOSTS:
            demo.break_app(host)
        wait_for(
            "every host to ask for approval centrally",
            lambda: set(demo.pending()) == {h for h, _ in HOSTS},
            60,
            AssertionError,
        )
        yield demo
    finally:
        demo.stop()


def test_pending_approvals_are_listed_with_what_the_agent_saw(fleet: ApprovalFleet) -> None:
    listed = fleet.pending()["web-1"]
    assert listed["policy"] == NAME and listed["connected"] is True
    observed = json.loads(listed["observed_json"])
    assert observed["beat.age_seconds"] > 30, observed
    assert "approve mode" in listed["message"]
    [row] = [r for r in fleet.approval_rows("web-1") if r["id"] == listed["approval_id"]]
    assert row["status"] == "pending" and row["expires_at"] == pytest.approx(listed["expires_at"])
    table = fleet.ctl("approvals", "list")
    assert table.returncode == 0 and "web-1" in table.stdout and NAME in table.stdout


def test_approve_from_the_centre_runs_the_fix(fleet: ApprovalFleet) -> None:
    approval_id = fleet.pending()["web-1"]["approval_id"]
    done = fleet.ctl("approvals", "approve", "web-1", NAME, "--reason", "INC-1")
    assert done.returncode == 0, done.stderr
    assert f"approved {NAME} on web-1 (approval {approval_id}) as cp:alice" in done.stdout
    [row] = [r for r in fleet.approval_rows("web-1") if r["id"] == approval_id]
    assert row["decided_by"].startswith("cp:alice"), row
    fixed = wait_for(
        "web-1's approved fix to be reported",
        lambda: [r for r in fleet.reports("web-1", "execution") if r["outcome"] == "fixed"],
        30,
        AssertionError,
    )
    body = json.loads(fixed[0]["body_json"])
    used = wait_for(
        "web-1's approval to be reported used",
        lambda: [r for r in fleet.reports("web-1", "approval") if r["outcome"] == "used"],
        30,
        AssertionError,
    )
    assert json.loads(used[0]["body_json"])["execution_id"] == body["id"]
    assert "web-1" not in fleet.pending()
    fleet.faulty.discard("web-1")  # the app is healthy again


def test_reject_from_the_centre_runs_nothing(fleet: ApprovalFleet) -> None:
    approval_id = fleet.pending()["web-2"]["approval_id"]
    done = fleet.ctl("approvals", "reject", "web-2", approval_id, "--reason", "not now")
    assert done.returncode == 0, done.stderr
    assert "rejected" in done.stdout and "cp:alice" in done.stdout
    [row] = [r for r in fleet.approval_rows("web-2") if r["id"] == approval_id]
    assert (row["status"], row["decided_by"][:8]) == ("rejected", "cp:alice")
    wait_for(
        "web-2 to leave the approvals list",
        lambda: "web-2" not in fleet.pending(),
        10,
        AssertionError,
    )
    assert fleet.executions("web-2") == []
    again = fleet.ctl("approvals", "approve", "web-2", NAME)
    assert again.returncode == 1 and "no pending approval" in again.stderr


def test_a_disconnected_host_is_refused_not_queued(fleet: ApprovalFleet) -> None:
    proc = fleet.agents["web-3"]
    proc.send_signal(signal.SIGTERM)
    proc.wait(15)
    wait_for(
        "web-3 to show as disconnected",
        lambda: fleet.pending().get("web-3", {}).get("connected") is False,
        15,
        AssertionError,
    )
    done = fleet.ctl("approvals", "approve", "web-3", NAME)
    assert done.returncode == 1
    assert "web-3 is not connected; the decision was not sent" in done.stderr
    assert all(r["status"] == "pending" for r in fleet.approval_rows("web-3"))

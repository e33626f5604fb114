"""A network partition between the agents and the control plane, with real network namespaces.

The control plane runs in the root namespace and listens on the root end of a veth pair; three
real agent processes run inside a namespace (``ip netns exec``) and reach it only through the
pair (``tests/e2e/netns.py``). The test cuts the link (``ip link set down``), breaks two hosts'
apps, and checks what a partition must not change:

- the agents keep remediating locally (the faults are fixed during the partition, in their
  journals), and their outboxes hold the reports meanwhile (nothing reaches the control plane);
- after the heal, the outboxes drain and every report made during the partition is stored by the
  control plane exactly once, with the agent's body.

Two lengths: ``short`` (a few seconds: TCP retransmits carry the open stream across the heal) and
``long`` (held until every agent's keepalive declared the stream dead: the agents reconnect
through backoff after the heal, and the reports are re-sent on a new stream).

Skips with the reason when not root or when ``ip netns`` is not allowed.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from functools import partial
from pathlib import Path

import pytest
from fleet_harness import FIX, TunedFleet, wait_for
from netns import Netns, partitionable

from agent.journal import ExecutionRow
from controlplane.storage.base import ReportQuery

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]


class PartitionedFleet(TunedFleet):
    """Control plane on ``ns.root_ip``; every agent inside ``ns``."""

    def __init__(self, work: Path, ns: Netns) -> None:
        super().__init__(work, 3)
        self.ns = ns
        self.agent_prefix = ns.exec
        self.agent_extra = {"control_plane": {"keepalive": "10s"}}  # the minimum

    def log_events(self, host: str, event: str, since: float) -> list[dict[str, object]]:
        found = []
        for line in (self.work / host / "agent.log").read_text(errors="replace").splitlines():
            if f'"{event}"' not in line:
                continue
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                at = datetime.fromisoformat(doc["ts"].replace("Z", "+00:00")).timestamp()
                if doc.get("event") == event and at >= since:
                    found.append(doc)
        return found

    def start(self) -> None:
        self.opsctl("keys", "generate", str(self.work / "cp" / "assign"), show=False, must=True)
        self.opsctl("keys", "generate", str(self.work / "keys" / "release-1"), must=True)
        print(self.spawn_control_plane(f"{self.ns.root_ip}:0"))
        self.port = int(self.addr.rsplit(":", 1)[1])
        self.start_agents()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[PartitionedFleet]:
    with partitionable() as ns:
        f = PartitionedFleet(tmp_path, ns)
        try:
            f.start()
            yield f
        finally:
            f.stop()


def fixed_since(fleet: PartitionedFleet, host: str, since: float) -> list[ExecutionRow]:
    return [e for e in fleet.executions(host) if e.status == "fixed" and e.started_at >= since]


@pytest.mark.parametrize("length", ["short", "long"])
def test_agents_remediate_through_a_partition_and_reports_drain_once_after_heal(
    fleet: PartitionedFleet, length: str
) -> None:
    digest = fleet.release(FIX)
    rollout = fleet.start_rollout(digest, "100%", "0s")
    watch = fleet.watch_rollout(rollout, 60)
    out, _ = watch.communicate(timeout=90)
    assert watch.returncode == 0, out
    fleet.wait_digest(fleet.host_ids, digest, 30)
    broken = fleet.host_ids[:2]

    fleet.ns.cut()
    cut = time.time()
    try:
        assert not fleet.ns.reachable(fleet.port), "the link is down but the CP is reachable"
        for host in broken:
            fleet.break_app(host)
        fixes = {
            host: wait_for(
                f"{host} to fix its fault during the partition",
                partial(fixed_since, fleet, host, cut),
                40,
            )
            for host in broken
        }
        for host in broken:
            fleet.heal(host)
        time.sleep(2)  # a few heartbeat intervals: nothing may get through meanwhile
        waiting = {host: fleet.outbox(host) for host in broken}
        with fleet.storage() as db:
            during = db.reports(ReportQuery(since=cut, kind="execution", limit=1000))
        assert not fleet.dead_agents()
        if length == "long":
            wait_for(
                "every agent to declare its stream dead (keepalive)",
                lambda: all(
                    fleet.log_events(h, "control_plane_disconnected", cut) for h in fleet.host_ids
                ),
                60,
            )
            time.sleep(3)  # reconnect attempts fail meanwhile
    finally:
        fleet.ns.heal()
    healed = time.time()

    assert during == [], "reports reached the control plane through a cut link"
    for host in broken:
        ids = {json.loads(r.body)["id"] for r in waiting[host] if r.kind == "execution"}
        assert {e.id for e in fixes[host]} <= ids, (host, ids)  # queued, not lost

    def drained() -> bool:
        return all(not {r.id for r in waiting[h]} & {r.id for r in fleet.outbox(h)} for h in broken)

    wait_for("the outboxes to drain after the heal", drained, 90)
    drain_seconds = time.time() - healed
    if length == "long":
        for h in fleet.host_ids:
            assert fleet.log_events(h, "control_plane_connected", healed - 1), h  # a new stream
    with fleet.storage() as db:
        for host in broken:
            stored = db.reports(ReportQuery(host=host, limit=100_000))
            counts = Counter(r.id for r in stored)
            assert all(counts[r.id] == 1 for r in waiting[host]), host
            by_id = {r.id: r for r in stored}
            for r in waiting[host]:
                assert (by_id[r.id].kind, by_id[r.id].outcome) == (r.kind, r.outcome)
                assert json.loads(by_id[r.id].body_json) == json.loads(r.body)
            runs = Counter(json.loads(r.body_json)["id"] for r in stored if r.kind == "execution")
            assert all(runs[e.id] == 1 for e in fixes[host]), runs
    assert fleet.connected() == len(fleet.host_ids)
    agents = fleet.agents_json()
    assert all(agents[h]["bundle_digest"] == digest for h in fleet.host_ids)
    queued = sum(len(w) for w in waiting.values())
    print(f"partition ({length}, {healed - cut:.0f}s): {queued} reports queued during the cut, "
          f"drained {drain_seconds:.1f}s after the heal")  # fmt: skip

"""The agent's end of the fleet channel on real gRPC over loopback, against ``fleet_fake``.

Most tests run a ``FleetClient`` on a real journal and outbox (the agent's own objects, no
runner); the last ones run a whole ``Agent`` with a policy, to show that an assignment reaches
the running policies and that remediation does not wait for a control plane that is down.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_fake import FakeFleet, Store

from agent.bundle import BundleStore
from agent.bundle.keys import public_pem
from agent.config import AgentConfig, parse_config
from agent.fleet.assignment import Assignment
from agent.fleet.client import FleetClient
from agent.fleet.outbox import Outbox
from agent.journal import Journal, Report
from agent.pauses import PauseFile
from controlplane.bundle_fixtures import KeyRing, make_bundle, policy_text, write_source
from controlplane.keys import sign
from stanch.v1 import fleet_pb2 as pb

HOST = "web-1"
FAST = {"initial": "50ms", "max": "300ms"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


class Fleet:
    """Keys, a state dir and bundles for one agent, and the fake control plane it talks to."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state"
        self.cp_key = Ed25519PrivateKey.generate()
        self.keys = root / "assignment-keys"
        self.keys.mkdir()
        (self.keys / "cp.pub").write_bytes(public_pem(self.cp_key.public_key()))
        self.ring = KeyRing.generate(1)
        self.trust = self.ring.write_pubs(root / "trust")
        self.port = free_port()
        self.servers: list[FakeFleet] = []
        self.clients: list[FleetClient] = []
        self.journals: list[Journal] = []

    def raw(self, **control_plane: Any) -> dict[str, Any]:
        return {
            "host": {"id": HOST, "labels": {"env": "test"}},
            "policy_source": "bundle",
            "state_dir": str(self.state),
            "control_plane": {
                "address": f"127.0.0.1:{self.port}",
                "insecure": True,
                "assignment_keys": str(self.keys),
                "trust": str(self.trust),
                "reconnect": FAST,
                "heartbeat": "200ms",
                "report_batch": 3,
                **control_plane,
            },
        }

    def config(self, **control_plane: Any) -> AgentConfig:
        return parse_config(self.raw(**control_plane), "<test>")

    def server(self, store: Store | None = None, auto_ack: bool = True) -> FakeFleet:
        fake = FakeFleet(self.port, store, auto_ack).start()
        self.servers.append(fake)
        return fake

    def client(self, **control_plane: Any) -> tuple[FleetClient, Journal, Outbox]:
        config = self.config(**control_plane)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        journal = Journal(config.journal_path)
        assert config.control_plane is not None
        outbox = Outbox(journal, config.control_plane.outbox_limit)
        journal.reporter = outbox
        client = FleetClient(config, journal, outbox)
        client.start()
        self.clients.append(client)
        self.journals.append(journal)
        return client, journal, outbox

    def stop_client(self, client: FleetClient, journal: Journal) -> None:
        client.stop()
        journal.close()

    def bundle(self, version: int, policies: dict[str, str] | None = None) -> bytes:
        source = write_source(
            self.root / f"src-{version}",
            policies or {f"app{version}.yaml": policy_text(f"app{version}", limit=100 + version)},
        )
        built = make_bundle(source, self.ring, [0], version=version, created=time.time())
        return built.data

    def assignment(
        self,
        digest: str,
        seq: int,
        version: int = 1,
        host: str = HOST,
        key: Ed25519PrivateKey | None = None,
    ) -> pb.ControlMessage:
        envelope = Assignment(host, digest, version, seq, time.time(), "r1").envelope()
        signed = sign(envelope, key or self.cp_key)
        return pb.ControlMessage(assignment=pb.SignedAssignment(envelope=signed.to_json()))

    def close(self) -> None:
        for client in self.clients:
            client.stop()
        for fake in self.servers:
            fake.stop()
        for journal in self.journals:
            journal.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    yield f
    f.close()


def add_reports(outbox: Outbox, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        outbox.put(Report("decision", f"p{i}", 1000.0 + i, "acted", "fired", {"n": i}))


def results(fake: FakeFleet, count: int) -> list[pb.ApplyResult]:
    return fake.wait(lambda: fake.apply_results[:] if len(fake.apply_results) >= count else None)


# ---- hello, heartbeats, reports ----------------------------------------------------------------


def test_hello_then_heartbeats_with_health(fleet: Fleet) -> None:
    data = fleet.bundle(1)
    trust = fleet.ring.trust(1)
    fleet.state.mkdir(parents=True)
    path = fleet.root / "b1.bundle"
    path.write_bytes(data)
    active = BundleStore(fleet.state).install(path, trust, time.time())
    fake = fleet.server()
    client, _journal, outbox = fleet.client()
    add_reports(outbox, 2)

    hello = fake.wait(lambda: fake.hellos[:1], what="hello")[0]
    assert fake.messages[0].WhichOneof("body") == "hello", "hello must be the first message"
    assert hello.host_id == HOST and dict(hello.labels) == {"env": "test"}
    assert hello.agent_version and hello.bundle_digest == active.digest
    assert hello.bundle_version == 1 and hello.last_assignment_seq == 0

    beats = fake.wait(lambda: fake.heartbeats[:] if len(fake.heartbeats) >= 3 else None)
    assert beats[-1].at > 0 and beats[-1].health.bundle_stale is False
    fake.wait(lambda: len(fake.report_ids()) == 2, what="reports")
    wait_for(lambda: outbox.depth() == 0, what="acked reports deleted")
    assert client.connected.is_set() and client.stats.sessions == 1


def test_reports_are_deleted_only_when_acked(fleet: Fleet) -> None:
    fake = fleet.server(auto_ack=False)
    client, _journal, outbox = fleet.client()
    add_reports(outbox, 7)
    fake.wait(lambda: len(fake.report_ids()) == 7, what="7 reports")
    reports = fake.reports()
    assert [r.policy for r in reports] == [f"p{i}" for i in range(7)]
    assert json.loads(reports[0].body_json) == {"n": 0} and reports[0].kind == "decision"
    assert outbox.depth() == 7, "nothing may be deleted before the ack"

    ids = sorted(fake.report_ids())
    fake.ack(ids[:4])
    wait_for(lambda: outbox.depth() == 3, what="4 acked rows deleted")
    assert [r.id for r in outbox.pending()] == ids[4:]
    time.sleep(0.3)
    assert outbox.depth() == 3, "unacked rows stay"
    assert client.stats.reports_acked == 4


def test_outbox_survives_agent_and_server_restarts_delivered_exactly_once(fleet: Fleet) -> None:
    # The control plane is down: reports queue up; then the agent restarts.
    client, journal, outbox = fleet.client()
    add_reports(outbox, 5)
    time.sleep(0.3)
    assert not client.connected.is_set()
    fleet.stop_client(client, journal)
    client, journal, outbox = fleet.client()
    add_reports(outbox, 4, start=5)
    assert outbox.depth() == 9

    # It comes up: everything queued arrives, once, and is deleted.
    store = Store()
    fake = fleet.server(store)
    fake.wait(lambda: len(fake.report_ids()) == 9, what="9 reports after reconnect")
    wait_for(lambda: outbox.depth() == 0, what="outbox drained")

    # The control plane restarts (same store, same port): reports made meanwhile arrive too.
    fake.stop()
    wait_for(lambda: not client.connected.is_set(), what="disconnect noticed")
    add_reports(outbox, 3, start=9)
    fake = fleet.server(store)
    fake.wait(lambda: len(fake.report_ids()) == 12, what="12 reports after the restart")
    wait_for(lambda: outbox.depth() == 0, what="outbox drained again")
    assert sorted(r.policy for r in fake.reports()) == sorted(f"p{i}" for i in range(12))
    assert len(store.deliveries) == len(set(store.deliveries)) == 12, "each id sent once"
    assert client.stats.sessions >= 2


def test_outbox_bound_drops_oldest_and_counts_it_in_heartbeats(fleet: Fleet) -> None:
    client, journal, outbox = fleet.client(outbox_limit=4)
    add_reports(outbox, 10)
    assert outbox.depth() == 4 and outbox.dropped() == 6
    assert [r.policy for r in outbox.pending()] == ["p6", "p7", "p8", "p9"]
    fleet.stop_client(client, journal)

    client, _journal, outbox = fleet.client(outbox_limit=4)
    assert outbox.dropped() == 6, "the counter is persisted"
    fake = fleet.server()
    beat = fake.wait(
        lambda: next((h for h in fake.heartbeats if h.health.outbox_dropped == 6), None),
        what="a heartbeat carrying the drop count",
    )
    assert beat.health.outbox_dropped == 6
    fake.wait(lambda: len(fake.report_ids()) == 4)
    assert sorted(r.policy for r in fake.reports()) == ["p6", "p7", "p8", "p9"]


# ---- assignments ---------------------------------------------------------------------------------


def test_assignment_fetches_installs_and_a_replay_is_refused(fleet: Fleet) -> None:
    fake = fleet.server()
    client, journal, outbox = fleet.client()
    fake.wait(lambda: fake.hellos[:1])
    v1, v2 = fake.serve(fleet.bundle(1)), fake.serve(fleet.bundle(2))

    fake.send(fleet.assignment(v1, seq=1))
    assert results(fake, 1)[0] == pb.ApplyResult(
        assignment_seq=1, bundle_digest=v1, applied=True, message="activated web v1"
    )
    fake.send(fleet.assignment(v2, seq=2, version=2))
    assert results(fake, 2)[1].applied
    pointer = BundleStore(fleet.state).active()
    assert pointer is not None and pointer.digest == v2

    # A replay of the seq-1 assignment (validly signed, once legitimate) would roll back: refused.
    fake.send(fleet.assignment(v1, seq=1))
    refused = results(fake, 3)[2]
    assert not refused.applied and refused.reason == "replayed"
    assert BundleStore(fleet.state).active().digest == v2  # type: ignore[union-attr]
    # An authorised rollback is a *newer* assignment pointing at the older bundle: accepted.
    fake.send(fleet.assignment(v1, seq=3))
    assert results(fake, 4)[3].applied
    assert BundleStore(fleet.state).active().digest == v1  # type: ignore[union-attr]
    assert journal.agent_state()["assignment_seq"] == 3
    assert fake.fetches == [v1, v2, v1], "the replay fetched nothing"
    # The same (last) assignment sent again, say after its ApplyResult was lost: a no-op.
    fake.send(fleet.assignment(v1, seq=3))
    again = results(fake, 5)[4]
    assert again.applied and again.message == "already applied"

    rejections = wait_for(
        lambda: [r for r in fake.reports() if r.kind == "rejection"], what="rejection report"
    )
    assert [r.reason for r in rejections] == ["replayed"]
    assert json.loads(rejections[0].body_json)["seq"] == 1

    # The next hello carries the sequence, so the control plane knows where this host is.
    fake.stop()
    fake = fleet.server()
    hello = fake.wait(lambda: fake.hellos[:1])[0]
    assert hello.last_assignment_seq == 3 and hello.bundle_digest == v1


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("wrong_key", "unknown_key"),
        ("other_host", "wrong_host"),
        ("garbage", "malformed"),
    ],
)
def test_a_bad_assignment_is_refused_and_reported(fleet: Fleet, kind: str, reason: str) -> None:
    fake = fleet.server()
    client, journal, outbox = fleet.client()
    fake.wait(lambda: fake.hellos[:1])
    digest = fake.serve(fleet.bundle(1))
    if kind == "wrong_key":
        message = fleet.assignment(digest, seq=1, key=Ed25519PrivateKey.generate())
    elif kind == "other_host":
        message = fleet.assignment(digest, seq=1, host="db-1")
    else:
        message = pb.ControlMessage(assignment=pb.SignedAssignment(envelope=b"{not json"))
    fake.send(message)
    result = results(fake, 1)[0]
    assert not result.applied and result.reason == reason
    assert BundleStore(fleet.state).active() is None and fake.fetches == []
    assert journal.agent_state().get("assignment_seq", 0) == 0
    fake.wait(lambda: [r for r in fake.reports() if r.reason == reason], what="report")


def test_a_bundle_the_store_refuses_is_reported_with_its_reason(fleet: Fleet) -> None:
    fake = fleet.server()
    client, journal, outbox = fleet.client()
    fake.wait(lambda: fake.hellos[:1])
    other = KeyRing.generate(1)  # signed, but not by a pinned bundle key
    source = write_source(fleet.root / "rogue", {"x.yaml": policy_text("x")})
    rogue = fake.serve(make_bundle(source, other, [0], created=time.time()).data)
    fake.send(fleet.assignment(rogue, seq=1))
    result = results(fake, 1)[0]
    assert not result.applied and result.reason == "unknown_key"
    assert journal.agent_state()["assignment_seq"] == 1, "a definitive answer uses the seq up"
    report = fake.wait(lambda: [r for r in fake.reports() if r.kind == "rejection"])[0]
    assert report.reason == "unknown_key" and json.loads(report.body_json)["bundle_digest"] == rogue


def test_a_missing_bundle_is_not_applied_and_may_be_retried(fleet: Fleet) -> None:
    fake = fleet.server()
    client, journal, outbox = fleet.client()
    fake.wait(lambda: fake.hellos[:1])
    data = fleet.bundle(1)
    digest = hashlib.sha256(data).hexdigest()
    fake.send(fleet.assignment(digest, seq=1))
    assert results(fake, 1)[0].reason == "fetch_failed"
    assert journal.agent_state().get("assignment_seq", 0) == 0
    fake.serve(data)
    fake.send(fleet.assignment(digest, seq=1))
    assert results(fake, 2)[1].applied, "the same assignment succeeds once the bundle is there"


def test_bytes_that_do_not_match_the_digest_are_refused(fleet: Fleet) -> None:
    fake = fleet.server()
    client, journal, outbox = fleet.client()
    fake.wait(lambda: fake.hellos[:1])
    wanted = hashlib.sha256(fleet.bundle(1)).hexdigest()
    fake.bundles[wanted] = fleet.bundle(2)  # a validly signed bundle, but not the one named
    fake.send(fleet.assignment(wanted, seq=1))
    result = results(fake, 1)[0]
    assert not result.applied and result.reason == "digest_mismatch"
    assert BundleStore(fleet.state).active() is None
    assert journal.agent_state().get("assignment_seq", 0) == 0


def test_a_bundle_over_the_size_bound_is_refused(fleet: Fleet) -> None:
    fake = fleet.server()
    client, journal, outbox = fleet.client()
    client.applier.max_bytes = 1000
    fake.wait(lambda: fake.hellos[:1])
    digest = fake.serve(fleet.bundle(1))
    fake.send(fleet.assignment(digest, seq=1))
    result = results(fake, 1)[0]
    assert not result.applied and result.reason == "too_large"


# ---- the central kill switch ------------------------------------------------------------------


def test_pause_and_resume_from_the_control_plane_use_the_pause_file(fleet: Fleet) -> None:
    fake = fleet.server()
    client, journal, outbox = fleet.client()
    fake.wait(lambda: fake.hellos[:1])
    pauses = PauseFile(fleet.state / "pause.json")
    until = time.time() + 600
    fake.send(
        pb.ControlMessage(pause=pb.FleetPause(scope="app", until=until, reason="storm", by="ops"))
    )
    pause = wait_for(lambda: pauses.load().get("app"), what="pause written")
    assert pause.by == "control-plane" and pause.until == until and "storm" in pause.reason
    fake.send(pb.ControlMessage(pause=pb.FleetPause(scope="*", reason="freeze")))
    assert wait_for(lambda: pauses.load().get("*")).until is None

    # A local pause is the operator's on this host: a central resume does not lift it.
    pauses.set("db", None, "disk work", "alice", time.time())
    fake.send(pb.ControlMessage(resume=pb.FleetResume(scope="app")))
    fake.send(pb.ControlMessage(resume=pb.FleetResume(scope="db")))
    fake.send(pb.ControlMessage(resume=pb.FleetResume(scope="*")))
    wait_for(lambda: set(pauses.load()) == {"db"}, what="central pauses lifted")
    assert pauses.load()["db"].by == "alice"


# ---- a whole agent ------------------------------------------------------------------------------


def agent_with_bundle(harness: Any, fleet: Fleet, policies: dict[str, str]) -> str:
    """Install a bundle of ``policies`` as the harness agent's active one; configure the channel."""
    source = write_source(fleet.root / "agent-src", policies)
    built = make_bundle(source, fleet.ring, [0], version=1, created=time.time())
    path = built.write(fleet.root / "out")
    done = BundleStore(harness.state_dir).install(path, fleet.ring.trust(1), time.time())
    raw = fleet.raw()
    harness.configure(host=raw["host"], policy_source="bundle", control_plane=raw["control_plane"])
    return done.digest


def test_the_agent_keeps_remediating_while_the_control_plane_is_down(
    harness: Any, fleet: Fleet
) -> None:
    flag = fleet.root / "flag"
    agent_with_bundle(harness, fleet, {"flag.yaml": harness.flag_policy("flag", flag)})
    agent = harness.start()  # nothing listens on the port
    harness.wait_executions("flag", 1, status="fixed")
    assert flag.exists()
    assert agent.fleet is not None and not agent.fleet.connected.is_set()
    assert agent.outbox is not None and agent.outbox.depth() >= 3  # decisions + execution

    flag.unlink()  # and again, still with no control plane
    harness.wait_executions("flag", 2, status="fixed")
    queued = agent.outbox.depth()

    fake = fleet.server()  # it comes back: what happened meanwhile is delivered
    fake.wait(lambda: len(fake.report_ids()) >= queued, what=f"{queued} reports")
    kinds = {(r.kind, r.outcome) for r in fake.reports()}
    assert {("decision", "act"), ("execution", "fixed"), ("decision", "fixed")} <= kinds
    executions = [r for r in fake.reports() if r.kind == "execution"]
    assert len(executions) == 2 and all(r.policy == "flag" for r in executions)
    assert json.loads(executions[0].body_json)["steps"][0]["name"] == "create-flag"
    wait_for(lambda: agent.outbox.depth() == 0, what="outbox drained")
    health = fake.wait(lambda: [h.health for h in fake.heartbeats if h.health.policies == 1])
    assert health[-1].outbox_dropped == 0


def test_an_assignment_reaches_the_running_policies(harness: Any, fleet: Fleet) -> None:
    agent_with_bundle(harness, fleet, {"app1.yaml": policy_text("app1", limit=100)})
    fake = fleet.server()
    agent = harness.start()
    wait_for(lambda: set(agent.policies) == {"app1"}, what="the first bundle's policy")
    fake.wait(lambda: fake.hellos[:1])

    v2 = fake.serve(fleet.bundle(2, {"app2.yaml": policy_text("app2", limit=200)}))
    fake.send(fleet.assignment(v2, seq=1, version=2))
    assert results(fake, 1)[0].applied
    wait_for(lambda: set(agent.policies) == {"app2"}, what="the runner to reload the new bundle")
    assert agent.journal.agent_state()["assignment_seq"] == 1

    local = PauseFile(harness.state_dir / "pause.json")
    fake.send(pb.ControlMessage(pause=pb.FleetPause(scope="app2", until=time.time() + 60)))
    wait_for(lambda: agent.pauses.effective("app2", time.time()), what="the central pause")
    assert local.load()["app2"].by == "control-plane"


def test_reports_queued_while_down_survive_kill_9_and_arrive_once(
    harness: Any, fleet: Fleet
) -> None:
    flag = fleet.root / "flag"
    agent_with_bundle(harness, fleet, {"flag.yaml": harness.flag_policy("flag", flag)})
    harness.spawn()  # a real agent process; the control plane is down
    harness.wait_executions("flag", 1, status="fixed")
    harness.wait_decision("flag", "cleared")
    harness.kill9()
    queued = {r.id for r in Outbox(harness.journal, 1000).pending(limit=1000)}
    assert len(queued) >= 4  # act, execution fixed, fixed, cleared

    store = Store()
    fake = fleet.server(store)
    harness.spawn()
    fake.wait(lambda: queued <= fake.report_ids(), what="every queued report")
    wait_for(lambda: Outbox(harness.journal, 1000).depth() == 0, what="the outbox drained")
    assert len(store.deliveries) == len(set(store.deliveries)), "each id on the wire once"
    kinds = sorted(r.kind for r in fake.reports() if r.id in queued)
    assert kinds.count("execution") == 1 and kinds.count("decision") >= 3

"""Control-plane metrics for real: the server on loopback (in this process, or as
``python -m controlplane.server --metrics-listen``), simulated agents on real gRPC streams, real
rollouts, and the exposition scraped over HTTP, read back with prometheus_client's parser and
checked by ``promtool check metrics`` when it is installed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cp_harness import Cluster, execution, run, until
from cp_process import ServerProcess
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

pytest.importorskip("prometheus_client", reason="prometheus-client is not installed")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from agent.clock import SystemClock  # noqa: E402
from controlplane.assignments import make_signer  # noqa: E402
from controlplane.bundle_fixtures import KeyRing  # noqa: E402
from controlplane.metrics_server import ServedMetrics  # noqa: E402
from controlplane.plane import ControlPlane  # noqa: E402
from controlplane.server import Server  # noqa: E402
from controlplane.storage.sqlite import SqliteStorage  # noqa: E402
from stanch.v1 import admin_pb2, admin_pb2_grpc  # noqa: E402

PROMTOOL = shutil.which("promtool")
GATES = {"failed_applies", "agents_lost", "failure_rate", "escalations"}


# ---- scraping ------------------------------------------------------------------------------------


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@dataclass
class Scrape:
    body: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def __call__(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def total(self, name: str, **labels: str) -> float:
        """Sum over every series of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)

    def series(self, name: str) -> list[dict[str, str]]:
        return [dict(ls) for (n, ls) in self.samples if n == name]


def parse(body: str) -> Scrape:
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }
    return Scrape(body, samples)


async def scrape(base: str) -> Scrape:
    """Off the event loop: the in-process plane answers the scrape on this very loop."""
    status, content_type, body = await asyncio.to_thread(get, base + "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version="), body
    return parse(body)


def promtool_check(body: str) -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=body, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "" and done.stderr.strip() == "", "promtool lint warnings"


# ---- an in-process control plane with metrics on -------------------------------------------------


@dataclass
class MeteredCluster(Cluster):
    """``cp_harness.Cluster`` with ``--metrics-listen 127.0.0.1:0``, wired as ``serve`` does."""

    async def start(self) -> None:
        self.metrics = ServedMetrics("127.0.0.1", 0)
        self.plane = ControlPlane(
            SqliteStorage(self.tmp / "cp.db"),
            self.ring.trust(1),
            make_signer(self.assign_key),
            SystemClock(),
            self.settings,
            self.metrics,
        )
        self.server = Server(self.plane, f"127.0.0.1:{self.port}", self.token)
        self.port = await self.server.start()
        self.metrics.serve(self.plane, asyncio.get_running_loop())
        assert self.metrics.server is not None
        self.base = f"http://127.0.0.1:{self.metrics.server.port}"
        self.open_admin()

    async def stop(self) -> None:
        await super().stop()
        self.metrics.close()

    async def scrape(self) -> Scrape:
        return await scrape(self.base)


@contextlib.asynccontextmanager
async def metered(tmp_path: Path, token: str | None = None) -> AsyncIterator[MeteredCluster]:
    c = MeteredCluster(tmp_path, KeyRing.generate(1), Ed25519PrivateKey.generate(), token)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


def refuse_v3(a: Any) -> tuple[bool, str]:
    return (False, "invalid_policy") if a.bundle_version == 3 else (True, "")


async def ended(c: MeteredCluster, rollout_id: str) -> admin_pb2.RolloutStatus:
    async def done() -> admin_pb2.RolloutStatus | None:
        status = await c.status(rollout_id)
        return status if status.state not in ("running", "paused") else None

    result: admin_pb2.RolloutStatus = await until(done, 10, f"rollout {rollout_id} to end")
    return result


# ---- tests ---------------------------------------------------------------------------------------


def test_a_rollouts_life_in_metrics(tmp_path: Path) -> None:
    """Agents, heartbeats, reports (one redelivered), a rollout watched mid-wave then aborted,
    a bad bundle halted at the canary and rolled back, a pause, and the RPCs behind all that."""

    async def scenario() -> None:
        async with metered(tmp_path) as c:
            v1, v2, v3 = [await c.publish(c.bundle(v)) for v in (1, 2, 3)]
            sims = [
                await c.agent(f"web-{i}", digest=v1.digest, version=1, verdict=refuse_v3)
                for i in range(4)
            ]
            for s in sims:
                await s.heartbeat(firing=())
                await s.report(execution(1, f"policy-{s.host_id}", "fixed"))
            await until(lambda: all(1 in s.acks for s in sims), what="the first acks")
            await sims[0].report(execution(1, "policy-web-0", "fixed"))  # redelivered
            await until(lambda: sims[0].acks.count(1) == 2, what="the redelivery's ack")

            # A rollout caught mid-canary: its wave, hosts and gates, by rollout id.
            active = await c.rollout(v2.digest, waves=("1", "100%"), bake=60.0)

            async def canary_applied() -> bool:
                return (await c.status(active.id)).waves[0].applied == 1

            await until(canary_applied, what="the v2 canary to apply")

            rid = active.id
            enforce = {"rollout": rid, "mode": "enforce"}

            async def gates_evaluated() -> Scrape | None:
                # agents_lost's default 1% applies to the hosts updated so far: 0.01 once a step
                # has seen the canary (the step that assigned it saw none)
                m = await c.scrape()
                limit = m("stanch_cp_rollout_gate_threshold", gate="agents_lost", **enforce)
                return m if limit == 0.01 else None

            m = await until(gates_evaluated, what="gates evaluated over the canary")
            assert m("stanch_cp_rollout_state", rollout=rid, state="running") == 1
            assert m("stanch_cp_rollout_state", rollout=rid, state="completed") == 0
            assert m("stanch_cp_rollout_wave", rollout=rid) == 1
            assert m("stanch_cp_rollout_waves", rollout=rid) == 2
            started = m("stanch_cp_rollout_wave_started_timestamp_seconds", rollout=rid)
            assert started is not None and abs(started - time.time()) < 30
            assert m("stanch_cp_rollout_hosts", rollout=rid, status="applied") == 1
            assert m("stanch_cp_rollout_hosts", rollout=rid, status="failed") == 0
            gate_series = m.series("stanch_cp_rollout_gate_value")
            assert {s["gate"] for s in gate_series} == GATES
            assert {(s["rollout"], s["mode"]) for s in gate_series} == {(rid, "enforce")}
            assert m("stanch_cp_rollout_gate_value", gate="failed_applies", **enforce) == 0
            assert m("stanch_cp_rollout_gate_threshold", gate="failed_applies", **enforce) == 0
            # failure_rate's default 20% is a ratio, not scaled by hosts
            assert m("stanch_cp_rollout_gate_threshold", gate="failure_rate", **enforce) == 0.2
            assert m.total("stanch_cp_rollout_gate_passing") == 4
            assert m("stanch_cp_rollouts", state="running") == 1

            abort = admin_pb2.ControlRolloutRequest(id=rid, action="abort", reason="t", by="t")
            await c.admin("ControlRollout", abort)

            # A bundle every agent refuses: halted at the canary by failed_applies.
            bad = await c.rollout(v3.digest, waves=("1", "100%"), bake=5.0)
            assert (await ended(c, bad.id)).state == "rolled_back"
            await c.admin(
                "Pause", admin_pb2.PauseRequest(policy="nginx", for_seconds=600, reason="t", by="t")
            )
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await c.admin("GetRollout", admin_pb2.GetRolloutRequest(id="no-such-rollout"))
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND

            async def settled() -> Scrape | None:
                m = await c.scrape()
                done = m("stanch_cp_rollback_hosts_total", result="rolled_back") == 2
                return m if done and m("stanch_cp_heartbeats_persisted_total") else None

            m = await until(settled, what="both rollbacks and a presence flush in a scrape")
            # agents and their traffic
            assert m("stanch_cp_agents_connected") == 4
            assert m("stanch_cp_agents_connected_by_version", version="sim-1") == 4
            assert m("stanch_cp_heartbeats_received_total") == 4
            assert m("stanch_cp_heartbeats_persisted_total") == 4
            assert m("stanch_cp_reports_received_total") == 5
            assert m("stanch_cp_reports_persisted_total") == 4
            assert m("stanch_cp_reports_duplicate_total") == 1
            assert m("stanch_cp_report_commit_failures_total") == 0
            assert m("stanch_cp_report_commit_rows_sum") == 5
            commits = m("stanch_cp_report_commit_rows_count")
            assert commits is not None and 2 <= commits <= 5
            assert m("stanch_cp_report_commit_seconds_count") == commits
            assert m("stanch_cp_reports_pending") == 0
            # rollouts: one aborted by an operator, one rolled back by its gate
            assert m("stanch_cp_assignments_issued_total", kind="rollout") == 2  # two canaries
            assert m("stanch_cp_assignments_issued_total", kind="rollback") == 2
            assert m("stanch_cp_assignments_issued_total", kind="join") == 0
            assert m("stanch_cp_rollbacks_total", state="aborted") == 1
            assert m("stanch_cp_rollbacks_total", state="rolled_back") == 1
            assert m("stanch_cp_rollback_hosts_total", result="stranded") == 0
            assert m("stanch_cp_gate_failures_total", gate="failed_applies", mode="enforce") == 1
            assert m.total("stanch_cp_gate_failures_total") == 1
            assert m("stanch_cp_rollouts", state="aborted") == 1
            assert m("stanch_cp_rollouts", state="rolled_back") == 1
            assert m("stanch_cp_rollouts", state="running") == 0
            assert m("stanch_cp_rollout_state", rollout=rid, state="aborted") == 1
            assert m("stanch_cp_rollout_state", rollout=bad.id, state="rolled_back") == 1
            assert m("stanch_cp_rollout_wave", rollout=bad.id) == 1  # stopped at the canary
            assert m.series("stanch_cp_rollout_gate_value") == []  # gates: active rollouts only
            assert m.series("stanch_cp_rollout_hosts") == []
            assert m("stanch_cp_fleet_pauses_active", source="operator") == 1
            assert m("stanch_cp_fleet_pauses_active", source="storm-breaker") == 0
            assert m("stanch_cp_storm_trips_total") == 0
            # the RPCs behind it, by method and code
            rpc = "stanch_cp_grpc_server_handling_seconds_count"
            admin = {"grpc_service": "stanch.v1.Admin", "grpc_type": "unary"}
            assert m(rpc, grpc_method="StartRollout", grpc_code="OK", **admin) == 2
            assert m(rpc, grpc_method="PublishBundle", grpc_code="OK", **admin) == 3
            assert m(rpc, grpc_method="GetRollout", grpc_code="NOT_FOUND", **admin) == 1
            fleet = {"grpc_service": "stanch.v1.Fleet", "grpc_method": "Connect"}
            assert m("stanch_cp_grpc_server_in_flight", **fleet) == 4
            assert m.total(rpc, **fleet) == 0  # streams are observed when they end
            assert m("stanch_cp_task_running", task="report-writer") == 1
            assert m("stanch_cp_state_collect_success") == 1
            assert m("stanch_cp_info", version="0.1.0", replica="test") == 1
            assert "process_resident_memory_bytes" in m.body
            assert "_created" not in m.body

            # An agent that goes away ends its stream: counted by its code, gone from the gauge.
            await sims[0].close()
            c.agents.remove(sims[0])

            async def disconnected() -> Scrape | None:
                m = await c.scrape()
                ended = m.total(rpc, grpc_type="bidi_stream", **fleet) == 1
                return m if ended and m("stanch_cp_agents_connected") == 3 else None

            m = await until(disconnected, what="the disconnect in a scrape")
            assert m("stanch_cp_grpc_server_in_flight", **fleet) == 3
            if PROMTOOL is not None:
                promtool_check(m.body)

    run(scenario())


def test_joins_refused_tokens_and_storm_trips(tmp_path: Path) -> None:
    """A host that connects after a rollout completed gets the standing bundle (kind join);
    admin calls without the token are counted UNAUTHENTICATED; a storm trip is counted."""

    async def scenario() -> None:
        async with metered(tmp_path, token="s3cret") as c:
            v1, v2 = [await c.publish(c.bundle(v)) for v in (1, 2)]
            for i in range(3):
                await c.agent(f"web-{i}", digest=v1.digest, version=1)
            done = await c.rollout(v2.digest, waves=("100%",), bake=0.0)
            assert (await ended(c, done.id)).state == "completed"
            late = await c.agent("web-late", digest=v1.digest, version=1)
            await until(lambda: late.on == v2.digest, what="the late host to get v2")

            async with grpc.aio.insecure_channel(c.addr) as channel:
                stub = admin_pb2_grpc.AdminStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as denied:
                    await stub.ListRollouts(admin_pb2.ListRolloutsRequest(), timeout=5)
                assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED

            # The same policy firing on every host: the storm breaker pauses it fleet-wide.
            for s in c.agents:
                await s.heartbeat(firing=["disk-full"])

            async def tripped() -> Scrape | None:
                m = await c.scrape()
                return m if m("stanch_cp_storm_trips_total") == 1 else None

            m = await until(tripped, what="the storm trip in a scrape")
            assert m("stanch_cp_fleet_pauses_active", source="storm-breaker") == 1
            assert m("stanch_cp_assignments_issued_total", kind="rollout") == 3
            assert m("stanch_cp_assignments_issued_total", kind="join") == 1
            assert m("stanch_cp_rollouts", state="completed") == 1
            assert m("stanch_cp_rollout_state", rollout=done.id, state="completed") == 1
            rpc = "stanch_cp_grpc_server_handling_seconds_count"
            refused = {"grpc_service": "stanch.v1.Admin", "grpc_method": "ListRollouts"}
            assert m(rpc, grpc_type="unary", grpc_code="UNAUTHENTICATED", **refused) == 1

    run(scenario())


def test_healthz_and_a_failed_state_read(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with metered(tmp_path) as c:
            status, content_type, body = await asyncio.to_thread(get, c.base + "/healthz")
            assert (status, content_type) == (200, "application/json")
            health = json.loads(body)
            assert health["status"] == "ok" and health["loop_lag_seconds"] < 1.0
            assert (await asyncio.to_thread(get, c.base + "/nope"))[0] == 404

            # Storage that cannot be read: the scrape still answers, and says so.
            real = c.plane.db.rollouts

            def broken(active_only: bool = False) -> Any:
                raise OSError("database disk image is malformed")

            c.plane.db.rollouts = broken  # type: ignore[method-assign]
            m = await c.scrape()
            assert m("stanch_cp_state_collect_success") == 0
            assert m("stanch_cp_agents_connected") is None
            assert m("stanch_cp_heartbeats_received_total") == 0  # the counters still answer
            c.plane.db.rollouts = real  # type: ignore[method-assign]
            assert (await c.scrape())("stanch_cp_state_collect_success") == 1

            # The report writer dies: gRPC health still says SERVING, /healthz does not.
            writer = next(t for t in c.plane._tasks if t.get_name() == "report-writer")
            writer.cancel()
            await until(writer.done, what="the report writer to stop")
            status, _, body = await asyncio.to_thread(get, c.base + "/healthz")
            assert status == 503
            assert json.loads(body)["reason"] == "background task(s) stopped: report-writer"
            m = await c.scrape()
            assert m("stanch_cp_task_running", task="report-writer") == 0
            assert m("stanch_cp_task_running", task="rollouts") == 1

    run(scenario())


# ---- the real process ----------------------------------------------------------------------------


def metrics_address(log: Path) -> str | None:
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            event: Mapping[str, Any] = json.loads(line)
            if event.get("event") == "metrics_listening":
                return str(event["address"])
    return None


def test_the_server_process_serves_metrics(tmp_path: Path) -> None:
    async def scenario() -> None:
        cp = ServerProcess.create(tmp_path)
        cp.start("--metrics-listen", "127.0.0.1:0")
        try:
            address = metrics_address(tmp_path / "cp.log")
            assert address is not None, (tmp_path / "cp.log").read_text()
            base = f"http://{address}"
            v1 = await cp.publish(cp.bundle(1))
            sims = [await cp.agent(f"web-{i}", digest=v1.digest, version=1) for i in range(2)]
            for s in sims:
                await s.heartbeat()
                await s.report(execution(7, "heartbeat", "fixed"))
            await until(lambda: all(7 in s.acks for s in sims), what="acks")

            async def counted() -> Scrape | None:
                m = await scrape(base)
                beats = m("stanch_cp_heartbeats_received_total")
                return m if m("stanch_cp_agents_connected") == 2 and beats == 2 else None

            m = await until(counted, 10, "the agents in a scrape")
            assert m("stanch_cp_reports_persisted_total") == 2
            assert m("stanch_cp_agents_connected_by_version", version="sim-1") == 2
            rpc = "stanch_cp_grpc_server_handling_seconds_count"
            publish = {"grpc_service": "stanch.v1.Admin", "grpc_method": "PublishBundle"}
            assert m(rpc, grpc_type="unary", grpc_code="OK", **publish) == 1
            assert m("stanch_cp_state_collect_success") == 1
            status, _, body = await asyncio.to_thread(get, base + "/healthz")
            assert status == 200 and json.loads(body)["status"] == "ok"
            if PROMTOOL is not None:
                promtool_check(m.body)
        finally:
            await cp.close()
        assert cp.proc is not None and cp.proc.returncode == 0

    run(scenario())


def test_a_taken_metrics_port_does_not_stop_the_control_plane(tmp_path: Path) -> None:
    async def scenario() -> None:
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            cp = ServerProcess.create(tmp_path)
            cp.start("--metrics-listen", f"127.0.0.1:{port}")
            try:
                assert (await cp.publish(cp.bundle(1))).digest  # gRPC serves regardless
                log = (tmp_path / "cp.log").read_text()
                assert '"event": "metrics_unavailable"' in log
                assert metrics_address(tmp_path / "cp.log") is None
            finally:
                await cp.close()

    run(scenario())


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_accepts_the_openmetrics_negotiation(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with metered(tmp_path) as c:
            request = urllib.request.Request(
                c.base + "/metrics", headers={"Accept": "application/openmetrics-text"}
            )

            def fetch() -> tuple[str, str]:
                with urllib.request.urlopen(request, timeout=10) as resp:
                    return resp.headers["Content-Type"], resp.read().decode()

            content_type, body = await asyncio.to_thread(fetch)
            assert content_type.startswith("application/openmetrics-text")
            assert body.rstrip().endswith("# EOF")
            promtool_check((await c.scrape()).body)

    run(scenario())


def test_rpc_codes_types_and_unknown_methods() -> None:
    """The interceptor on its own, in front of the standard health service: a unary call that
    succeeds and one that aborts, a server stream the client cancels (a servicer that writes
    with ``context.write``, not a generator), and a method nobody serves."""
    from grpc_health.v1 import (  # type: ignore[import-untyped]
        health,
        health_pb2,
        health_pb2_grpc,
    )
    from prometheus_client import CollectorRegistry

    from controlplane.metrics import RpcMetrics

    async def scenario() -> None:
        registry = CollectorRegistry()
        server = grpc.aio.server(interceptors=[RpcMetrics(registry)])
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as unknown_service:
                    await stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
                assert unknown_service.value.code() == grpc.StatusCode.NOT_FOUND
                watch = stub.Watch(health_pb2.HealthCheckRequest())
                first = await watch.read()
                assert first.status == health_pb2.HealthCheckResponse.SERVING
                watch.cancel()
                with pytest.raises(grpc.aio.AioRpcError) as unserved:
                    await channel.unary_unary("/no.Such/Method")(b"", timeout=5)
                assert unserved.value.code() == grpc.StatusCode.UNIMPLEMENTED

            def count(method: str, kind: str, code: str) -> float | None:
                labels = {
                    "grpc_service": "grpc.health.v1.Health",
                    "grpc_method": method,
                    "grpc_type": kind,
                    "grpc_code": code,
                }
                return registry.get_sample_value(
                    "stanch_cp_grpc_server_handling_seconds_count", labels
                )

            await until(lambda: count("Watch", "server_stream", "CANCELLED"), what="the cancel")
            assert count("Check", "unary", "OK") == 1
            assert count("Check", "unary", "NOT_FOUND") == 1
            in_flight = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Watch"}
            assert registry.get_sample_value("stanch_cp_grpc_server_in_flight", in_flight) == 0
            recorded = {
                s.labels.get("grpc_service")
                for family in registry.collect()
                for s in family.samples
                if s.name.startswith("stanch_cp_grpc_server_handling_seconds")
            }
            assert recorded == {"grpc.health.v1.Health"}  # /no.Such/Method left no series
        finally:
            await server.stop(0)

    run(scenario())

"""Harness for the fleet end-to-end tests: the demo's real processes, more of them, and ways to
look at what they did.

:class:`Fleet` is :class:`controlplane.fleet_demo.Demo` (a real ``stanch-cp`` on SQLite, one real
``python -m agent.cli run`` process per host, each host a directory that is the agent's
``--root`` and ``HOME``, bundles built, signed and published with ``opsctl``, the "app" that
touches each host's heartbeat file, faults injected by letting that file go stale) plus:

- more hosts, a control plane that can be SIGKILLed and started again on the same address and
  database, and ``opsctl -o json`` for the answers;
- readers of real state: each host's active bundle pointer, pause file, journal and outbox
  (``agent.bundle.pointer``, ``agent.pauses``, ``agent.journal``, ``agent.fleet.outbox``), and
  the control plane's SQLite through its storage class;
- :class:`ReplayServer`, a stand-in control plane that takes the real one's address while it is
  down and hands one agent a captured assignment envelope (a replay).

Every wait is bounded and says what it waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import yaml

from agent.bundle.pointer import ActivePointer
from agent.fleet.outbox import Outbox, PendingReport
from agent.journal import DecisionRow, ExecutionRow, Journal
from agent.pauses import Pause, PauseFile
from controlplane.fleet_demo import BREAK, FIX, Demo
from controlplane.fleet_demo import POLICY as DEMO_POLICY
from controlplane.fleet_demo import wait_for as _wait_for
from controlplane.storage.sqlite import SqliteStorage
from stanch.v1 import fleet_pb2 as pb
from stanch.v1 import fleet_pb2_grpc as pb_grpc

T = TypeVar("T")
POLICY = "app-heartbeat"
SELECTOR = "env=demo"
__all__ = ["BREAK", "FIX", "POLICY", "SELECTOR", "Fleet", "ReplayServer", "TunedFleet", "wait_for"]


def wait_for(what: str, predicate: Callable[[], T], timeout: float) -> T:
    return _wait_for(what, predicate, timeout, AssertionError)


def fleet_hosts(count: int) -> list[tuple[str, str]]:
    """``count`` hosts, three web for each db (labels ``env=demo``, ``role=web|db``)."""
    return [(f"db-{i:02d}", "db") if i % 4 == 3 else (f"web-{i:02d}", "web") for i in range(count)]


class Fleet(Demo):
    Failure = AssertionError
    # The storm breaker trips above half the fleet here (the default, 20%, would let the few
    # hosts the other tests break add up to a trip); everything else as in the demo.
    cp_flags = (*Demo.cp_flags, "--storm-fraction", "0.5")
    agent_log_level = "info"

    def __init__(self, work: Path, count: int) -> None:
        super().__init__(work, fleet_hosts(count))
        self.version = 0
        self.good = ""
        """Digest of the good bundle the whole fleet runs (set by :meth:`baseline`)."""
        self.port = 0

    # ---- processes -----------------------------------------------------------------------------

    @property
    def host_ids(self) -> list[str]:
        return [host for host, _role in self.hosts]

    def start(self) -> None:
        self.start_control_plane()
        self.port = int(self.addr.rsplit(":", 1)[1])
        self.start_agents()

    def kill_cp(self) -> None:
        """SIGKILL: no shutdown path runs, as in a crash or an OOM kill."""
        assert self.cp is not None
        self.cp.send_signal(signal.SIGKILL)
        self.cp.wait(10)

    def stop_cp(self) -> None:
        assert self.cp is not None
        if self.cp.poll() is None:
            self.cp.send_signal(signal.SIGTERM)
        self.cp.wait(15)

    def restart_cp(self) -> None:
        """A new ``stanch-cp`` on the same database and address; waits for every agent."""
        self.spawn_control_plane(f"127.0.0.1:{self.port}")
        wait_for("every agent to reconnect", lambda: self.connected() == len(self.hosts), 60)

    def ensure_cp(self) -> None:
        """Start the control plane again if an earlier test left it dead."""
        if self.cp is None or self.cp.poll() is not None:
            self.restart_cp()

    def dead_agents(self) -> list[str]:
        return [host for host, proc in self.agents.items() if proc.poll() is not None]

    def connected(self) -> int:
        done = self.opsctl("agents", "list", "-o", "json", show=False, timeout=30)
        if done.returncode != 0:
            return 0
        return sum(1 for a in json.loads(done.stdout) if a.get("connected"))

    # ---- opsctl --------------------------------------------------------------------------------

    def ctl(
        self, *args: str, must: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.opsctl(*args, show=False, must=must, timeout=timeout)

    def ctl_json(self, *args: str) -> Any:
        return json.loads(self.ctl(*args, "-o", "json").stdout)

    def agents_json(self) -> dict[str, dict[str, Any]]:
        return {a["host_id"]: a for a in self.ctl_json("agents", "list")}

    def release(self, script: str) -> str:
        """Build, sign and publish the next version of the demo bundle; its digest."""
        self.version += 1
        path = self.bundle(self.version, script)
        self.ctl("bundle", "publish", path)
        return Path(path).name.removesuffix(".bundle")

    def start_rollout(self, digest: str, waves: str, bake: str) -> str:
        doc = self.ctl_json(
            "rollout", "policy", digest, "-l", SELECTOR, "--waves", waves, "--bake", bake
        )
        return str(doc["id"])

    def watch_rollout(self, rollout_id: str, timeout: float) -> subprocess.Popen[str]:
        """``opsctl rollout status ID --watch`` as a CI job runs it (it gives up after
        ``timeout``, exit 2)."""
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controlplane.opsctl",
                "rollout",
                "status",
                rollout_id,
                "--watch",
                "--interval",
                "0.5s",
                "--timeout",
                f"{timeout:g}s",
            ],
            env={**self.env, "STANCH_ADDR": self.addr},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def status(self, rollout_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.ctl_json("rollout", "status", rollout_id)
        return doc

    def baseline(self) -> str:
        """Make sure every host runs a good bundle (the fix works); its digest."""
        if self.good and all(self.digest(h) == self.good for h in self.host_ids):
            return self.good
        digest = self.release(FIX)
        rollout = self.start_rollout(digest, "100%", "0s")
        watch = self.watch_rollout(rollout, 120)
        out, _ = watch.communicate(timeout=150)
        assert watch.returncode == 0, f"baseline rollout did not complete:\n{out}"
        self.wait_digest(self.host_ids, digest, 60)
        self.good = digest
        return digest

    # ---- faults --------------------------------------------------------------------------------

    def heal(self, host: str) -> None:
        """The app on ``host`` works again (touches its heartbeat)."""
        self.faulty.discard(host)
        self.heartbeat_file(host).touch()

    def heal_all(self) -> None:
        for host in list(self.faulty):
            self.heal(host)

    def heartbeat_file(self, host: str) -> Path:
        return self.work / host / "var" / "run" / "app.heartbeat"

    # ---- what the hosts did --------------------------------------------------------------------

    def state(self, host: str) -> Path:
        return self.work / host / "state"

    def pointer(self, host: str) -> ActivePointer | None:
        return ActivePointer.read(self.state(host) / "bundles")

    def digest(self, host: str) -> str:
        pointer = self.pointer(host)
        return pointer.digest if pointer else ""

    def wait_digest(self, hosts: list[str], digest: str, timeout: float) -> None:
        def there() -> bool:
            return all(self.digest(h) == digest for h in hosts)

        try:
            wait_for(f"{len(hosts)} host(s) to run {digest[:12]}", there, timeout)
        except AssertionError as exc:
            wrong = {h: self.digest(h)[:12] for h in hosts if self.digest(h) != digest}
            raise AssertionError(f"{exc}; not there: {wrong}") from None

    def pauses(self, host: str) -> dict[str, Pause]:
        return PauseFile(self.state(host) / "pause.json").load()

    @contextlib.contextmanager
    def journal(self, host: str) -> Iterator[Journal]:
        """The agent's own journal on its state file (read next to the running agent: WAL)."""
        journal = Journal(self.state(host) / "state.db")
        try:
            yield journal
        finally:
            journal.close()

    def executions(self, host: str) -> list[ExecutionRow]:
        """Oldest first."""
        with self.journal(host) as j:
            return list(reversed(j.executions(POLICY, limit=500)))

    def decisions(self, host: str) -> list[DecisionRow]:
        """Oldest first."""
        with self.journal(host) as j:
            return list(reversed(j.decisions(POLICY, limit=500)))

    def outbox(self, host: str) -> list[PendingReport]:
        """Reports the agent has not had acked yet."""
        with self.journal(host) as j:
            return Outbox(j, 1_000_000).pending(limit=10_000)

    def agent_state(self, host: str) -> dict[str, Any]:
        with self.journal(host) as j:
            return j.agent_state()

    def describe(self, host: str) -> str:
        """What one host did, for failure messages."""
        lines = [f"{host}: bundle {self.digest(host)[:12]}, pauses {self.pauses(host)}"]
        for d in self.decisions(host)[-8:]:
            lines.append(f"  decision {d.outcome}/{d.reason} x{d.repeat} at {d.last_at:.1f}")
        for e in self.executions(host)[-4:]:
            lines.append(f"  execution {e.id} {e.status} at {e.started_at:.1f}")
        log = self.work / host / "agent.log"
        if log.exists():
            lines += ["  " + line for line in log.read_text(errors="replace").splitlines()[-10:]]
        return "\n".join(lines)

    # ---- what the control plane stored ---------------------------------------------------------

    @contextlib.contextmanager
    def storage(self) -> Iterator[SqliteStorage]:
        """The control plane's own storage class on its database (WAL: fine next to it)."""
        db = SqliteStorage(self.work / "cp.db")
        try:
            yield db
        finally:
            db.close()

    def assignments(self) -> dict[str, list[sqlite3.Row]]:
        """Every assignment the control plane ever issued, per host, by sequence. (The
        ``Storage`` protocol only serves the newest; history is read from the table.)"""
        db = sqlite3.connect(f"file:{self.work / 'cp.db'}?mode=ro", uri=True, timeout=10)
        db.row_factory = sqlite3.Row
        try:
            rows = db.execute("SELECT * FROM assignments ORDER BY host_id, seq").fetchall()
        finally:
            db.close()
        out: dict[str, list[sqlite3.Row]] = {}
        for row in rows:
            out.setdefault(row["host_id"], []).append(row)
        return out

    def stop(self) -> None:
        self.stopped.set()
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


class ReplayServer:
    """A stand-in control plane on the real one's address (while that one is down): it holds
    every agent's stream open, sends ``envelopes[host]`` once to that host after its Hello, acks
    nothing, and records what comes back. Real gRPC on loopback, in its own thread and loop."""

    def __init__(self, port: int, envelopes: dict[str, bytes]) -> None:
        self.port = port
        self.envelopes = envelopes
        self.hellos: dict[str, pb.Hello] = {}
        self.results: dict[str, list[pb.ApplyResult]] = {}
        self.lock = threading.Lock()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="replay-server", daemon=True)

    def __enter__(self) -> ReplayServer:
        self._thread.start()
        assert self._ready.wait(15), "the replay server did not start"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._done is not None:
            self._loop.call_soon_threadsafe(self._done.set)
        self._thread.join(15)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced by __enter__
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        pb_grpc.add_FleetServicer_to_server(_ReplayServicer(self), server)  # type: ignore[no-untyped-call]
        server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._ready.set()
        await self._done.wait()
        await server.stop(grace=None)

    def result(self, host: str) -> pb.ApplyResult | None:
        with self.lock:
            found = self.results.get(host)
            return found[0] if found else None


class _ReplayServicer(pb_grpc.FleetServicer):
    def __init__(self, fake: ReplayServer) -> None:
        self.fake = fake

    async def Connect(  # noqa: N802 (the generated method name)
        self, request_iterator: AsyncIterator[pb.AgentMessage], context: Any
    ) -> AsyncIterator[pb.ControlMessage]:
        fake = self.fake
        messages = request_iterator.__aiter__()
        try:
            first = await messages.__anext__()
        except StopAsyncIteration:
            return
        host = first.hello.host_id
        with fake.lock:
            fake.hellos[host] = first.hello
            envelope = fake.envelopes.pop(host, None)
        if envelope is not None:
            yield pb.ControlMessage(assignment=pb.SignedAssignment(envelope=envelope))
        async for message in messages:
            if message.WhichOneof("body") == "apply_result":
                with fake.lock:
                    fake.results.setdefault(host, []).append(message.apply_result)

    async def FetchBundle(  # noqa: N802
        self, request: pb.FetchBundleRequest, context: Any
    ) -> AsyncIterator[pb.BundleChunk]:
        await context.abort(grpc.StatusCode.NOT_FOUND, "the replay server serves no bundles")
        yield pb.BundleChunk()  # pragma: no cover (abort raises)


class TunedFleet(Fleet):
    """A :class:`Fleet` whose agents take extra config keys and a command prefix (the fault
    tests): ``agent_extra`` is merged into each ``agent.yaml`` (e.g. host limits high enough for
    many remediation cycles), ``agent_prefix`` goes before the agent's argv (e.g.
    ``ip netns exec NS`` to run it inside a network namespace), ``agent_env`` into its
    environment (e.g. ``STANCH_FAILPOINTS``). The rest is :meth:`Demo.spawn_agent`'s host."""

    def __init__(self, work: Path, count: int) -> None:
        super().__init__(work, count)
        self.agent_extra: dict[str, Any] = {}
        self.agent_prefix: list[str] = []
        self.agent_env: dict[str, str] = {}
        self.cp_db = str(work / "cp.db")
        """``--db`` of the control plane: this SQLite file, or a ``postgresql://`` URL."""
        self.guardrails = ""
        """When set, replaces the demo policy's ``{cooldown: 1s}`` guardrails in bundles."""

    def spawn_control_plane(self, listen: str = "127.0.0.1:0") -> str:
        """:meth:`Demo.spawn_control_plane` on :attr:`cp_db`."""
        argv = [sys.executable, "-m", "controlplane.server", "--insecure", "--db", self.cp_db]
        argv += ["--listen", listen, "--assignment-key", str(self.work / "cp" / "assign.key")]
        argv += ["--trust", str(self.work / "keys"), *self.cp_flags, "--log-format", "json"]
        proc = subprocess.Popen(
            argv, env=self.env, stdout=subprocess.PIPE, stderr=(self.work / "cp.log").open("ab")
        )
        self.procs.append(proc)
        self.cp = proc
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline().decode() if ready else ""
        if "listening on" not in line:
            proc.kill()
            raise AssertionError(f"the control plane did not start; see {self.work}/cp.log")
        self.addr = line.split()[-1]
        return line.strip()

    def bundle(self, version: int, script: str) -> str:
        if not self.guardrails:
            return super().bundle(version, script)
        text = DEMO_POLICY.format(script=script)
        assert "guardrails: {cooldown: 1s}" in text
        text = text.replace("guardrails: {cooldown: 1s}", f"guardrails: {self.guardrails}")
        source = self.work / f"policies-v{version}"
        source.mkdir()
        (source / f"{POLICY}.yaml").write_text(text)
        out = self.work / "bundles"
        build = ["bundle", "build", str(source), "-o", str(out), "--name", "tuned"]
        built = self.opsctl(*build, "--version", str(version), "--expires", "7d", must=True)
        key = str(self.work / "keys" / "release-1")
        signed = self.opsctl("bundle", "sign", built.stdout.split()[1], "--key", key, must=True)
        return signed.stdout.split()[1]

    def spawn_agent(self, host: str, role: str) -> None:
        home = self.work / host
        (home / "var" / "run").mkdir(parents=True, exist_ok=True)
        (home / "var" / "run" / "app.heartbeat").touch()
        config: dict[str, Any] = {
            "host": {"id": host, "labels": {"env": "demo", "role": role}},
            "policy_source": "bundle",
            "state_dir": str(home / "state"),
            "control_plane": {
                "address": self.addr,
                "insecure": True,
                "assignment_keys": str(self.work / "assignment-keys"),
                "trust": str(self.work / "keys"),
                "heartbeat": "1s",
                "reconnect": {"initial": "200ms", "max": "2s"},
            },
        }
        for key, value in self.agent_extra.items():  # one level deep: control_plane keys too
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        (home / "agent.yaml").write_text(yaml.safe_dump(config))
        argv = [sys.executable, "-m", "agent.cli", "--config", str(home / "agent.yaml"), "run"]
        argv += ["--root", str(home), "--log-level", self.agent_log_level]
        proc = subprocess.Popen(
            [*self.agent_prefix, *argv],
            env={**self.env, "HOME": str(home), **self.agent_env},
            stdout=subprocess.DEVNULL,
            stderr=(home / "agent.log").open("ab"),
        )
        self.procs.append(proc)
        self.agents[host] = proc

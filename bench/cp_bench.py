"""Control plane at fleet scale: one real ``stanch-cp`` against thousands of simulated agents.

Run: ``make bench-fleet`` (or ``.venv/bin/python bench/cp_bench.py --help``). Each run starts a
fresh control plane (``python -m controlplane.server``, production timings, plaintext unless
``--tls``, SQLite unless ``--db postgresql://...``) and a fresh simulated fleet
(``bench/fleet_sim.py``: one TCP connection and one ``Fleet.Connect`` stream per agent, 10 s
heartbeats), then measures in order:

a. **connect**: seconds until every agent's first ack (the control plane registered its stream),
   then the control plane's CPU (``psutil`` ``cpu_times`` over a steady ``--window``) and RSS;
b. **rollout**: a signed bundle published, ``StartRollout`` in 4 waves with zero bake, seconds
   until the control plane counts every host applied and the rollout completed (its status is
   read once a second, ``--status-every``, then every 50 ms once the simulator has sent every
   ``ApplyResult``: each read costs the control plane a full agents read);
c. **ingest**: every agent keeps 4 batches of ``--report-batch`` (10) reports in flight (closed
   loop); reports acked per second over ``--ingest-window`` (acked = durable: the control
   plane acks after its commit);
d. **storm**: SIGTERM, start again on the same database and port, seconds until every agent is
   back (agents reconnect with the real agent's jittered backoff, 1 s doubling to 60 s).

Prints one line per run and per figure, then the medians. ``--profile DIR`` samples the control
plane with py-spy during each phase and prints the project frames where time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet_sim import Fleet, raise_fd_limit  # noqa: E402
from fleet_sim_agent import SATURATE  # noqa: E402
from fleet_sim_cp import ControlPlaneProcess  # noqa: E402

WAVES = ("1%", "10%", "50%", "100%")


@dataclass(frozen=True)
class RunResult:
    connect_s: float
    connect_cpu_pct: float
    cpu_pct: float
    rss_mib: float
    rollout_s: float
    rollout_cpu_pct: float
    ingest_per_s: float
    ingest_cpu_pct: float
    stop_s: float
    restart_s: float
    storm_s: float
    load_before: float


class Profiler:
    """py-spy sampling one process into ``out`` (raw collapsed stacks) until ``stop``."""

    def __init__(self, pid: int, out: Path | None) -> None:
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        if out is not None:
            spy = Path(sys.executable).with_name("py-spy")
            self.proc = subprocess.Popen(
                [str(spy), "record", "-p", str(pid), "-r", "50", "-f", "raw", "-o", str(out)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(2)  # SIGINT: py-spy writes what it sampled, then exits
            self.proc.wait(30)


def hot_spots(raw: Path, top: int = 12) -> list[tuple[str, float]]:
    """The ``top`` functions by share of samples they were on the stack (inclusive), limited to
    this project's frames and grpc/asyncio/sqlite leaves, from py-spy's collapsed output."""
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = {f.split(" (")[0] + " " + _where(f) for f in stack.split(";")}
        for frame in frames:
            if frame.startswith(("main ", "<module> ")):
                continue  # the process's entry point: on every stack
            if "controlplane/" in frame or "stanch/" in frame or "sqlite" in frame.lower():
                inclusive[frame] += n
    return [(f, 100.0 * n / max(total, 1)) for f, n in inclusive.most_common(top)]


def _where(frame: str) -> str:
    inside = frame.rpartition("(")[2].rstrip(")")
    return inside.rsplit(":", 1)[0]


def wait_rollout(
    cp: ControlPlaneProcess,
    fleet: Fleet,
    rollout_id: str,
    agents: int,
    timeout: float,
    status_every: float,
) -> list[tuple[float, int, int]]:
    """Wait until the rollout completed with every host applied; return its timeline: (seconds,
    wave index, hosts applied) each time a status read saw the wave or the applied count move.

    Observing costs the control plane: each ``GetRollout`` reads every agent and every
    rollout-host row on its one storage thread (~0.1 s at 10,000 agents), the thread the
    rollout itself needs. So the status is read every ``status_every`` seconds while the
    simulator (free to ask: shared-memory counters) says some agents have not applied yet, and
    every 50 ms once they all have, until the control plane says completed."""
    started = time.monotonic()
    applied0 = fleet.totals()["applied"]
    timeline: list[tuple[float, int, int]] = []
    last_read = float("-inf")
    while time.monotonic() - started < timeout:
        all_sent = fleet.totals()["applied"] - applied0 >= agents
        if all_sent or time.monotonic() - last_read >= status_every:
            last_read = time.monotonic()
            status = cp.rollout(rollout_id)
            applied = sum(w.applied for w in status.waves)
            if not timeline or timeline[-1][1:] != (status.wave, applied):
                timeline.append((round(time.monotonic() - started, 2), status.wave, applied))
            if status.state in ("rolled_back", "aborted"):
                raise AssertionError(f"cp_bench: rollout {status.state}: {status.reason}")
            if status.state == "completed" and applied >= agents:
                return timeline
        time.sleep(0.05 if all_sent or status_every <= 0.05 else 0.02)
    raise AssertionError(f"cp_bench: rollout not done after {timeout:g}s: {cp.rollout(rollout_id)}")


def cpu_seconds(*procs: psutil.Process) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


class CpuMeter:
    """CPU% of some processes between ``__init__`` and ``percent()`` (100% = one core)."""

    def __init__(self, *procs: psutil.Process) -> None:
        self.procs = procs
        self.cpu, self.wall = cpu_seconds(*procs), time.monotonic()

    def percent(self) -> float:
        return 100.0 * (cpu_seconds(*self.procs) - self.cpu) / (time.monotonic() - self.wall)


def one_run(args: argparse.Namespace, index: int, work: Path) -> RunResult:
    with fresh_database(args.db) as db:
        return _measure(args, index, work, db)


@contextlib.contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """SQLite: "" (a new file per run). PostgreSQL: a new schema per run, dropped afterwards."""
    if not url:
        yield ""
        return
    import psycopg

    schema = f"cp_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        joiner = "&" if "?" in url else "?"
        yield f"{url}{joiner}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _measure(args: argparse.Namespace, index: int, work: Path, db: str) -> RunResult:
    n: int = args.agents
    cp = ControlPlaneProcess(work / f"run{index}", db=db, flags=tuple(args.cp_flag), tls=args.tls)
    cp.start()
    prof_dir = Path(args.profile) if args.profile else None
    fleet = Fleet(
        cp.addr,
        n,
        args.processes,
        agents_per_channel=args.agents_per_channel,
        connect_concurrency=args.connect_concurrency,
        heartbeat=10.0,
        report_batch=args.report_batch,
        backoff_initial=1.0,
        backoff_max=60.0,
        pki_dir=str(cp.pki_dir) if args.tls else "",
    )
    try:
        proc = psutil.Process(cp.pid)
        load = os.getloadavg()[0]
        spy = Profiler(cp.pid, prof_dir / f"connect-run{index}.txt" if prof_dir else None)
        fleet.start()
        sims = [psutil.Process(pid) for pid in fleet.pids()]
        cp_meter, sim_meter = CpuMeter(proc), CpuMeter(*sims)
        connect_s = fleet.wait(lambda t: t["connected"] >= n, args.timeout, "every agent connected")
        connect_cpu, sim_cpu = cp_meter.percent(), sim_meter.percent()
        _say(
            index,
            "connect",
            f"{connect_s:.1f} s for {n} agents (cp cpu {connect_cpu:.0f}%, simulator cpu "
            f"{sim_cpu:.0f}%, load average {load:.1f} before)",
        )
        time.sleep(5)  # let the join burst's stragglers (presence flush, first beats) settle
        cp_meter, sim_meter = CpuMeter(proc), CpuMeter(*sims)
        time.sleep(args.window)
        cpu_pct, steady_sim = cp_meter.percent(), sim_meter.percent()
        rss_mib = proc.memory_info().rss / 2**20
        spy.stop()
        held = cp.connected_agents()
        _say(
            index,
            "steady",
            f"cp cpu {cpu_pct:.1f}% rss {rss_mib:.0f} MiB, cp says {held} connected "
            f"(simulator cpu {steady_sim:.0f}%)",
        )

        digest = cp.publish()
        spy = Profiler(cp.pid, prof_dir / f"rollout-run{index}.txt" if prof_dir else None)
        cp_meter = CpuMeter(proc)
        started = time.monotonic()
        rollout = cp.start_rollout(digest, WAVES, bake=0.0)
        timeline = wait_rollout(cp, fleet, rollout.id, n, args.timeout, args.status_every)
        rollout_s = time.monotonic() - started
        rollout_cpu = cp_meter.percent()
        spy.stop()
        marks = [t for i, t in enumerate(timeline) if i == 0 or t[1] != timeline[i - 1][1]]
        _say(
            index,
            "rollout",
            f"{rollout_s:.2f} s (cp cpu {rollout_cpu:.0f}%); (s, wave, applied) as each wave "
            f"began: {marks + [timeline[-1]]}",
        )

        fleet.set_report_rate(SATURATE)
        time.sleep(args.ingest_warmup)
        spy = Profiler(cp.pid, prof_dir / f"ingest-run{index}.txt" if prof_dir else None)
        a0, w0 = fleet.totals()["reports_acked"], time.monotonic()
        cp_meter, sim_meter = CpuMeter(proc), CpuMeter(*sims)
        time.sleep(args.ingest_window)
        ingest = (fleet.totals()["reports_acked"] - a0) / (time.monotonic() - w0)
        ingest_cpu, ingest_sim = cp_meter.percent(), sim_meter.percent()
        spy.stop()
        fleet.set_report_rate(0.0)
        fleet.wait(
            lambda t: t["reports_sent"] == t["reports_acked"], args.timeout, "reports drained"
        )
        _say(
            index,
            "ingest",
            f"{ingest:.0f} reports/s acked (cp cpu {ingest_cpu:.0f}%, simulator {ingest_sim:.0f}%)",
        )

        d0 = fleet.totals()["disconnects"]
        started = time.monotonic()
        stop_s = cp.terminate()
        restart_s = cp.start()
        spy = Profiler(cp.pid, prof_dir / f"storm-run{index}.txt" if prof_dir else None)
        proc = psutil.Process(cp.pid)
        cp_meter = CpuMeter(proc)
        marks_at: dict[float, float] = {}

        def back(t: dict[str, int]) -> bool:
            for share in (0.5, 0.9, 0.99):
                if share not in marks_at and t["connected"] >= share * n:
                    marks_at[share] = round(time.monotonic() - started, 1)
            return t["disconnects"] >= d0 + n and t["connected"] >= n

        fleet.wait(back, args.timeout, "every agent back after the restart")
        storm_s = time.monotonic() - started
        spy.stop()
        _say(
            index,
            "storm",
            f"{storm_s:.1f} s from SIGTERM to all {n} back (old process gone after {stop_s:.1f} s, "
            f"new one listening {restart_s:.1f} s later; 50/90/99% back at "
            f"{list(marks_at.values())} s; cp cpu "
            f"{cp_meter.percent():.0f}%)",
        )
        return RunResult(
            connect_s,
            connect_cpu,
            cpu_pct,
            rss_mib,
            rollout_s,
            rollout_cpu,
            ingest,
            ingest_cpu,
            stop_s,
            restart_s,
            storm_s,
            load,
        )
    finally:
        fleet.stop()
        cp.terminate()
        with contextlib.suppress(Exception):
            spy.stop()


def _say(index: int, what: str, text: str) -> None:
    print(f"run {index} {what}: {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Control-plane benchmarks with simulated agents.")
    p.add_argument("--agents", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--processes", type=int, default=2, help="simulator worker processes")
    p.add_argument("--agents-per-channel", type=int, default=1)
    p.add_argument(
        "--connect-concurrency", type=int, default=1000, help="streams opening at once, per process"
    )
    p.add_argument("--window", type=float, default=60.0, help="steady CPU window (s)")
    p.add_argument("--report-batch", type=int, default=10, help="reports per ReportBatch")
    p.add_argument(
        "--status-every",
        type=float,
        default=1.0,
        help="GetRollout every this many seconds during the rollout, and every 50 ms once the "
        "simulator has sent every ApplyResult (before 2026-11-24 11:30: 0.05 throughout)",
    )
    p.add_argument("--ingest-warmup", type=float, default=5.0)
    p.add_argument("--ingest-window", type=float, default=20.0)
    p.add_argument("--timeout", type=float, default=600.0, help="bound on each wait (s)")
    p.add_argument("--db", default="", help="postgresql://... (default: SQLite in the work dir)")
    p.add_argument("--tls", action="store_true", help="mTLS: a host certificate per agent")
    p.add_argument("--cp-flag", action="append", default=[], help="extra stanch-cp flag")
    p.add_argument("--profile", metavar="DIR", help="py-spy the control plane in each phase")
    p.add_argument("--work", help="work directory (default: a temporary one)")
    p.add_argument("--json", metavar="FILE", help="also write every run's figures here")
    args = p.parse_args(argv)
    raise_fd_limit(65536)
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cp-bench-") as tmp:
        work = Path(args.work or tmp)
        results = [one_run(args, i, work) for i in range(args.runs)]
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))
    print(f"\n{args.agents} agents, {args.runs} run(s), medians:")
    for f in fields(RunResult):
        values = [getattr(r, f.name) for r in results]
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"- {f.name}: {statistics.median(values):.2f} (runs: {runs})")
    if args.profile:
        for raw in sorted(Path(args.profile).glob("*.txt")):
            print(f"\nprofile {raw.name} (share of samples on the stack):")
            for frame, share in hot_spots(raw):
                print(f"  {share:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Agent benchmarks: idle footprint with 100 checks, and detection-to-remediation latency.

Run: ``make bench`` (or ``.venv/bin/python bench/agent_bench.py --help``). Prints medians of
repeated runs as Markdown lines ready for BENCHMARKS.md. Every figure comes from a real agent
process (``python -m agent.cli run``) and real fault injection (SIGKILL of a real service).

- footprint: N policies with 100 checks in all (process, disk, file, port, memory, load), at a
  10 s interval (the default) and at 1 s; RSS and CPU of the agent after warm-up.
- latency: a service is killed; we measure from the kill to the intent row the agent commits
  before running the restart step (``executions.started_at``), for a polled 1 s process check and
  for a watched (pidfd) process with a 30 s poll interval.
- soak: RSS sampled over a long run with a remediation every few seconds, to show memory stays
  flat (``--soak SECONDS``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.demo import SERVICE as SERVICE_SOURCE  # noqa: E402
from agent.journal import Journal  # noqa: E402

SERVICE = Path(tempfile.gettempdir()) / f"stanch-bench-service-{os.getpid()}.py"
SERVICE.write_text(SERVICE_SOURCE)


def agent_cmd(state: Path, policies: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "agent.cli",
        "--state-dir",
        str(state),
        "run",
        "--policies",
        str(policies),
        "--log-level",
        "warning",
    ]


def write_footprint_policies(directory: Path, interval: str, port: int, pidfile: Path) -> int:
    checks = 0
    for i in range(20):
        (directory / f"p{i:02d}.yaml").write_text(f"""\
apiVersion: stanch.dev/v1
kind: Policy
metadata: {{name: bench-{i:02d}}}
spec:
  checks:
    proc: {{type: process, pidfile: {pidfile}, interval: {interval}}}
    byname: {{type: process, name: python3-nonexistent-{i}, interval: {interval}}}
    disk: {{type: disk, path: /, interval: {interval}}}
    file: {{type: file, path: {pidfile}, interval: {interval}}}
    port: {{type: port, port: {port}, interval: {interval}}}
  rule:
    when: {{check: disk, metric: used_percent, op: ">", value: 101}}
  remediation:
    steps: [{{name: noop, run: ["true"]}}]
""")
        checks += 5
    return checks


def start_service(pidfile: Path) -> int:
    subprocess.run([sys.executable, str(SERVICE), str(pidfile)], check=True)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            pid = int(pidfile.read_text())
            if psutil.pid_exists(pid):
                return pid
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.02)
    raise RuntimeError("bench service did not start")


def footprint(interval: str, warmup: float, window: float) -> tuple[float, float]:
    """Returns (RSS MiB, CPU % of one core) of an agent running 100 checks."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "policies").mkdir()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        pidfile = work / "svc.pid"
        svc = start_service(pidfile)
        write_footprint_policies(work / "policies", interval, listener.getsockname()[1], pidfile)
        proc = subprocess.Popen(
            agent_cmd(work / "state", work / "policies"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            p = psutil.Process(proc.pid)
            time.sleep(warmup)
            t0 = p.cpu_times()
            time.sleep(window)
            t1 = p.cpu_times()
            rss = p.memory_info().rss / 2**20
            cpu = 100.0 * ((t1.user - t0.user) + (t1.system - t0.system)) / window
            return rss, cpu
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            os.kill(svc, signal.SIGKILL)
            listener.close()


LATENCY_POLICY = """\
apiVersion: stanch.dev/v1
kind: Policy
metadata: {{name: restart-service}}
spec:
  checks:
    svc: {{type: process, pidfile: {pidfile}, interval: {interval}, watch: {watch}}}
  rule:
    when: {{check: svc, metric: count, op: "<", value: 1}}
  remediation:
    steps: [{{name: start, run: [{python}, {service}, {pidfile}], timeout: 10s}}]
  verify: {{settle: 0s, timeout: 5s, interval: 0.1s}}
  guardrails: {{cooldown: 0s, budget: {{max: 100000, per: 1h}}, breaker: {{after: 1000}}}}
"""


def write_restart_policy(work: Path, interval: str, watch: bool) -> Path:
    """The restart-the-service policy under ``work/policies``; returns the service's pidfile."""
    pidfile = work / "svc.pid"
    (work / "policies" / "p.yaml").write_text(
        LATENCY_POLICY.format(
            pidfile=pidfile,
            interval=interval,
            watch=str(watch).lower(),
            python=sys.executable,
            service=SERVICE,
        )
    )
    return pidfile


def latency(watch: bool, interval: str, runs: int) -> list[float]:
    """Seconds from SIGKILL of the service to the agent's committed intent, per run."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "policies").mkdir()
        pidfile = write_restart_policy(work, interval, watch)
        start_service(pidfile)
        proc = subprocess.Popen(
            agent_cmd(work / "state", work / "policies"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            db = work / "state" / "state.db"
            _wait(lambda: db.exists() and bool(Journal(db).policy_states()), 15)
            journal = Journal(db)
            for _ in range(runs):
                time.sleep(1.5 if watch else 2.5)  # let the agent see (and watch) the new pid
                pid = int(pidfile.read_text())
                before = len(journal.executions(limit=100000))
                killed = time.time()
                os.kill(pid, signal.SIGKILL)
                _wait(lambda n=before: len(journal.executions(limit=100000)) > n, 15)
                run = journal.executions(limit=1)[0]
                out.append(run.started_at - killed)
                _wait(lambda: journal.executions(limit=1)[0].status != "running", 15)
                _wait(lambda old=pid: _alive_pidfile(pidfile, old), 10)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            kill_pidfile(pidfile)
    return out


def soak(seconds: float) -> list[tuple[float, float]]:
    """RSS samples (elapsed s, MiB) while a service is killed and restarted every 3 s."""
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "policies").mkdir()
        pidfile = write_restart_policy(work, "1s", True)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        write_footprint_policies(work / "policies", "1s", listener.getsockname()[1], pidfile)
        start_service(pidfile)
        proc = subprocess.Popen(
            agent_cmd(work / "state", work / "policies"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        p = psutil.Process(proc.pid)
        start = time.monotonic()
        try:
            while time.monotonic() - start < seconds:
                time.sleep(3)
                kill_pidfile(pidfile)
                samples.append((time.monotonic() - start, p.memory_info().rss / 2**20))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            listener.close()
            kill_pidfile(pidfile)
    return samples


def kill_pidfile(pidfile: Path) -> None:
    with contextlib.suppress(ProcessLookupError, ValueError, FileNotFoundError):
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


def _alive_pidfile(pidfile: Path, old: int) -> bool:
    try:
        pid = int(pidfile.read_text())
    except (FileNotFoundError, ValueError):
        return False
    return pid != old and psutil.pid_exists(pid)


def _wait(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise TimeoutError("benchmark step timed out")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="footprint runs per interval")
    ap.add_argument("--window", type=float, default=30.0, help="CPU measuring window, s")
    ap.add_argument("--latency-runs", type=int, default=15)
    ap.add_argument("--soak", type=float, default=0.0, help="also run a soak of this many s")
    ap.add_argument("--only", choices=("footprint", "latency", "soak"), help="run one part")
    args = ap.parse_args()
    run = {args.only} if args.only else {"footprint", "latency", "soak"}
    print(
        f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"kernel {os.uname().release}, python {sys.version.split()[0]}"
    )
    for interval in ("10s", "1s") if "footprint" in run else ():
        runs = [footprint(interval, 10.0, args.window) for _ in range(args.repeats)]
        rss = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        print(
            f"- footprint, 100 checks @ {interval}: RSS median {rss:.1f} MiB, CPU median "
            f"{cpu:.2f} % of one core (runs: "
            + ", ".join(f"{r:.1f} MiB/{c:.2f} %" for r, c in runs)
            + ")"
        )
    for watch, interval in ((False, "1s"), (True, "30s")) if "latency" in run else ():
        lat = latency(watch, interval, args.latency_runs)
        label = "watched process (pidfd), 30 s poll" if watch else "polled process check @ 1 s"
        print(
            f"- detection->remediation start, {label}: p50 {1000 * statistics.median(lat):.0f}"
            f" ms, p90 {1000 * pct(lat, 0.9):.0f} ms, max {1000 * max(lat):.0f} ms "
            f"(n={len(lat)})"
        )
    if args.soak and "soak" in run:
        samples = soak(args.soak)
        first = statistics.median(s[1] for s in samples[: max(1, len(samples) // 10)])
        last = statistics.median(s[1] for s in samples[-max(1, len(samples) // 10) :])
        curve = ", ".join(
            f"{samples[min(len(samples) - 1, int(q * len(samples)))][0]:.0f}s "
            f"{samples[min(len(samples) - 1, int(q * len(samples)))][1]:.1f}"
            for q in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
        )
        print(f"- soak RSS curve (elapsed, MiB): {curve}")
        print(
            f"- soak {args.soak:.0f} s, 101 checks @ 1 s + a restart every 3 s: RSS first "
            f"10 % median {first:.1f} MiB, last 10 % median {last:.1f} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

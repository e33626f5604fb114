"""Console page load with a large fleet: the Fleet page, 10,000 agents, target < 300 ms.

Run: ``.venv/bin/python bench/console_bench.py`` (``--help`` for sizes). Prints the median and
p95 of ``--runs`` sequential page loads as a Markdown line for BENCHMARKS.md.

Where the agents come from (``--source``):

- ``sim`` (default): a real control plane (gRPC server on loopback, SQLite) in this process, and
  ``--agents`` simulated agents from ``bench/fleet_sim.py`` connected to it over the real
  protocol, heartbeating while the pages load (the page is measured under that load);
- ``storage``: the same number of agent rows written through the storage API
  (``upsert_agent``), nothing connected: the render cost alone.

Where the pages read from (``--reads``):

- ``console`` (default, as ``stanch-cp`` runs it): the console's own read-only storage
  instance on its own thread (``controlplane.storage.reader``);
- ``plane``: the control plane's one storage thread, behind the presence flush and the report
  commits (how the console read before it had its own; kept for before/after figures).

What one sample is: an HTTP GET of the page over loopback from a client thread (a logged-in
session cookie, as a browser sends it) until the last byte arrived: the server's time to read
the fleet through ``fleet_view``, render the page (100 rows, counts over every agent) and send
it. A second figure is the same page filtered by a label selector.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent.clock import SystemClock  # noqa: E402
from controlplane.assignments import make_signer  # noqa: E402
from controlplane.bundle_fixtures import KeyRing  # noqa: E402
from controlplane.console.serve import ConsoleServer  # noqa: E402
from controlplane.plane import ControlPlane, Settings  # noqa: E402
from controlplane.server import Server  # noqa: E402
from controlplane.storage.base import AgentRecord  # noqa: E402
from controlplane.storage.sqlite import SqliteStorage  # noqa: E402

TARGET_MS = 300.0
ROLES = ("web", "db", "cache")


def sample(client: httpx.Client, path: str, runs: int) -> list[float]:
    client.get(path).raise_for_status()  # warm: templates compiled, caches filled
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        response = client.get(path)
        response.raise_for_status()
        _ = response.content
        times.append((time.perf_counter() - started) * 1000)
    return times


def login(base: str, token: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=30)
    form = client.get("/login")
    nonce = re.search(r'name="login_csrf" value="([^"]*)"', form.text)
    assert nonce, "no login form"
    done = client.post("/login", data={"token": token, "login_csrf": nonce.group(1)})
    assert done.status_code == 303, f"login failed: {done.status_code}"
    return client


async def fill_storage(plane: ControlPlane, agents: int) -> None:
    now = time.time()
    for i in range(agents):
        record = AgentRecord(
            host_id=f"sim-{i:06d}",
            labels={"env": "prod", "zone": f"z{i % 4}", "role": ROLES[i % 3]},
            agent_version="sim-1",
            last_seen=now,
            connected=True,
            health={"policies": 3, "firing": 0},
        )
        await plane.store.run(plane.db.upsert_agent, record)


async def bench(args: argparse.Namespace, work: Path) -> int:
    settings = Settings(presence_interval=5.0, holder="bench")
    plane = ControlPlane(
        SqliteStorage(work / "cp.db"),
        KeyRing.generate(1).trust(1),
        make_signer(Ed25519PrivateKey.generate()),
        SystemClock(),
        settings,
    )
    server = Server(plane, "127.0.0.1:0")
    port = await server.start()
    console = ConsoleServer(plane, "127.0.0.1", 0)
    await console.start()
    if args.reads == "plane":
        console.console.reads = None  # pages read through plane.store (the reader stays open)
    elif console.console.reads is None:
        raise SystemExit("console_bench: the console opened no read-only reader")
    loop = asyncio.get_running_loop()
    fleet = None
    try:
        if args.source == "sim":
            from fleet_sim import Fleet

            fleet = Fleet(f"127.0.0.1:{port}", args.agents, args.processes, heartbeat=10.0)
            fleet.start()
            # Every agent has said Hello at least once (its row is stored); on a busy machine
            # the simulator's streams come and go, so "connected now" is reported, not awaited.
            started = time.monotonic()
            while len(await plane.store.run(plane.db.agents)) < args.agents:
                if time.monotonic() - started > args.connect_timeout:
                    stored = len(await plane.store.run(plane.db.agents))
                    raise SystemExit(
                        f"console_bench: only {stored} of {args.agents} simulated agents said "
                        f"Hello within {args.connect_timeout:g}s; raise --connect-timeout"
                    )
                await asyncio.sleep(2)
            took = time.monotonic() - started
            await asyncio.sleep(settings.presence_interval + 1)  # heartbeats flushed once
            print(
                f"{args.agents} simulated agents said Hello in {took:.1f}s; "
                f"{len(plane.connections)} connected now",
                flush=True,
            )
        else:
            await fill_storage(plane, args.agents)
        stored = len(await plane.store.run(plane.db.agents))
        token, _ = await plane.auth.create("bench", "viewer", 0.0, "bench")
        if args.gc_freeze:
            gc.collect()
            gc.freeze()  # the fleet's long-lived objects leave the collector's generations

        def measure() -> tuple[list[float], list[float], int]:
            client = login(console.url.rstrip("/"), token)
            try:
                size = len(client.get("/").content)
                return (
                    sample(client, "/", args.runs),
                    sample(client, "/?selector=role%3Ddb&page=3", args.runs),
                    size,
                )
            finally:
                client.close()

        whole, filtered, size = await loop.run_in_executor(None, measure)
    finally:
        if fleet is not None:
            fleet.stop()
        await console.stop()
        await server.stop(0.5)
    for label, times in (("fleet page", whole), ("fleet page, role=db, page 3", filtered)):
        median = statistics.median(times)
        p95 = sorted(times)[max(0, int(len(times) * 0.95) - 1)]
        verdict = "meets" if median < TARGET_MS else "MISSES"
        print(
            f"| console {label} | {stored} agents ({args.source}, reads: {args.reads}) | "
            f"median {median:.0f} ms, "
            f"p95 {p95:.0f} ms over {len(times)} loads | {verdict} < {TARGET_MS:.0f} ms |"
        )
    print(f"(page size {size / 1024:.0f} KiB)")
    return 0 if statistics.median(whole) < TARGET_MS else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--agents", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--source", choices=("sim", "storage"), default="sim")
    p.add_argument("--processes", type=int, default=2, help="simulator worker processes")
    p.add_argument(
        "--reads",
        choices=("console", "plane"),
        default="console",
        help="pages read through the console's read-only storage thread (default) or the "
        "plane's one storage thread (the old way, for comparison)",
    )
    p.add_argument("--connect-timeout", type=float, default=600.0)
    p.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() once the fleet is connected, before measuring (diagnostic: how much "
        "of the tail is full garbage collections walking the fleet's objects)",
    )
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="console-bench-") as work:
        return asyncio.run(bench(args, Path(work)))


if __name__ == "__main__":
    sys.exit(main())

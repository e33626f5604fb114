"""Fleet simulator: thousands of simulated agents on the real gRPC protocol, over several processes.

Run: ``.venv/bin/python bench/fleet_sim.py --addr 127.0.0.1:7443 --agents 10000`` against a
control plane started with ``--insecure`` (``bench/cp_bench.py`` starts one for you). It prints
the fleet's counters every few seconds until ``--duration`` ends.

:class:`Fleet` splits the agents over ``processes`` worker processes (``spawn``: grpc must not be
forked), each an asyncio loop running a :class:`fleet_sim_agent.SimProcess`. Each worker writes its
counters into a shared array (one writer, so no lock) and reads the report rate and the stop flag
from shared values; the parent only reads and sums. Host ids are ``sim-000000`` onwards, with
labels ``env=prod``, ``zone=z0..z3``, ``role=web|db|cache`` so selectors and waves have something
to select.

Transport: plaintext (a ``--insecure`` control plane) by default; with ``--pki-dir`` (the
control plane's ``opsctl pki init`` directory, CA key included) each agent gets its own P-256 key
and host certificate signed on the spot, as enrollment would give it, and speaks mTLS.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import multiprocessing.sharedctypes
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet_sim_agent import COUNTERS, Control, SimConfig, SimProcess  # noqa: E402

FD_HEADROOM = 512


def raise_fd_limit(wanted: int) -> int:
    """Lift the soft open-files limit toward ``wanted`` (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def _worker(
    config: dict[str, Any],
    counters: Any,
    rate: Any,
    stop: Any,
) -> None:
    sim = SimConfig(**{**config, "roles": tuple(config["roles"])})
    raise_fd_limit(sim.agents * 2 + FD_HEADROOM)
    asyncio.run(_serve(sim, counters, rate, stop))


async def _serve(sim: SimConfig, counters: Any, rate: Any, stop: Any) -> None:
    control = Control(report_rate=rate.value)
    proc = SimProcess(sim, counters, control)

    async def follow() -> None:
        while not control.stop:
            control.report_rate = rate.value
            control.stop = bool(stop.value)
            await asyncio.sleep(0.1)

    follower = asyncio.create_task(follow())
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGUSR1, lambda: print(f"fleet_sim {sim.first}: {proc.phases()}", flush=True)
    )
    try:
        await proc.run()
    finally:
        follower.cancel()


class Fleet:
    """``agents`` simulated agents in ``processes`` workers; ``start``, watch, ``stop``."""

    def __init__(
        self, address: str, agents: int, processes: int = 2, report_rate: float = 0.0, **kw: Any
    ) -> None:
        self.address = address
        self.agents = agents
        self.processes = max(1, min(processes, agents))
        self._ctx = mp.get_context("spawn")
        self._counters: list[Any] = []
        self._rates: list[Any] = []
        self._stop = self._ctx.Value("b", 0, lock=False)
        self._procs: list[mp.process.BaseProcess] = []
        self._kw = kw
        self._initial_rate = report_rate

    def configs(self) -> list[SimConfig]:
        base = SimConfig(self.address, 0, **self._kw)
        per, extra = divmod(self.agents, self.processes)
        configs, first = [], 0
        for i in range(self.processes):
            count = per + (1 if i < extra else 0)
            configs.append(replace(base, agents=count, first=first))
            first += count
        return configs

    def start(self) -> Fleet:
        for config in self.configs():
            counters = self._ctx.Array("q", len(COUNTERS), lock=False)
            rate = self._ctx.Value("d", self._share(self._initial_rate), lock=False)
            proc = self._ctx.Process(
                target=_worker,
                args=(asdict(config), counters, rate, self._stop),
                name=f"fleet-sim-{config.first}",
                daemon=True,
            )
            proc.start()
            self._counters.append(counters)
            self._rates.append(rate)
            self._procs.append(proc)
        return self

    def _share(self, total: float) -> float:
        return total if total < 0 else total / self.processes

    def set_report_rate(self, total: float) -> None:
        """Reports per second across the fleet (``fleet_sim_agent.SATURATE``: as fast as acked)."""
        for rate in self._rates:
            rate.value = self._share(total)

    def totals(self) -> dict[str, int]:
        sums = dict.fromkeys(COUNTERS, 0)
        for counters in self._counters:
            for name, value in zip(COUNTERS, counters[:], strict=True):
                sums[name] += value
        return sums

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def alive(self) -> bool:
        return all(p.is_alive() for p in self._procs)

    def wait(self, predicate: Callable[[dict[str, int]], bool], timeout: float, what: str) -> float:
        """Seconds until ``predicate(totals)`` holds; AssertionError after ``timeout``."""
        started = time.monotonic()
        while not predicate(self.totals()):
            if time.monotonic() - started > timeout:
                raise AssertionError(
                    f"fleet_sim: timed out after {timeout:g}s waiting for {what}; "
                    f"counters {self.totals()}"
                )
            if not self.alive():
                raise AssertionError(f"fleet_sim: a worker process died waiting for {what}")
            time.sleep(0.02)
        return time.monotonic() - started

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.value = 1
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(2)

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--addr", default="127.0.0.1:7443")
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--agents-per-channel", type=int, default=1)
    p.add_argument("--heartbeat", type=float, default=10.0)
    p.add_argument("--report-rate", type=float, default=0.0, help="reports/s, -1 = saturate")
    p.add_argument("--report-batch", type=int, default=10)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--no-fetch", action="store_true", help="do not download bundles")
    p.add_argument("--pki-dir", default="", help="mTLS: sign a host certificate per agent here")
    args = p.parse_args(argv)
    fleet = Fleet(
        args.addr,
        args.agents,
        args.processes,
        args.report_rate,
        agents_per_channel=args.agents_per_channel,
        heartbeat=args.heartbeat,
        report_batch=args.report_batch,
        fetch_bundles=not args.no_fetch,
        pki_dir=args.pki_dir,
    )
    started = time.monotonic()
    with fleet:
        while time.monotonic() - started < args.duration:
            time.sleep(min(5.0, args.duration))
            print(f"{time.monotonic() - started:6.1f}s {fleet.totals()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

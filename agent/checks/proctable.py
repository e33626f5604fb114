"""One scan of the process table, shared by every process check of one tick.

Walking ``/proc`` costs a few milliseconds per hundred processes; ten process checks that each
walked it would cost ten times that, and would each see a slightly different table. The runner
holds one ``ProcessTable`` (it is part of ``CheckEnv``); every check calls ``snapshot()``, and the
table rescans only when its cached snapshot is older than ``max_age``.

``psutil.Process.cpu_percent()`` measures CPU time between two calls on the same object, so the
table keeps the ``Process`` objects from one scan to the next, keyed by ``(pid, create_time)`` so a
recycled pid never inherits another process's history. Objects of processes that are gone are
dropped at each scan, which keeps memory bounded by the size of the live table.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

_ATTRS = ["pid", "name", "cmdline", "memory_info", "num_fds", "create_time", "status"]
_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied)


@dataclass(frozen=True)
class ProcInfo:
    """One process as seen by one scan. Fields psutil could not read are empty or zero."""

    pid: int
    name: str
    cmdline: tuple[str, ...]
    rss: int
    cpu_percent: float
    """Percent of one CPU since the previous scan (0.0 at the first scan that saw it)."""
    num_fds: int
    create_time: float
    status: str

    @property
    def zombie(self) -> bool:
        return self.status == psutil.STATUS_ZOMBIE


class ProcessTable:
    """A cached, thread-safe view of the process table.

    ``scans`` counts real walks of the table so tests (and the runner's own metrics) can see that
    one scan served many checks. ``invalidate()`` forces the next ``snapshot()`` to rescan, for
    example after a remediation restarted a service and verification must see the new process.
    """

    def __init__(
        self, clock_monotonic: Callable[[], float] = time.monotonic, max_age: float = 0.5
    ) -> None:
        self._clock = clock_monotonic
        self.max_age = max_age
        self.scans = 0
        self._lock = threading.Lock()
        self._taken: float | None = None
        self._snapshot: list[ProcInfo] = []
        self._by_pid: dict[int, ProcInfo] = {}
        self._procs: dict[tuple[int, float], psutil.Process] = {}

    def snapshot(self) -> list[ProcInfo]:
        """The current table, rescanned if the cached one is older than ``max_age``."""
        with self._lock:
            now = self._clock()
            if self._taken is None or now - self._taken >= self.max_age:
                self._scan()
                self._taken = self._clock()
            return self._snapshot

    @property
    def tracked(self) -> int:
        """How many ``psutil.Process`` objects are kept between scans (bounded by live ones)."""
        return len(self._procs)

    def invalidate(self) -> None:
        with self._lock:
            self._taken = None

    def lookup(self, pid: int) -> ProcInfo | None:
        """The process with ``pid``: from the snapshot, or read alone when it is newer than the
        snapshot (a pidfile written a moment ago must not read as a stale one)."""
        self.snapshot()
        with self._lock:
            info = self._by_pid.get(pid)
            if info is not None:
                return info
            try:
                proc = psutil.Process(pid)
                values = proc.as_dict(attrs=_ATTRS, ad_value=None)
            except _GONE:
                return None
            return self._info(proc, values)

    def _scan(self) -> None:
        self.scans += 1
        seen: dict[tuple[int, float], psutil.Process] = {}
        infos: list[ProcInfo] = []
        for proc in psutil.process_iter(attrs=_ATTRS, ad_value=None):
            values = proc.info
            key = (proc.pid, values.get("create_time") or 0.0)
            known = self._procs.get(key, proc)
            seen[key] = known
            infos.append(self._info(known, values))
        # Only live processes carry over: a dead one's cpu history is of no use to anybody.
        self._procs = seen
        self._snapshot = infos
        self._by_pid = {i.pid: i for i in infos}

    @staticmethod
    def _info(proc: psutil.Process, values: dict[str, object]) -> ProcInfo:
        try:
            cpu = proc.cpu_percent(interval=None)
        except _GONE:
            cpu = 0.0
        mem = values.get("memory_info")
        cmdline = values.get("cmdline")
        fds, created = values.get("num_fds"), values.get("create_time")
        return ProcInfo(
            pid=proc.pid,
            name=str(values.get("name") or ""),
            cmdline=tuple(cmdline) if isinstance(cmdline, list) else (),
            rss=int(getattr(mem, "rss", 0) or 0),
            cpu_percent=float(cpu),
            num_fds=fds if isinstance(fds, int) else 0,
            create_time=created if isinstance(created, float) else 0.0,
            status=str(values.get("status") or ""),
        )

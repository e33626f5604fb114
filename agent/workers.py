"""A small pool of daemon threads for check samples that a hung check cannot exhaust.

``concurrent.futures.ThreadPoolExecutor`` has a fixed size and joins its threads at interpreter
exit: four checks stuck in the kernel (``statvfs`` on a dead NFS mount) would starve every other
check, and then block the agent's exit. Here the runner tells the pool how many workers are stuck
(``set_stuck``), and the pool keeps ``size`` workers free on top of those; a stuck worker that
finally returns retires if the pool is above its target. Workers are daemon threads, so a stuck
one never holds up shutdown.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

LOG = logging.getLogger("stanch.agent")
_STOP = object()


class WorkerPool:
    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self._tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._live = 0
        self._stuck = 0
        self._closed = False
        self._serial = 0

    @property
    def live(self) -> int:
        return self._live

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        if self._closed:
            return
        self._tasks.put((fn, args))
        self._grow()

    def set_stuck(self, count: int) -> None:
        """How many tasks are running past their deadline; the pool adds that many workers."""
        with self._lock:
            self._stuck = count
        self._grow()

    def close(self) -> None:
        """Stop idle workers; stuck ones are daemon threads and simply never come back."""
        self._closed = True
        with self._lock:
            live = self._live
        for _ in range(live):
            self._tasks.put(_STOP)

    def _grow(self) -> None:
        with self._lock:
            missing = self.size + self._stuck - self._live
            if missing <= 0 or self._closed:
                return
            self._live += missing
            names = []
            for _ in range(missing):
                self._serial += 1
                names.append(f"{self.name}-{self._serial}")
        for name in names:
            threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        while True:
            task = self._tasks.get()
            if task is _STOP:
                break
            fn, args = task
            try:
                fn(*args)
            except Exception:  # the boundary is inside fn; this is a last resort
                LOG.exception("worker task failed")
            with self._lock:
                if self._live > self.size + self._stuck:
                    self._live -= 1
                    return
        with self._lock:
            self._live -= 1

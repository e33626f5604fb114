"""``StorageThread``: run blocking storage calls from asyncio without blocking the event loop.

One worker thread, so calls are serialised in the order they were made (SQLite has one writer
anyway, and ordering keeps "persist, then ack" simple to reason about). A gRPC stream waiting on
a commit yields the loop to every other stream meanwhile.

The web console reads through a second ``StorageThread`` around a read-only storage instance
(``controlplane.storage.reader``), so a page load does not queue behind the presence flush and
the report group commits on this one.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from controlplane.storage.base import Storage

P = ParamSpec("P")
T = TypeVar("T")


class StorageThread:
    def __init__(self, storage: Storage, name: str = "cp-storage") -> None:
        """``name`` prefixes the worker thread's name (``py-spy`` and tracebacks show it)."""
        self.storage = storage
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.storage.close()

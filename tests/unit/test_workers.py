"""WorkerPool: a stuck task never starves the others, and the pool shrinks back afterwards."""

from __future__ import annotations

import threading
import time

from agent.workers import WorkerPool


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_stuck_tasks_are_compensated_and_workers_retire() -> None:
    pool = WorkerPool(2, "test")
    release = threading.Event()
    done: list[int] = []
    pool.submit(release.wait, 10)
    pool.submit(release.wait, 10)  # both workers now stuck
    pool.set_stuck(2)
    for i in range(5):
        pool.submit(done.append, i)
    assert wait_for(lambda: len(done) == 5), "healthy tasks must run despite two stuck workers"
    assert pool.live == 4
    release.set()
    pool.set_stuck(0)
    assert wait_for(lambda: pool.live == 2), "extra workers retire once the stuck ones return"
    pool.close()
    assert wait_for(lambda: pool.live == 0)


def test_a_raising_task_does_not_kill_the_worker() -> None:
    pool = WorkerPool(1, "test")
    done: list[str] = []

    def boom() -> None:
        raise RuntimeError("boom")

    pool.submit(boom)
    pool.submit(done.append, "after")
    assert wait_for(lambda: done == ["after"])
    pool.close()

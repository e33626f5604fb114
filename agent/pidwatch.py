"""Follow processes event-driven: learn that a pid died within milliseconds, not at the next tick.

A process check runs every ``interval`` seconds; a crashed service would wait up to that long to
be noticed. ``PidWatcher`` closes the gap: the runner hands it the pids its process checks saw, and
``on_exit(pid)`` fires from the watcher's thread as soon as one of them exits, so the runner can
re-check at once.

On Linux 5.3+ each pid is a pidfd (``os.pidfd_open``) that ``poll()`` reports readable when the
process exits -- already when it becomes a zombie, before anybody reaps it, which is the moment
we care about. A self-pipe wakes the thread when the watched set changes. A pidfd also pins the
identity of the process: a pid recycled later by an unrelated process cannot be mistaken for it.

Where pidfds are missing (older kernels, seccomp filters answering ENOSYS or EPERM) or a pidfd
cannot be opened (out of file descriptors), the same thread polls those pids every
``poll_interval`` seconds instead, comparing the process start time to catch recycled pids.
``mode`` says which of the two is the primary mechanism.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
from collections.abc import Callable

import psutil

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.1
_NO_PIDFD = (errno.ENOSYS, errno.EPERM, errno.EACCES, errno.EOPNOTSUPP)


def pidfd_supported() -> bool:
    """Whether this kernel and Python can open pidfds (probed on our own pid)."""
    try:
        fd = os.pidfd_open(os.getpid())
    except AttributeError:
        return False
    except OSError as exc:
        if exc.errno in _NO_PIDFD:
            return False
        raise
    os.close(fd)
    return True


class PidWatcher:
    """Calls ``on_exit(pid)`` once per watched pid when that process exits.

    ``watch``/``unwatch`` may be called from any thread. ``on_exit`` runs in the watcher thread and
    must be quick (queue a re-check, do not run it); an exception in it is logged, not fatal. A pid
    that is already gone when watched is reported promptly. After ``on_exit`` the pid is no longer
    watched; watch it again to follow its successor.
    """

    def __init__(
        self,
        on_exit: Callable[[int], None],
        poll_interval: float = POLL_INTERVAL,
        use_pidfd: bool | None = None,
    ) -> None:
        self.on_exit = on_exit
        self.poll_interval = poll_interval
        use = pidfd_supported() if use_pidfd is None else use_pidfd
        self.mode = "pidfd" if use else "poll"
        self._lock = threading.Lock()
        self._fds: dict[int, int] = {}
        """pid -> pidfd, for pids followed by the kernel."""
        self._polled: dict[int, float | None] = {}
        """pid -> create_time, for pids followed by polling."""
        self._gone: list[int] = []
        self._retired: list[int] = []
        """pidfds of unwatched pids; only the thread closes them, after it stopped polling them."""
        self._closed = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="stanch-pidwatch", daemon=True)
        self._thread.start()

    def watch(self, pid: int) -> None:
        if pid <= 0:
            raise ValueError(f"not a process id: {pid}")
        with self._lock:
            if self._closed:
                raise RuntimeError("PidWatcher is closed")
            if pid in self._fds or pid in self._polled:
                return
            if self.mode == "pidfd":
                try:
                    self._fds[pid] = os.pidfd_open(pid)
                except ProcessLookupError:
                    self._gone.append(pid)
                except OSError as exc:
                    log.warning("pidfd_open(%d) failed (%s); polling it instead", pid, exc)
                    self._start_polling(pid)
            else:
                self._start_polling(pid)
            self._wake()

    def unwatch(self, pid: int) -> None:
        with self._lock:
            fd = self._fds.pop(pid, None)
            if fd is not None:
                self._retired.append(fd)
            self._polled.pop(pid, None)
            self._wake()

    def watched(self) -> set[int]:
        with self._lock:
            return set(self._fds) | set(self._polled)

    def close(self) -> None:
        """Stop the thread and release every descriptor. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._wake()
            self._closed = True
        self._thread.join(timeout=5.0)
        with self._lock:
            for fd in [*self._fds.values(), *self._retired, self._wake_r, self._wake_w]:
                os.close(fd)
            self._fds.clear()
            self._retired.clear()
            self._polled.clear()

    def __enter__(self) -> PidWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the watcher thread -----------------------------------------------------------------

    def _start_polling(self, pid: int) -> None:
        try:
            self._polled[pid] = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            self._gone.append(pid)
        except psutil.AccessDenied:
            self._polled[pid] = None

    def _wake(self) -> None:
        """Interrupt the thread's poll. Called with the lock held, so never after ``close()``
        released the pipe (a write to a recycled descriptor number would hit some other file)."""
        if self._closed:
            return
        with contextlib.suppress(BlockingIOError):  # A full pipe: a wake-up is pending anyway.
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                for fd in self._retired:
                    os.close(fd)
                self._retired.clear()
                by_fd = {fd: pid for pid, fd in self._fds.items()}
                polled = dict(self._polled)
                gone, self._gone = self._gone, []
            self._report(gone)
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            for fd in by_fd:
                poller.register(fd, select.POLLIN)
            timeout_ms = int(self.poll_interval * 1000) if polled else None
            events = poller.poll(timeout_ms)
            # psutil reads /proc; do it before taking the lock so watch() never waits on it.
            dead = _dead(polled)
            exited = []
            with self._lock:
                for fd, _ in events:
                    if fd == self._wake_r:
                        self._drain()
                        continue
                    pid = by_fd[fd]
                    if self._fds.get(pid) == fd:
                        del self._fds[pid]
                        self._retired.append(fd)
                        exited.append(pid)
                for pid in dead:
                    if pid in self._polled and self._polled[pid] == polled[pid]:
                        del self._polled[pid]
                        exited.append(pid)
            self._report(exited)

    def _drain(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _report(self, pids: list[int]) -> None:
        for pid in pids:
            try:
                self.on_exit(pid)
            except Exception:
                log.exception("pid watcher callback failed for pid %d", pid)


def _dead(polled: dict[int, float | None]) -> list[int]:
    """The polled pids whose process exited: gone, a zombie, or the pid now names a process
    started at another time (the pid was recycled)."""
    dead = []
    for pid, created in polled.items():
        try:
            proc = psutil.Process(pid)
            alive = proc.status() != psutil.STATUS_ZOMBIE
            alive = alive and (created is None or proc.create_time() == created)
        except psutil.NoSuchProcess:
            alive = False
        except psutil.AccessDenied:
            alive = True
        if not alive:
            dead.append(pid)
    return dead

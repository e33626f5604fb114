"""The sd_notify protocol, spoken directly: readiness, status, reload, stop and watchdog pings.

systemd hands a ``Type=notify`` service the address of a datagram socket in ``$NOTIFY_SOCKET``
(a path, or an abstract-namespace name written with a leading ``@``). The service sends
newline-separated ``KEY=VALUE`` assignments to it. That is the whole protocol, so the agent speaks
it with one ``socket.sendto`` and needs neither libsystemd nor a Python binding for it.

Lifecycle, as the runner drives it:

- ``READY=1`` (with ``STATUS=``) once crash recovery is done and policies are loaded. Until then
  ``systemctl start`` waits, so "started" means "automating", not "exec'd".
- ``RELOADING=1`` plus ``MONOTONIC_USEC=`` when a SIGHUP reload begins, then ``READY=1`` when it is
  done. ``MONOTONIC_USEC`` is what ``Type=notify-reload`` (systemd 253+) requires to match the
  reload with the request; older systemd ignores it.
- ``STOPPING=1`` when draining starts, so ``systemctl status`` shows "deactivating" while running
  remediations finish.
- ``WATCHDOG=1`` from ``Watchdog.beat()``, which the main loop calls once per iteration.

Why the loop pings and no helper thread does: the point of the watchdog is that systemd restarts
an agent whose main loop is wedged (a deadlock, a journal stuck on a dead disk). A thread pinging
on a timer would keep pinging through exactly that failure unless it asked the loop whether it was
alive, so the loop's own beat is the ping, rate-limited to half of ``$WATCHDOG_USEC`` as
``sd_watchdog_enabled(3)`` recommends. The loop wakes at least once a second, so that rate holds.

Sending never raises: a vanished socket must not take down the thing that fixes hosts. The first
failure is logged, the rest are counted in ``SystemdNotifier.failures``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

from agent.clock import Clock, SystemClock

log = logging.getLogger("stanch.agent.sdnotify")

MAX_STATUS = 512
"""``STATUS=`` is shown by ``systemctl status``; keep it one readable line."""
DEFAULT_STALE = 30.0
"""Without a systemd watchdog, a loop silent this long is unhealthy for ``/healthz``. The loop
normally beats every second; a reload of a large policy directory or a slow fsync can take a few."""


def socket_address(value: str) -> str | bytes | None:
    """The ``sendto`` address for a ``$NOTIFY_SOCKET`` value: a filesystem path as is, ``@name``
    as an abstract-namespace name (a leading NUL byte). Anything else (``vsock:``, a relative
    path) is not a socket this agent can reach; None."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock ``MONOTONIC_USEC=`` is read against."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class SystemdNotifier:
    """Sends sd_notify messages to one socket; a no-op when there is none (not run by systemd,
    or run by ``Type=simple``). ``enabled`` says which."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self.failures = 0
        self.sent = 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        env = os.environ if environ is None else environ
        return cls(socket_address(env.get("NOTIFY_SOCKET", "")))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send one message (``send(READY=1, STATUS="...")``); True when the datagram left."""
        if self.address is None:
            return False
        lines = []
        for key, value in fields.items():
            text = " ".join(str(value).split())  # One line per assignment: no newlines inside.
            lines.append(f"{key}={text}")
        data = ("\n".join(lines) + "\n").encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(data, self.address)
        except OSError as exc:
            self.failures += 1
            if self.failures == 1:
                log.warning(
                    "sd_notify_failed",
                    extra={"event": "sd_notify_failed", "fields": {"error": str(exc)}},
                )
            return False
        self.sent += 1
        return True

    def ready(self, status: str = "") -> bool:
        return self.send(READY=1, STATUS=_status(status)) if status else self.send(READY=1)

    def status(self, text: str) -> bool:
        return self.send(STATUS=_status(text))

    def reloading(self, status: str = "reloading policies") -> bool:
        return self.send(RELOADING=1, MONOTONIC_USEC=monotonic_usec(), STATUS=_status(status))

    def stopping(self, status: str = "draining running remediations") -> bool:
        return self.send(STOPPING=1, STATUS=_status(status))

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)


def _status(text: str) -> str:
    return text if len(text) <= MAX_STATUS else text[: MAX_STATUS - 3] + "..."


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds from ``$WATCHDOG_USEC``, or None when the watchdog is off or meant for another
    process (``$WATCHDOG_PID`` names a different pid, e.g. a wrapper script that exec'd us
    without passing the variables on correctly)."""
    raw = environ.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner:
        try:
            if int(owner) != pid:
                return None
        except ValueError:
            return None
    return usec / 1_000_000


class Watchdog:
    """The main loop's heartbeat: ``beat()`` once per iteration.

    With a systemd watchdog (``interval`` set) a beat pings when half the interval has passed since
    the last ping. Without one it only records the beat. Either way ``age()`` and ``healthy()``
    tell the metrics endpoint's ``/healthz`` whether the loop is turning, which is how a
    Kubernetes liveness probe gets the same guarantee as ``WatchdogSec=``.
    """

    def __init__(
        self,
        notifier: SystemdNotifier | None,
        interval: float | None,
        clock: Clock | None = None,
        stale_after: float | None = None,
    ) -> None:
        self.notifier = notifier
        self.interval = interval
        self.clock = clock or SystemClock()
        default_stale = max(interval / 2, 1.0) if interval else DEFAULT_STALE
        self.stale_after = stale_after if stale_after is not None else default_stale
        self.last_beat: float | None = None
        self.last_ping: float | None = None
        self.pings = 0

    @classmethod
    def from_environ(
        cls,
        notifier: SystemdNotifier,
        environ: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        pid: int | None = None,
    ) -> Watchdog:
        env = os.environ if environ is None else environ
        interval = watchdog_interval(env, os.getpid() if pid is None else pid)
        return cls(notifier if notifier.enabled else None, interval, clock)

    @property
    def enabled(self) -> bool:
        """True when systemd expects pings from this process."""
        return self.notifier is not None and self.interval is not None

    def beat(self) -> bool:
        """Record that the loop turned; ping systemd if a ping is due. True when it pinged."""
        now = self.clock.monotonic()
        self.last_beat = now
        if self.notifier is None or self.interval is None:
            return False
        if self.last_ping is not None and now - self.last_ping < self.interval / 2:
            return False
        if self.notifier.watchdog():
            self.last_ping = now
            self.pings += 1
            return True
        return False

    def age(self) -> float | None:
        """Seconds since the last beat; None before the first one (still starting)."""
        if self.last_beat is None:
            return None
        return self.clock.monotonic() - self.last_beat

    def healthy(self) -> bool:
        """The loop beat within ``stale_after`` seconds."""
        age = self.age()
        return age is not None and age <= self.stale_after

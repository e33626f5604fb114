"""Pure parts of the sd_notify support: addresses, the watchdog environment, the beat schedule."""

from __future__ import annotations

import pytest

from agent.clock import FakeClock
from agent.sdnotify import (
    DEFAULT_STALE,
    SystemdNotifier,
    Watchdog,
    socket_address,
    watchdog_interval,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@stanch/notify", b"\0stanch/notify"),
        ("", None),
        ("@", None),
        ("relative/path", None),
        ("vsock:2:1234", None),
    ],
)
def test_socket_address(value: str, expected: object) -> None:
    assert socket_address(value) == expected


def test_without_notify_socket_everything_is_a_quiet_no_op() -> None:
    notifier = SystemdNotifier.from_environ({})
    assert not notifier.enabled
    assert notifier.ready("up") is False and notifier.watchdog() is False
    assert (notifier.sent, notifier.failures) == (0, 0)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # Meant for another pid.
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_honours_watchdog_pid(
    environ: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(environ, pid=4242) == expected


def test_a_sending_failure_is_counted_not_raised(tmp_path: object) -> None:
    notifier = SystemdNotifier("/nonexistent/stanch-notify.sock")
    assert notifier.ready("up") is False
    assert notifier.watchdog() is False
    assert (notifier.sent, notifier.failures) == (0, 2)


def test_without_a_systemd_watchdog_beats_only_record_health() -> None:
    clock = FakeClock()
    dog = Watchdog(None, None, clock)
    assert not dog.enabled
    assert dog.age() is None and not dog.healthy()  # Not started yet.
    assert dog.beat() is False
    assert dog.healthy() and dog.age() == 0.0
    clock.advance(DEFAULT_STALE)
    assert dog.healthy()
    clock.advance(0.5)
    assert not dog.healthy() and dog.age() == DEFAULT_STALE + 0.5


def test_stale_after_defaults_to_half_the_systemd_interval() -> None:
    assert Watchdog(None, 20.0).stale_after == 10.0
    assert Watchdog(None, 1.0).stale_after == 1.0  # Never below the loop's 1 s wake-up.
    assert Watchdog(None, 20.0, stale_after=3.0).stale_after == 3.0

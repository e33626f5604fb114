"""run_bounded against real processes: deadlines kill the whole group, output stays bounded,
the environment is scrubbed, and a program that starts a daemon returns without killing it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import psutil
import pytest

from agent import subproc
from agent.subproc import SAFE_PATH, run_bounded, scrubbed_env

pytestmark = pytest.mark.skipif(not os.path.exists("/bin/sh"), reason="needs /bin/sh")


def gone(pid: int, within: float = 5.0) -> bool:
    """True once ``pid`` no longer exists (or is a zombie nobody has reaped yet)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def reap() -> Iterator[list[int]]:
    """Pids a test started in the background; killed at the end if still there."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                proc.kill()
        except psutil.NoSuchProcess:
            pass


def test_success_captures_stdout_stderr_and_exit_code() -> None:
    out = run_bounded(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
    assert (out.exit_code, out.stdout, out.stderr) == (3, "out\n", "err\n")
    assert (out.timed_out, out.truncated, out.error) == (False, False, None)
    assert out.argv == ("sh", "-c", "echo out; echo err >&2; exit 3")
    assert not out.ok
    assert run_bounded(["true"], timeout=10).ok
    assert 0 <= out.duration < 10


def test_no_shell_arguments_are_literal() -> None:
    out = run_bounded(["echo", "$HOME", "a;b", "*"], timeout=10)
    assert out.stdout == "$HOME a;b *\n"


def test_stdin_is_delivered() -> None:
    out = run_bounded(["cat"], timeout=10, stdin=b"hello\nworld\n")
    assert (out.exit_code, out.stdout) == (0, "hello\nworld\n")


def test_without_stdin_the_child_reads_eof() -> None:
    out = run_bounded(["cat"], timeout=10)
    assert (out.exit_code, out.stdout, out.timed_out) == (0, "", False)


@pytest.mark.timeout(30)
def test_large_stdin_and_stdout_do_not_deadlock() -> None:
    # More than a pipe buffer each way: stdin must be fed while stdout is drained.
    data = bytes(range(256)) * 4096
    out = run_bounded(["od", "-An", "-v", "-tx1"], timeout=20, stdin=data, output_limit=1 << 23)
    assert (out.exit_code, out.error, out.truncated) == (0, None, False)
    assert bytes.fromhex(out.stdout) == data


@pytest.mark.timeout(30)
def test_the_deadline_holds_when_the_child_never_reads_its_stdin() -> None:
    started = time.monotonic()
    out = run_bounded(["sleep", "30"], timeout=0.5, stdin=b"x" * (1 << 20))
    assert out.timed_out
    assert time.monotonic() - started < 0.5 + subproc.KILL_GRACE + 1.0


def test_a_child_that_exits_without_reading_stdin() -> None:
    out = run_bounded(["sh", "-c", "echo bye"], timeout=10, stdin=b"x" * (1 << 20))
    assert (out.exit_code, out.stdout, out.error) == (0, "bye\n", None)


def test_cwd() -> None:
    out = run_bounded(["pwd"], timeout=10, cwd="/")
    assert out.stdout == "/\n"


def test_a_missing_binary_is_an_outcome_with_an_error() -> None:
    out = run_bounded(["/nonexistent/stanch-tool", "--flag"], timeout=10)
    assert (out.exit_code, out.ok, out.timed_out) == (None, False, False)
    assert out.error == "cannot run '/nonexistent/stanch-tool': No such file or directory"
    assert run_bounded(["stanch-no-such-program"], timeout=10).error == (
        "cannot run 'stanch-no-such-program': No such file or directory"
    )


def test_a_non_executable_file_is_an_outcome_with_an_error(tmp_path: os.PathLike[str]) -> None:
    script = os.path.join(tmp_path, "script.sh")
    with open(script, "w") as fh:
        fh.write("#!/bin/sh\necho hi\n")
    os.chmod(script, 0o644)
    out = run_bounded([script], timeout=10)
    if os.geteuid() == 0 and os.access(script, os.X_OK):
        pytest.skip("root may execute anything here")
    assert out.error == f"cannot run {script!r}: Permission denied"


def test_a_missing_cwd_is_an_outcome_with_an_error() -> None:
    out = run_bounded(["true"], timeout=10, cwd="/nonexistent/dir")
    assert out.exit_code is None
    assert out.error is not None and "No such file or directory" in out.error


def test_timeout_kills_the_group_including_a_background_grandchild(reap: list[int]) -> None:
    started = time.monotonic()
    out = run_bounded(["sh", "-c", "sleep 60 & echo $!; wait"], timeout=0.5)
    elapsed = time.monotonic() - started
    grandchild = int(out.stdout.strip())
    reap.append(grandchild)
    assert out.timed_out
    assert out.exit_code is None
    assert not out.ok
    assert out.error == "timed out after 0.5s; process group killed"
    assert 0.5 <= elapsed < 0.5 + subproc.KILL_GRACE
    assert gone(grandchild)


def test_a_child_ignoring_sigterm_gets_sigkill(
    reap: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subproc, "KILL_GRACE", 0.3)
    script = "trap '' TERM; sleep 60 & echo $!; while :; do sleep 0.05; done"
    started = time.monotonic()
    out = run_bounded(["sh", "-c", script], timeout=0.3)
    elapsed = time.monotonic() - started
    reap.append(int(out.stdout.strip()))
    assert out.timed_out
    assert elapsed < 3.0
    assert gone(reap[0])


def test_a_daemonizing_child_returns_promptly_and_is_left_running(reap: list[int]) -> None:
    started = time.monotonic()
    out = run_bounded(["sh", "-c", "sleep 5 & echo $!; echo started"], timeout=10)
    elapsed = time.monotonic() - started
    daemon = int(out.stdout.split()[0])
    reap.append(daemon)
    assert (out.exit_code, out.timed_out, out.error) == (0, False, None)
    assert out.stdout.endswith("started\n")
    assert elapsed < 2.0  # did not wait for the 5 s sleep
    assert psutil.Process(daemon).status() != psutil.STATUS_ZOMBIE  # not killed
    os.kill(daemon, signal.SIGKILL)


def test_output_is_bounded_keeping_head_and_tail() -> None:
    script = (
        "printf HEAD; i=0; while [ $i -lt 500 ]; do printf 0123456789; i=$((i+1)); done; "
        "printf TAIL"
    )
    out = run_bounded(["sh", "-c", script], timeout=10, output_limit=100)
    assert out.truncated
    assert out.exit_code == 0
    total = 4 + 5000 + 4
    head, marker, tail = out.stdout.partition(f"\n[... {total - 100} bytes truncated ...]\n")
    assert marker
    assert head == ("HEAD" + "0123456789" * 5)[:50]
    assert tail == ("0123456789" * 5 + "TAIL")[-50:]
    assert tail.endswith("TAIL")
    assert out.stderr == ""


def test_stderr_is_bounded_separately() -> None:
    script = "head -c 10000 /dev/zero | tr '\\0' e >&2; echo fine"
    out = run_bounded(["sh", "-c", script], timeout=10, output_limit=64)
    assert out.stdout == "fine\n"
    assert out.truncated
    assert "bytes truncated" in out.stderr
    assert len(out.stderr.encode()) < 64 + 50


def test_output_exactly_at_the_limit_is_not_truncated() -> None:
    out = run_bounded(["printf", "x" * 100], timeout=10, output_limit=100)
    assert (out.stdout, out.truncated) == ("x" * 100, False)


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    out = run_bounded(["printf", "\\377ok"], timeout=10)
    assert out.stdout == "\ufffdok"


# ---- environment -----------------------------------------------------------------------------


def test_children_do_not_inherit_notify_socket_or_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret")
    monkeypatch.setenv("STANCH_ENROLL_TOKEN", "secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("LANG", "C.UTF-8")
    out = run_bounded(["env"], timeout=10)
    child = dict(line.split("=", 1) for line in out.stdout.splitlines())
    for name in (
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "GITHUB_TOKEN",
        "STANCH_ENROLL_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
    ):
        assert name not in child
    assert "secret" not in out.stdout
    assert child["PATH"] == SAFE_PATH
    assert child["LANG"] == "C.UTF-8"


def test_scrubbed_env_adds_the_policy_env_but_never_agent_channels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOME", "/root")
    monkeypatch.delenv("TZ", raising=False)
    env = scrubbed_env({"MODE": "fast", "NOTIFY_SOCKET": "/x", "STANCH_DEBUG": "1"})
    assert env["MODE"] == "fast"
    assert env["HOME"] == "/root"
    assert "TZ" not in env
    assert "NOTIFY_SOCKET" not in env
    assert "STANCH_DEBUG" not in env
    out = run_bounded(["sh", "-c", "echo $MODE"], timeout=10, env=env)
    assert out.stdout == "fast\n"

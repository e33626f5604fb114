"""Run one external program with a hard deadline and bounded output, never through a shell.

Every command the agent starts (remediation steps, Nagios plugins, command sinks) goes through
``run_bounded``. The child gets its own session, so a timeout kills the whole process group
(``sh -c 'sleep 100 & wait'`` leaves nothing behind): SIGTERM, a short grace, then SIGKILL.
Output is read concurrently and capped, keeping the head and the tail, so a chatty command can
neither block on a full pipe nor grow the agent's memory.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

DEFAULT_OUTPUT_LIMIT = 64 * 1024
KILL_GRACE = 2.0
EXITED_DRAIN = 0.2
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INHERITED = ("HOME", "TZ", "TERM", "LC_ALL")
"""The only variables taken from the agent's own environment (besides LANG). Everything else the
agent has (STANCH_TOKEN, AWS_*, a sink's *_env secret, NOTIFY_SOCKET) stays out: an allowlist,
not a denylist, so a credential with an unexpected name is not passed on either."""
# Never handed to children, even when a policy sets them: systemd's notify and watchdog
# variables would let a child speak for the agent, and socket activation fds are the agent's.
_SCRUB_PREFIXES = ("NOTIFY_SOCKET", "WATCHDOG_", "STANCH_", "LISTEN_", "INVOCATION_ID")
_SCRUB_MARKERS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "API_KEY", "PRIVATE")


@dataclass(frozen=True)
class Outcome:
    argv: tuple[str, ...]
    exit_code: int | None
    """None when the program could not start or was killed at its timeout."""
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False
    truncated: bool = False
    error: str | None = None
    """Why the program did not run or finish (not found, permission denied, timeout)."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.error is None


def scrubbed_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for children: locale, a safe PATH, and what the policy set."""
    env = {"PATH": SAFE_PATH, "LANG": os.environ.get("LANG", "C.UTF-8")}
    for key in INHERITED:
        if key in os.environ and not _secret(key):
            env[key] = os.environ[key]
    env.update(extra or {})
    return {k: v for k, v in env.items() if not k.startswith(_SCRUB_PREFIXES)}


def _secret(key: str) -> bool:
    upper = key.upper()
    return upper.startswith(_SCRUB_PREFIXES) or any(m in upper for m in _SCRUB_MARKERS)


class _Capture:
    """Keeps the first and last ``limit // 2`` bytes of a stream."""

    def __init__(self, limit: int) -> None:
        self.half = max(1, limit // 2)
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def feed(self, chunk: bytes) -> None:
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            excess = len(self.tail) - self.half
            if excess > 0:
                self.dropped += excess
                del self.tail[:excess]

    def text(self) -> str:
        body = bytes(self.head)
        if self.dropped:
            body += f"\n[... {self.dropped} bytes truncated ...]\n".encode()
        body += bytes(self.tail)
        return body.decode("utf-8", errors="replace")


def run_bounded(
    argv: Sequence[str],
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    stdin: bytes | None = None,
    output_limit: int = DEFAULT_OUTPUT_LIMIT,
    user: int | None = None,
    group: int | None = None,
    extra_groups: Sequence[int] | None = None,
) -> Outcome:
    """Run ``argv`` (no shell) until it exits or ``timeout`` seconds pass. Never raises for the
    child's behaviour; a program that cannot start is an Outcome with ``error`` set.

    ``user``/``group``/``extra_groups`` switch the child's credentials before exec (root only;
    see ``agent.runas``). With ``user`` set and ``extra_groups`` None, supplementary groups are
    cleared rather than inherited from the agent."""
    argv = tuple(argv)
    started = time.monotonic()
    switch: dict[str, Any] = {}
    if user is not None:
        switch = {"user": user, "group": group, "extra_groups": list(extra_groups or ())}
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else scrubbed_env(),
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
            **switch,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return Outcome(
            argv,
            None,
            "",
            "",
            time.monotonic() - started,
            error=f"cannot run {argv[0]!r}: {reason}",
        )
    out, err = _Capture(output_limit), _Capture(output_limit)
    timed_out = _pump(proc, stdin, out, err, started + timeout)
    if timed_out:
        _kill_group(proc)
    else:
        proc.wait()
    duration = time.monotonic() - started
    truncated = bool(out.dropped or err.dropped)
    if timed_out:
        return Outcome(
            argv,
            None,
            out.text(),
            err.text(),
            duration,
            True,
            truncated,
            f"timed out after {timeout:g}s; process group killed",
        )
    return Outcome(argv, proc.returncode, out.text(), err.text(), duration, False, truncated)


def _pump(
    proc: subprocess.Popen[bytes],
    stdin: bytes | None,
    out: _Capture,
    err: _Capture,
    deadline: float,
) -> bool:
    """Feed stdin, drain stdout/stderr until both close and the child exits. True on timeout.

    Stdin is written from the same loop, non-blocking: a blocking write of more than a pipe
    buffer would wait forever on a child that does not read (or that waits for us to read its
    output first), and the deadline would never be checked."""
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    pending = memoryview(stdin or b"")
    if proc.stdin is not None:
        if pending:
            os.set_blocking(proc.stdin.fileno(), False)
            sel.register(proc.stdin, selectors.EVENT_WRITE, None)
        else:
            proc.stdin.close()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    try:
        while sel.get_map():
            now = time.monotonic()
            if proc.poll() is not None:
                # The program exited but something it started in the background still holds
                # the pipes (a daemon it launched): drain briefly, then stop listening. The
                # background process is left alone; starting it was the point.
                deadline = min(deadline, now + EXITED_DRAIN)
                if now >= deadline:
                    break
            remaining = deadline - now
            if remaining <= 0:
                return True
            for key, _ in sel.select(timeout=min(remaining, 0.05)):
                if key.data is None and proc.stdin is not None:
                    pending = _feed(proc.stdin, pending, sel)
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                key.data.feed(chunk)
        # Pipes closed; wait for the exit status within what is left of the deadline.
        while proc.poll() is None:
            if time.monotonic() >= deadline:
                return True
            time.sleep(0.01)
        return False
    finally:
        sel.close()
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()


def _feed(pipe: IO[bytes], pending: memoryview, sel: selectors.BaseSelector) -> memoryview:
    """Write what the child's stdin pipe takes now; close it when all is written (EOF) or
    the child closed its end (the rest is dropped, as a shell pipeline would)."""
    try:
        written = os.write(pipe.fileno(), pending[:65536])
    except BlockingIOError:
        return pending
    except OSError:  # BrokenPipeError: the child will not read any more
        written = len(pending)
    pending = pending[written:]
    if not pending:
        sel.unregister(pipe)
        with contextlib.suppress(OSError):
            pipe.close()
    return pending


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # Stragglers in the group that outlived the leader still get SIGKILL.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)

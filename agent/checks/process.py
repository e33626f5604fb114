"""``process``: is a service's process there, and how big, busy and old is it.

A check matches processes by exactly one of: ``name`` (the exact process name), ``cmdline`` (a
regular expression searched in the space-joined command line) or ``pidfile`` (the pid a daemon
wrote; a pidfile naming a dead pid is a stale pidfile and counts 0). All process checks of a tick
share one scan through ``CheckEnv.processes``.

Zombies are counted apart (``zombies``) and excluded from everything else: a zombie holds no
memory and serves no request, so a service whose only process is a zombie is down (count 0).

With ``watch: true`` (the default) the check tells the runner which pids it saw through
``watched_pids()``; the runner hands them to ``agent.pidwatch.PidWatcher`` and re-checks the
moment one dies instead of waiting for the next interval.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.checks.base import Check, CheckEnv, CheckType, Sample, Threshold
from agent.checks.proctable import ProcInfo
from agent.errors import CheckError
from agent.policy.fields import Fields

_SELECTORS = ("name", "cmdline", "pidfile")
_PIDFILE_MAX = 64


@dataclass(frozen=True)
class ProcessConfig:
    name: str | None = None
    cmdline: re.Pattern[str] | None = None
    pidfile: str | None = None
    watch: bool = True


def parse(f: Fields) -> ProcessConfig:
    given = [key for key in _SELECTORS if f.has(key)]
    if len(given) != 1:
        got = ", ".join(given) or "none"
        f.sink.add(
            f.path,
            "give exactly one of 'name' (process name), 'cmdline' (a regular expression) "
            f"or 'pidfile' (a path); got {got}",
        )
    name = f.string("name", None)
    pattern = f.string("cmdline", None)
    pidfile = f.string("pidfile", None)
    watch = f.boolean("watch", True)
    if name == "":
        f.error("name", "must not be empty; write the process name as ps -o comm shows it")
    regex = None
    if isinstance(pattern, str):
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            f.error("cmdline", f"invalid regular expression: {exc}; escape literal characters "
                    "such as '.' or '[' with a backslash")  # fmt: skip
    if isinstance(pidfile, str) and not pidfile.startswith("/"):
        f.error("pidfile", "must be an absolute path, e.g. /run/nginx.pid")
    return ProcessConfig(name=name, cmdline=regex, pidfile=pidfile, watch=bool(watch))


class ProcessCheck:
    """Matches processes in the shared table; returns their count and the worst of each gauge."""

    def __init__(
        self, config: ProcessConfig, env: CheckEnv, wall: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.table = env.processes
        self.pidfile = env.host_path(config.pidfile) if config.pidfile else None
        self.wall = wall
        self.own_pid = os.getpid()
        self._seen: set[int] = set()

    def watched_pids(self) -> set[int]:
        """Pids of the live processes the last sample matched (empty with ``watch: false``)."""
        return set(self._seen) if self.config.watch else set()

    def sample(self) -> Sample:
        matches, why = self._match()
        live = [p for p in matches if not p.zombie]
        zombies = len(matches) - len(live)
        self._seen = {p.pid for p in live}
        if not live:
            summary = why or "no matching process"
            metrics = dict.fromkeys(_METRICS, 0.0)
            metrics["zombies"] = float(zombies)
            return Sample(metrics, summary + (f" ({zombies} zombie)" if zombies else ""))
        biggest = max(live, key=lambda p: p.rss)
        oldest = min(p.create_time for p in live)
        metrics = {
            "count": float(len(live)),
            "rss_bytes": float(biggest.rss),
            "rss_total_bytes": float(sum(p.rss for p in live)),
            "cpu_percent": max(p.cpu_percent for p in live),
            "open_fds": float(max(p.num_fds for p in live)),
            "age_seconds": round(max(0.0, self.wall() - oldest), 3) if oldest else 0.0,
            "zombies": float(zombies),
            "pid": float(biggest.pid),
        }
        return Sample(metrics, f"{len(live)} process(es), largest pid {biggest.pid} "
                      f"({biggest.rss // (1 << 20)} MiB)")  # fmt: skip

    def _match(self) -> tuple[list[ProcInfo], str]:
        """The matching processes, and why there are none when a pidfile explains it."""
        if self.pidfile is not None:
            pid = self._read_pidfile()
            if pid is None:
                return [], f"no pidfile {self.pidfile}"
            info = self.table.lookup(pid)
            return ([info], "") if info is not None else ([], f"stale pidfile {self.pidfile}")
        procs = self.table.snapshot()
        if self.config.name is not None:
            name = self.config.name
            return [p for p in procs if p.name == name and p.pid != self.own_pid], ""
        regex = self.config.cmdline
        assert regex is not None
        found = [p for p in procs if p.pid != self.own_pid and regex.search(" ".join(p.cmdline))]
        return found, ""

    def _read_pidfile(self) -> int | None:
        """The pid in the pidfile; None when there is no pidfile (the daemon is not running)."""
        assert self.pidfile is not None
        try:
            with open(self.pidfile, "rb") as fh:
                text = fh.read(_PIDFILE_MAX).decode("ascii", errors="replace").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CheckError(f"cannot read pidfile {self.pidfile}: {exc.strerror}") from exc
        first = text.split()[0] if text.split() else ""
        if not first.isdigit() or int(first) <= 0:
            raise CheckError(f"pidfile {self.pidfile} does not hold a pid (got {text[:20]!r})")
        return int(first)


def build(config: ProcessConfig, env: CheckEnv) -> Check:
    return ProcessCheck(config, env)


_METRICS = (
    "count", "rss_bytes", "rss_total_bytes", "cpu_percent", "open_fds", "age_seconds",
    "zombies", "pid",
)  # fmt: skip

PROCESS = CheckType(
    name="process",
    parse=parse,
    build=build,
    metrics=frozenset(_METRICS),
    default_critical=Threshold("count", "<", 1.0),
    description="Processes matched by name, command line or pidfile: count, memory, CPU, fds, "
    "age, zombies and the pid of the largest (for remediation templates).",
)

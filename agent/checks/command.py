"""``command``: run a Nagios / Monitoring Plugins compatible program and take its verdict.

Thousands of such plugins exist (``check_disk``, ``check_pgsql``, a team's own script); this type
lets a policy reuse them. The contract: exit 0/1/2/3 means OK/WARNING/CRITICAL/UNKNOWN and becomes
the check's status (``Sample.status``); any other exit code, a signal, a timeout or a program that
cannot start is UNKNOWN. The first output line before ``|`` is the summary; performance data
(see ``agent.checks.perfdata``) becomes metrics named after the sanitised labels, next to
``exit_code``. The set of metrics depends on the plugin, so the type declares none.

The plugin runs through ``run_bounded``: no shell unless ``shell: true``, a scrubbed environment
plus the policy's ``env``, its whole process group killed at ``plugin_timeout``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.checks.base import Check, CheckEnv, CheckType, MetricValue, Sample, Status
from agent.checks.perfdata import metric_name, parse_perfdata, split_output
from agent.errors import CheckError
from agent.policy.fields import Fields
from agent.subproc import run_bounded, scrubbed_env

MAX_PERF_METRICS = 256
"""Perfdata items kept per run; a plugin printing thousands would bloat every journal entry."""


@dataclass(frozen=True)
class CommandConfig:
    argv: tuple[str, ...]
    shell: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    plugin_timeout: float = 10.0


def parse(f: Fields) -> CommandConfig:
    shell = f.boolean("shell", False)
    run = f.get("run")
    env = f.str_map("env")
    timeout = f.duration("plugin_timeout", "10s", minimum=0.1)
    argv: tuple[str, ...] = ()
    if shell:
        if isinstance(run, str) and run.strip():
            argv = ("/bin/sh", "-c", run)
        elif run is not None:
            f.error("run", "with shell: true, 'run' is one string (the script for /bin/sh -c)")
    elif isinstance(run, list) and run and all(isinstance(a, str | int | float) for a in run):
        argv = tuple(str(a) for a in run)
    elif run is not None:
        f.error("run", "expected an argv list such as ['/usr/lib/nagios/plugins/check_load', "
                "'-w', '5', '-c', '10'] (set shell: true to run a shell string)")  # fmt: skip
    return CommandConfig(argv=argv, shell=bool(shell), env=env, plugin_timeout=timeout or 10.0)


class CommandCheck:
    def __init__(self, config: CommandConfig) -> None:
        self.config = config

    def sample(self) -> Sample:
        c = self.config
        outcome = run_bounded(c.argv, timeout=c.plugin_timeout, env=scrubbed_env(c.env))
        if outcome.error is not None:
            # Cannot run, or killed at the timeout: the runner records UNKNOWN with this message.
            raise CheckError(f"plugin {c.argv[0]!r}: {outcome.error}")
        code = outcome.exit_code
        assert code is not None
        summary, perf = split_output(outcome.stdout)
        metrics: dict[str, MetricValue] = {}
        for item in parse_perfdata(perf):
            name = metric_name(item.label)
            if name not in metrics and len(metrics) < MAX_PERF_METRICS:
                metrics[name] = item.value
        metrics["exit_code"] = float(code)
        if 0 <= code <= 3:
            status = Status(code)
        else:
            status = Status.UNKNOWN
            why = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            summary = f"plugin {why} (not 0-3)" + (f": {summary}" if summary else "")
        if not summary:
            stderr = outcome.stderr.strip().splitlines()
            summary = f"exit {code}" + (f": {stderr[0][:200]}" if stderr else ", no output")
        return Sample(metrics, summary, status)


def build(config: CommandConfig, env: CheckEnv) -> Check:
    return CommandCheck(config)


COMMAND = CheckType(
    name="command",
    parse=parse,
    build=build,
    metrics=None,
    description="A Monitoring Plugins compatible program: its exit status, summary and "
    "performance data.",
)

"""``systemd``: is a unit active, and in which sub-state.

``systemctl show --property=...`` prints stable ``Key=Value`` lines meant for programs, unlike
``systemctl status``. A unit systemd does not know still prints ``ActiveState=inactive`` (with
``LoadState=not-found``, which the summary mentions), so a typo'd unit name reads as down rather
than silently fine.

The ``systemctl`` key names the binary (default: ``systemctl`` on the agent's safe PATH); tests
point it at a fake script, and an agent in a container can point it at a wrapper that enters the
host's namespaces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.checks.base import Check, CheckEnv, CheckType, Sample, Threshold
from agent.errors import CheckError
from agent.policy.fields import Fields
from agent.subproc import run_bounded

UNIT_RE = re.compile(r"^[A-Za-z0-9:_.\\@-]+$")
SYSTEMCTL_TIMEOUT = 5.0
_PROPERTIES = "ActiveState,SubState,LoadState"
_NO_SYSTEMD = ("has not been booted with systemd", "Failed to connect to bus")


@dataclass(frozen=True)
class SystemdConfig:
    unit: str
    systemctl: str = "systemctl"


def parse(f: Fields) -> SystemdConfig:
    unit = f.string("unit")
    if isinstance(unit, str) and (not UNIT_RE.match(unit) or unit.startswith("-")):
        f.error("unit", f"{unit!r} is not a unit name; write it as systemctl lists it, "
                "e.g. nginx.service")  # fmt: skip
    systemctl = f.string("systemctl", "systemctl")
    if isinstance(systemctl, str) and "/" in systemctl and not systemctl.startswith("/"):
        f.error("systemctl", "must be a command name on the PATH or an absolute path")
    return SystemdConfig(unit=unit or "", systemctl=systemctl or "systemctl")


def parse_show(text: str) -> dict[str, str]:
    """``Key=Value`` lines of ``systemctl show`` as a dict (values may contain '=')."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


class SystemdCheck:
    def __init__(self, config: SystemdConfig) -> None:
        self.config = config

    def sample(self) -> Sample:
        c = self.config
        argv = [c.systemctl, "show", f"--property={_PROPERTIES}", c.unit]
        outcome = run_bounded(argv, timeout=SYSTEMCTL_TIMEOUT)
        if outcome.error is not None:
            raise CheckError(f"systemd check of {c.unit}: {outcome.error}")
        if any(marker in outcome.stderr for marker in _NO_SYSTEMD):
            raise CheckError(f"systemd is not running as PID 1 here ({_first(outcome.stderr)}); "
                             "systemd checks need a systemd host")  # fmt: skip
        props = parse_show(outcome.stdout)
        if outcome.exit_code != 0 or "ActiveState" not in props:
            detail = _first(outcome.stderr) or _first(outcome.stdout) or "no output"
            raise CheckError(f"{c.systemctl} show {c.unit} exited {outcome.exit_code}: {detail}")
        active, sub = props["ActiveState"], props.get("SubState", "")
        load = props.get("LoadState", "")
        note = f" (unit {load})" if load and load != "loaded" else ""
        return Sample(
            {
                "active": 1.0 if active == "active" else 0.0,
                "active_state": active,
                "sub_state": sub,
            },
            f"{c.unit}: {active}/{sub}{note}",
        )


def _first(text: str) -> str:
    return text.strip().splitlines()[0][:200] if text.strip() else ""


def build(config: SystemdConfig, env: CheckEnv) -> Check:
    return SystemdCheck(config)


SYSTEMD = CheckType(
    name="systemd",
    parse=parse,
    build=build,
    metrics=frozenset({"active", "active_state", "sub_state"}),
    default_critical=Threshold("active", "<", 1.0),
    description="A systemd unit's ActiveState (active=1 when 'active') and SubState.",
)

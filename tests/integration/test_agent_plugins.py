"""Nagios / Monitoring Plugins as checks: exit 0/1/2/3 are OK/WARNING/CRITICAL/UNKNOWN, and
perfdata after `|` becomes metrics a rule can use."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import AgentHarness

PLUGIN = """\
#!/bin/sh
# A plugin driven by a state file: line 1 is the exit code, the rest is the output.
code=$(head -n 1 "$1")
tail -n +2 "$1"
exit "$code"
"""
PLUGINS_DIR = Path("/usr/lib/nagios/plugins")


def plugin_check(tmp_path: Path, name: str, code: int, output: str) -> tuple[dict[str, Any], Path]:
    """A command check running the state-file plugin; returns the check and its state file."""
    script = tmp_path / "plugin.sh"
    if not script.exists():
        script.write_text(PLUGIN)
        script.chmod(0o755)
    state = tmp_path / f"{name}.state"
    state.write_text(f"{code}\n{output}\n")
    return {"type": "command", "run": [str(script), str(state)], "interval": "1s"}, state


def set_state(state: Path, code: int, output: str) -> dict[str, Any]:
    """A step that makes the plugin report ``code``/``output`` from now on."""
    text = shlex.quote(f"{code}\n{output}\n")
    return {"name": "fix", "run": f"printf %s {text} > {state}", "shell": True, "timeout": "5s"}


def test_critical_exit_code_fires_a_state_rule(harness: AgentHarness, tmp_path: Path) -> None:
    """Exit 2 (CRITICAL) fires `state: critical`; after the step the plugin exits 0: fixed."""
    check, state = plugin_check(tmp_path, "queue", 2, "CRITICAL - queue stuck | depth=950;100;500")
    harness.write_policy("queue", harness.policy_yaml(
        "queue-stuck", checks={"queue": check}, when={"check": "queue", "state": "critical"},
        steps=[set_state(state, 0, "OK - queue drained | depth=3;100;500")],
    ))  # fmt: skip
    harness.start()
    [execution] = harness.wait_executions("queue-stuck", 1, "fixed")
    act = harness.wait_decision("queue-stuck", "act")
    assert act.why == ["queue is critical"] and act.observed == {"queue.status": "critical"}
    assert execution.observed == {"queue.status": "critical"}
    states = harness.journal.policy_states()["queue-stuck"]["checks"]["queue"]
    harness.wait_for(lambda: harness.journal.policy_states()["queue-stuck"]["checks"]["queue"]
                     ["status"] == "ok", 5, what="the plugin's OK")  # fmt: skip
    assert states["summary"] in ("CRITICAL - queue stuck", "OK - queue drained")


def test_perfdata_metric_rule(harness: AgentHarness, tmp_path: Path) -> None:
    """A rule on a perfdata value fires even though the plugin itself says OK."""
    check, state = plugin_check(tmp_path, "load", 0, "OK - load | load1=12.5;20;30;0 time=0.02s")
    harness.write_policy("load", harness.policy_yaml(
        "load-high", checks={"load": check},
        when={"check": "load", "metric": "load1", "op": ">", "value": 10},
        steps=[set_state(state, 0, "OK - load | load1=0.5;20;30;0 time=0.02s")],
    ))  # fmt: skip
    harness.start()
    harness.wait_executions("load-high", 1, "fixed")
    act = harness.wait_decision("load-high", "act")
    assert act.observed == {"load.load1": 12.5}
    assert act.why == ["load.load1 = 12.5 > 10"]


def test_unknown_and_warning_do_not_fire_a_critical_rule(
    harness: AgentHarness, tmp_path: Path
) -> None:
    """Exit 3 (UNKNOWN) and exit 1 (WARNING) are not CRITICAL: no decision, no action."""
    for name, code, output in (
        ("unknown", 3, "UNKNOWN - cannot reach the socket"),
        ("warning", 1, "WARNING - queue 60% full | depth=300;100;500"),
    ):
        check, _ = plugin_check(tmp_path, name, code, output)
        harness.write_policy(name, harness.policy_yaml(
            name, checks={"p": check}, when={"check": "p", "state": "critical"},
            steps=[harness.step("fix", ["touch", str(tmp_path / f"{name}.ran")])],
        ))  # fmt: skip
    harness.start()

    def statuses() -> dict[str, str]:
        states = harness.journal.policy_states()
        return {n: s.get("checks", {}).get("p", {}).get("status") for n, s in states.items()}

    harness.wait_for(lambda: statuses() == {"unknown": "unknown", "warning": "warning"}, 10,
                     what="both plugin states")  # fmt: skip
    time.sleep(1.5)  # at least one more sample of each
    for name in ("unknown", "warning"):
        assert harness.decisions(name) == [] and harness.executions(name) == []
        assert not (tmp_path / f"{name}.ran").exists()
    unknown = harness.journal.policy_states()["unknown"]["checks"]["p"]
    assert unknown["summary"] == "UNKNOWN - cannot reach the socket"


@pytest.mark.skipif(
    not (PLUGINS_DIR / "check_file_age").exists(),
    reason="needs Debian monitoring-plugins-basic (/usr/lib/nagios/plugins/check_file_age)",
)
def test_real_monitoring_plugin(harness: AgentHarness, tmp_path: Path) -> None:
    """check_file_age from monitoring-plugins: its CRITICAL and its perfdata drive rules."""
    plugin = str(PLUGINS_DIR / "check_file_age")
    heartbeat, spool = tmp_path / "heartbeat", tmp_path / "spool"
    spool.write_text("x" * 500)

    def age(path: Path) -> dict[str, Any]:
        return {"type": "command", "interval": "1s",
                "run": [plugin, "-w", "240", "-c", "600", "-f", str(path)]}  # fmt: skip

    harness.write_policy("hb", harness.policy_yaml(
        "heartbeat-missing", checks={"age": age(heartbeat)},
        when={"check": "age", "state": "critical"},
        steps=[harness.step("touch", ["touch", str(heartbeat)])],
    ))  # fmt: skip
    harness.write_policy("spool", harness.policy_yaml(
        "spool-too-big", checks={"age": age(spool)},
        when={"check": "age", "metric": "size", "op": ">", "value": 100},
        steps=[harness.step("truncate", ["truncate", "-s", "0", str(spool)])],
    ))  # fmt: skip
    harness.start()
    harness.wait_executions("heartbeat-missing", 1, "fixed")
    harness.wait_executions("spool-too-big", 1, "fixed")
    assert harness.wait_decision("spool-too-big", "act").observed == {"age.size": 500.0}
    assert harness.wait_decision("heartbeat-missing", "act").why == ["age is critical"]

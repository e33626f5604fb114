"""command checks running real plugin scripts, and the real Debian monitoring-plugins if present."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agent.checks.base import Status
from agent.checks.testing import build_check
from agent.errors import CheckError

PLUGINS = Path("/usr/lib/nagios/plugins")


def plugin(tmp_path: Path, name: str, body: str) -> str:
    """Write an executable /bin/sh plugin script and return its path."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("code", [0, 1, 2, 3])
def test_exit_code_is_the_status(tmp_path: Path, code: int) -> None:
    script = plugin(tmp_path, "check_x", f"echo 'X {code} - state {code}'\nexit {code}\n")
    sample = build_check("command", {"run": [script]}).sample()
    assert sample.status == Status(code)
    assert sample.summary == f"X {code} - state {code}"
    assert sample.metrics == {"exit_code": float(code)}


def test_other_exit_codes_and_signals_are_unknown(tmp_path: Path) -> None:
    sample = build_check("command", {"run": [plugin(tmp_path, "c", "echo odd\nexit 7\n")]}).sample()
    assert sample.status is Status.UNKNOWN and sample.metrics["exit_code"] == 7.0
    assert sample.summary == "plugin exit code 7 (not 0-3): odd"
    sample = build_check("command", {"run": [plugin(tmp_path, "k", "kill -9 $$\n")]}).sample()
    assert (
        sample.status is Status.UNKNOWN and sample.summary == "plugin killed by signal 9 (not 0-3)"
    )


def test_cannot_run_and_timeout_are_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckError, match="cannot run"):
        build_check("command", {"run": [str(tmp_path / "missing")]}).sample()
    slow = plugin(tmp_path, "slow", "sleep 30\n")
    started = time.monotonic()
    with pytest.raises(CheckError, match="timed out"):
        build_check("command", {"run": [slow], "plugin_timeout": "300ms"}).sample()
    assert time.monotonic() - started < 5.0


def test_perfdata_forms(tmp_path: Path) -> None:
    body = (
        "echo \"APP WARNING - 2 queues slow | 'queue depth'=17;10;20;0; 'Wait Time'=1.5s;1;2 "
        'hit=97.5%;;;0;100"\n'
        "echo 'queue mail: 17 waiting'\n"
        'echo "queue sms: 3 waiting | mem=2048KB;;; size=3MB"\n'
        "echo 'flaky=U;1;2 count=12c'\n"
        "exit 1\n"
    )
    sample = build_check("command", {"run": [plugin(tmp_path, "app", body)]}).sample()
    assert sample.status is Status.WARNING
    assert sample.summary == "APP WARNING - 2 queues slow"
    assert sample.metrics == {
        "queue_depth": 17.0, "wait_time": 1.5, "hit": 97.5, "mem": 2048.0, "size": 3.0,
        "count": 12.0, "exit_code": 1.0,
    }  # fmt: skip


def test_shell_and_env() -> None:
    raw = {"run": 'echo "OK - $GREETING" | tr a-z A-Z; exit 0', "shell": True,
           "env": {"GREETING": "hello"}}  # fmt: skip
    sample = build_check("command", raw).sample()
    assert sample.summary == "OK - HELLO" and sample.status is Status.OK


def test_secrets_in_the_agent_environment_do_not_reach_plugins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANCH_API_TOKEN", "s3cret")
    script = plugin(tmp_path, "env", 'echo "OK - token=[$STANCH_API_TOKEN]"\n')
    assert build_check("command", {"run": [script]}).sample().summary == "OK - token=[]"


def test_empty_output_uses_stderr_for_the_summary(tmp_path: Path) -> None:
    script = plugin(tmp_path, "quiet", "echo 'config missing' >&2\nexit 3\n")
    sample = build_check("command", {"run": [script]}).sample()
    assert sample.status is Status.UNKNOWN and sample.summary == "exit 3: config missing"


# ---- the real Monitoring Plugins (Debian package monitoring-plugins-basic) -------------------


def real(name: str) -> str:
    path = PLUGINS / name
    if not os.access(path, os.X_OK):
        pytest.skip(f"{path} not installed (apt-get install monitoring-plugins-basic)")
    return str(path)


@pytest.mark.parametrize("code", [0, 1, 2, 3])
def test_real_check_dummy(code: int) -> None:
    sample = build_check("command", {"run": [real("check_dummy"), code, "from stanch"]}).sample()
    assert sample.status == Status(code)
    assert sample.summary.endswith("from stanch")
    assert sample.metrics["exit_code"] == float(code)


def test_real_check_load_perfdata() -> None:
    raw = {"run": [real("check_load"), "-w", "1000,1000,1000", "-c", "2000,2000,2000"]}
    sample = build_check("command", raw).sample()
    assert sample.status is Status.OK
    load1 = os.getloadavg()[0]
    assert {"load1", "load5", "load15", "exit_code"} <= set(sample.metrics)
    assert abs(float(sample.metrics["load1"]) - load1) < 1.0


def test_real_check_disk_perfdata() -> None:
    raw = {"run": [real("check_disk"), "-w", "1%", "-c", "1%", "-p", "/"]}
    sample = build_check("command", raw).sample()
    assert sample.status in (Status.OK, Status.WARNING, Status.CRITICAL)
    assert sample.metrics.get("_") is not None and float(sample.metrics["_"]) > 0

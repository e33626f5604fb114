"""systemd checks: parsing and error paths against a fake systemctl, and the real one on a host
whose PID 1 is systemd (skipped elsewhere: this test never starts or stops a unit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.checks.systemd import parse_show
from agent.checks.testing import build_check
from agent.errors import CheckError

FAKE = """#!/bin/sh
echo "$@" > {log}
case "$3" in
  web.service) printf 'ActiveState=active\\nSubState=running\\nLoadState=loaded\\n' ;;
  db.service) printf 'LoadState=loaded\\nActiveState=failed\\nSubState=failed\\n' ;;
  typo.service) printf 'ActiveState=inactive\\nSubState=dead\\nLoadState=not-found\\n' ;;
  container.service)
    echo 'System has not been booted with systemd as init system (PID 1). Can'"'"'t operate.' >&2
    echo 'Failed to connect to bus: Host is down' >&2
    exit 1 ;;
  broken.service) echo 'Failed to get properties: Access denied' >&2; exit 1 ;;
  *) echo 'nothing useful' ;;
esac
"""


@pytest.fixture
def systemctl(tmp_path: Path) -> tuple[str, Path]:
    log = tmp_path / "argv"
    path = tmp_path / "systemctl"
    path.write_text(FAKE.format(log=log))
    path.chmod(0o755)
    return str(path), log


def sample(systemctl: str, unit: str) -> dict[str, object]:
    check = build_check("systemd", {"unit": unit, "systemctl": systemctl})
    s = check.sample()
    return {**s.metrics, "summary": s.summary}


def test_active_unit(systemctl: tuple[str, Path]) -> None:
    path, log = systemctl
    got = sample(path, "web.service")
    assert got == {"active": 1.0, "active_state": "active", "sub_state": "running",
                   "summary": "web.service: active/running"}  # fmt: skip
    assert log.read_text().split() == [
        "show", "--property=ActiveState,SubState,LoadState", "web.service",
    ]  # fmt: skip


def test_failed_and_unknown_units_are_not_active(systemctl: tuple[str, Path]) -> None:
    path, _ = systemctl
    failed = sample(path, "db.service")
    assert failed["active"] == 0.0 and failed["active_state"] == "failed"
    typo = sample(path, "typo.service")
    assert (
        typo["active"] == 0.0 and typo["summary"] == "typo.service: inactive/dead (unit not-found)"
    )


def test_no_systemd_is_a_clear_error(systemctl: tuple[str, Path]) -> None:
    path, _ = systemctl
    with pytest.raises(CheckError, match="systemd is not running as PID 1 here"):
        sample(path, "container.service")


def test_other_failures_are_errors(systemctl: tuple[str, Path], tmp_path: Path) -> None:
    path, _ = systemctl
    with pytest.raises(CheckError, match="exited 1: Failed to get properties: Access denied"):
        sample(path, "broken.service")
    with pytest.raises(CheckError, match="exited 0: nothing useful"):
        sample(path, "odd.service")
    with pytest.raises(CheckError, match="cannot run"):
        sample(str(tmp_path / "no-systemctl"), "web.service")


def test_parse_show_keeps_equals_in_values() -> None:
    assert parse_show("A=b=c\nnoise\nSubState= running \n") == {"A": "b=c", "SubState": "running"}


def test_real_systemd() -> None:
    try:
        pid1 = Path("/proc/1/comm").read_text().strip()
    except OSError:
        pid1 = ""
    if pid1 != "systemd":
        pytest.skip(f"PID 1 is {pid1 or 'unknown'}, not systemd")
    got = sample("systemctl", "basic.target")
    assert got["active"] == 1.0 and got["active_state"] == "active"

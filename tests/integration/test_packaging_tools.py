"""The packaging checked by the tools that will consume it: systemd-analyze on the units,
kubernetes-validate on every manifest (offline schemas), promtool on the alert rules and the
dashboard's queries, shellcheck on the scripts. Each skips with the reason when its tool is
missing; CI installs them (systemd, prometheus, shellcheck Debian packages; kubernetes-validate
from the dev extra)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
UNITS = sorted((PACKAGING / "systemd").glob("*.service"))
MANIFESTS = sorted(
    p for p in (PACKAGING / "kubernetes").glob("*.yaml") if p.name != "kustomization.yaml"
)
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
PROMTOOL = shutil.which("promtool")
SHELLCHECK = shutil.which("shellcheck")
K8S_VERSIONS = ("1.29.0", "1.33.0")
"""The oldest Kubernetes minor still commonly run, and a recent one."""


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)


# ---- systemd ---------------------------------------------------------------------------------


def staged_units(tmp_path: Path) -> list[Path]:
    """The units with /opt/stanch/bin/ pointed at stub executables: `verify` checks that
    ExecStart programs exist, and the install is not on this machine."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("stanch-agent", "python", "opsctl"):
        stub = bin_dir / name
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    out = []
    for source in UNITS:
        target = tmp_path / source.name
        target.write_text(source.read_text().replace("/opt/stanch/bin/", f"{bin_dir}/"))
        out.append(target)
    return out


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (systemd)")
def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    units = staged_units(tmp_path)
    probe = tmp_path / "probe.service"
    probe.write_text("[Service]\nExecStart=/bin/true\nRestrat=always\n")
    done = run([SYSTEMD_ANALYZE, "verify", str(probe)], cwd=tmp_path)
    if "Restrat" not in done.stderr:
        pytest.skip(f"systemd-analyze verify does not work here: {done.stderr.strip()[:200]}")
    done = run([SYSTEMD_ANALYZE, "verify", *map(str, units)], cwd=tmp_path)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (systemd)")
@pytest.mark.parametrize(("name", "ceiling"), [("stanch-agent", 5.0), ("stanch-controlplane", 2.0)])
def test_systemd_security_exposure_stays_low(tmp_path: Path, name: str, ceiling: float) -> None:
    """The agent is root by necessity (4.8 today); the control plane is fully sandboxed (1.3).
    A change that loosens either fails here instead of in a security review."""
    assert SYSTEMD_ANALYZE is not None
    [unit] = [u for u in staged_units(tmp_path) if u.stem == name]
    done = run([SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(unit)])
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout + done.stderr)
    if found is None:
        pytest.skip(f"systemd-analyze security --offline is not supported: {done.stderr[:200]}")
    assert float(found.group(1)) <= ceiling, done.stdout[-2000:]


# ---- Kubernetes --------------------------------------------------------------------------------


def manifest_docs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in MANIFESTS
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schema(version: str) -> None:
    kv = pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is not installed (dev-only: pip install kubernetes-validate)",
    )
    docs = manifest_docs()
    assert len(docs) >= 9
    problems = []
    for where, doc in docs:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            problems.append(f"{where}: {exc.message} at {'.'.join(map(str, exc.path))}")
    assert problems == []


def test_the_schema_check_catches_a_typo() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    [(_, daemonset)] = [(w, d) for w, d in manifest_docs() if d["kind"] == "DaemonSet"]
    broken = json.loads(json.dumps(daemonset))
    broken["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, K8S_VERSIONS[0], strict=True)


# ---- Prometheus --------------------------------------------------------------------------------


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
def test_alert_rules_check_and_unit_tests_pass() -> None:
    assert PROMTOOL is not None
    monitoring = PACKAGING / "monitoring"
    done = run([PROMTOOL, "check", "rules", "alerts.yaml"], cwd=monitoring)
    assert done.returncode == 0, done.stdout + done.stderr
    done = run([PROMTOOL, "test", "rules", "alerts_test.yaml"], cwd=monitoring)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, as a recording rule: promtool
    parses it with the real PromQL parser."""
    assert PROMTOOL is not None
    dash = json.loads((PACKAGING / "monitoring" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    rules = [
        {"record": f"stanch:dashboard_query_{i}", "expr": e.replace("$__rate_interval", "5m")}
        for i, e in enumerate(exprs)
    ]
    (tmp_path / "dash.yaml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]}))
    done = run([PROMTOOL, "check", "rules", "dash.yaml"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


# ---- scripts -----------------------------------------------------------------------------------

SCRIPTS = [PACKAGING / "install.sh", *sorted((PACKAGING / "container").iterdir())]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script: Path) -> None:
    """Syntax only (-n): install.sh changes the machine and is never run by tests."""
    shell = "bash" if script.read_text().startswith("#!/usr/bin/env bash") else "sh"
    done = run([shell, "-n", str(script)])
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(
    SHELLCHECK is None, reason="shellcheck not installed (apt-get install shellcheck)"
)
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    assert SHELLCHECK is not None
    done = run([SHELLCHECK, str(script)])
    assert done.returncode == 0, done.stdout

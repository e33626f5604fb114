"""The control-plane monitoring that ships agrees with the code: the dashboard's control-plane row
and controlplane-alerts.yaml use only metrics the control plane exports, every query parses and
the alert rules pass their promtool tests, the docs list every metric, and the systemd unit and
the Kubernetes manifest start the endpoint where the scrape config and the probes look for it."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane import server_config

pytest.importorskip("prometheus_client", reason="prometheus-client is not installed")
from prometheus_client import CollectorRegistry  # noqa: E402
from prometheus_client.process_collector import ProcessCollector  # noqa: E402

from controlplane.gates import GateResult  # noqa: E402
from controlplane.metrics import (  # noqa: E402
    ControlPlaneMetrics,
    PlaneSnapshot,
    RolloutView,
    StateCollector,
)
from controlplane.security_events import SecurityEvents  # noqa: E402
from controlplane.storage.base import RolloutRecord  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "packaging" / "monitoring"
PROMTOOL = shutil.which("promtool")
METRIC = re.compile(r"\b((?:stanch|process)_[a-z0-9_]+)\b")
HISTOGRAM_SUFFIX = re.compile(r"_(bucket|count|sum)$")
ROW = "Control plane"


def exported() -> set[str]:
    """Every sample name a busy control plane exposes: events observed once, a snapshot with an
    active rollout (gates, hosts) and a finished one."""
    registry = CollectorRegistry(auto_describe=False)
    m = ControlPlaneMetrics(registry)
    m.heartbeat()
    m.presence_flushed(3, True)
    m.reports_received(4)
    m.reports_committed(4, 3, 0.002)
    m.rpc._finish(("stanch.v1.Admin", "GetRollout", "unary"), "OK", 0.0)
    gate = GateResult("failed_applies", "enforce", "0", 0.0, 0.0, True).to_dict()
    active = RolloutRecord(
        id="web-v2-a",
        bundle_digest="d",
        selector={},
        waves=("1", "100%"),
        bake_seconds=60.0,
        gates={},
        gate_modes={},
        state="running",
        wave=0,
        wave_started_at=1.0,
        created_at=1.0,
        updated_at=1.0,
        gate_results=(gate,),
    )
    security = SecurityEvents()
    security.enrolled("issued")
    security.renewed("renewed")
    security.authenticated("token", "ok")
    snap = PlaneSnapshot(
        connected=1,
        versions={"0.1.0": 1},
        tasks={"report-writer": True},
        rollouts=(RolloutView(active, {"applied": 1}),),
        pauses={"operator": 0},
        security=security,
        expiring_certificates=0,
    )
    registry.register(StateCollector(lambda: snap))
    ProcessCollector(registry=registry)
    names = {s.name for family in registry.collect() for s in family.samples}
    return {n for n in names if not n.endswith("_created")}  # off in the served exposition


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return loaded


def all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Panels at every depth: a collapsed row holds its panels inside it."""
    out = []
    for panel in panels:
        out.append(panel)
        out += all_panels(panel.get("panels", []))
    return out


def control_plane_row() -> dict[str, Any]:
    [row] = [p for p in dashboard()["panels"] if p["type"] == "row" and p["title"] == ROW]
    return row


def exprs(panels: list[dict[str, Any]]) -> list[str]:
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((MONITORING / "controlplane-alerts.yaml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


# ---- the dashboard -------------------------------------------------------------------------------


def test_the_dashboard_has_a_collapsed_control_plane_row() -> None:
    row = control_plane_row()
    assert row["collapsed"] is True and len(row["panels"]) >= 10
    ids = [p["id"] for p in all_panels(dashboard()["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique across the dashboard"
    top = dashboard()["panels"]
    assert top[-1]["title"] == ROW  # the last row: below the agents'
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in top[:-1])
    assert row["gridPos"]["y"] == bottom
    assert all(p["gridPos"]["y"] > row["gridPos"]["y"] for p in row["panels"])


def test_the_control_plane_row_uses_only_exported_metrics() -> None:
    queries = exprs(control_plane_row()["panels"])
    used = {HISTOGRAM_SUFFIX.sub("", m) for e in queries for m in METRIC.findall(e)}
    names = {HISTOGRAM_SUFFIX.sub("", n) for n in exported()}
    assert used - names == set()
    assert all(m.startswith("stanch_cp_") for m in used)
    assert len(used) >= 15


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
def test_every_dashboard_query_parses_nested_rows_included(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    queries = exprs(all_panels(dashboard()["panels"]))
    rules = [
        {"record": f"stanch:dashboard_query_{i}", "expr": e.replace("$__rate_interval", "5m")}
        for i, e in enumerate(queries)
    ]
    (tmp_path / "dash.yaml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]}))
    done = subprocess.run(
        [PROMTOOL, "check", "rules", "dash.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ---- the alerts ----------------------------------------------------------------------------------


def test_the_alerts_use_only_exported_metrics_and_link_to_the_guide() -> None:
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    assert {"StanchNoAgentsConnected", "StanchRolloutRolledBack"} <= names
    assert "StanchReportIngestionStalled" in names
    used = {HISTOGRAM_SUFFIX.sub("", m) for r in rules for m in METRIC.findall(r["expr"])}
    assert used - {HISTOGRAM_SUFFIX.sub("", n) for n in exported()} == set()
    guide = (ROOT / "docs" / "operator-guide.md").read_text()
    headings = {
        re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", line.lstrip("#").strip().lower()))
        for line in guide.splitlines()
        if line.startswith("#")
    }
    for rule in rules:
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor in headings, rule["alert"]
        assert rule["alert"] in guide, f"{rule['alert']}: not explained in the operator guide"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
def test_the_alert_rules_check_and_their_unit_tests_pass() -> None:
    assert PROMTOOL is not None
    for argv in (
        [PROMTOOL, "check", "rules", "controlplane-alerts.yaml"],
        [PROMTOOL, "test", "rules", "controlplane-alerts_test.yaml"],
    ):
        done = subprocess.run(argv, cwd=MONITORING, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    tested = yaml.safe_load((MONITORING / "controlplane-alerts_test.yaml").read_text())
    covered = {t["alertname"] for case in tested["tests"] for t in case["alert_rule_test"]}
    assert covered == {r["alert"] for r in alert_rules()}, "every alert has a promtool test"


def test_the_reference_lists_every_metric() -> None:
    text = (ROOT / "docs" / "control-plane.md").read_text()
    names = {HISTOGRAM_SUFFIX.sub("", n) for n in exported() if n.startswith("stanch_cp")}
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert missing == []


# ---- where it runs -------------------------------------------------------------------------------


def test_the_systemd_unit_serves_metrics_on_loopback_by_default() -> None:
    unit = (ROOT / "packaging" / "systemd" / "stanch-controlplane.service").read_text()
    [env] = re.findall(r'^Environment="STANCH_CP_METRICS_ARGS=(.*)"$', unit, re.M)
    [start] = re.findall(r"^ExecStart=(.*)$", unit, re.M)
    assert start.endswith("$STANCH_CP_ARGS $STANCH_CP_METRICS_ARGS")
    # Environment= first: EnvironmentFile= (controlplane.env) overrides it.
    assert unit.index("Environment=") < unit.index("EnvironmentFile=")
    required = ["--db", "x", "--assignment-key", "k", "--trust", "t"]
    args = server_config.parser().parse_args([*required, *shlex.split(env)])
    assert args.metrics_listen == ("127.0.0.1", 9465)


def test_the_kubernetes_deployment_exposes_the_endpoint_for_scraping() -> None:
    docs = list(yaml.safe_load_all((ROOT / "packaging/kubernetes/controlplane.yaml").read_text()))
    [deployment] = [d for d in docs if d and d["kind"] == "Deployment"]
    [service] = [d for d in docs if d and d["kind"] == "Service"]
    template = deployment["spec"]["template"]
    [container] = template["spec"]["containers"]
    [flag] = [a for a in container["args"] if a.startswith("--metrics-listen=")]
    required = ["--db", "x", "--assignment-key", "k", "--trust", "t"]
    _, port = server_config.parser().parse_args([*required, flag]).metrics_listen
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == port
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    [exposed] = [p for p in service["spec"]["ports"] if p["name"] == "metrics"]
    assert (exposed["port"], exposed["targetPort"]) == (port, "metrics")

"""The shipped packaging agrees with the code: units keep the settings remediations depend on,
manifests point the agent at /host and probe the endpoints the agent serves, configs and example
policies validate, and dashboards and alerts use only metrics the agent exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import parse_config
from agent.policy.loader import load_text

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
K8S = PACKAGING / "kubernetes"


def unit(name: str) -> dict[str, list[str]]:
    """``Key`` -> every value it is given (systemd allows repeats), across sections."""
    values: dict[str, list[str]] = {}
    for line in (PACKAGING / "systemd" / name).read_text().splitlines():
        if line.strip() and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_agent_unit_keeps_what_remediations_need() -> None:
    u = unit("stanch-agent.service")
    assert u["Type"] == ["notify"] and u["NotifyAccess"] == ["main"]
    assert u["WatchdogSec"] == ["60s"] and u["Restart"] == ["on-failure"]
    assert u["KillMode"] == ["mixed"]  # SIGTERM to the agent only: it drains running steps.
    assert u["StateDirectory"] == ["stanch"]
    assert u["ExecStart"] == ["/opt/stanch/bin/stanch-agent --config /etc/stanch/agent.yaml run"]
    # The choices that would silently break remediations or checks if flipped:
    assert u["PrivateTmp"] == ["no"]  # "clean /tmp" must clean the host's /tmp.
    assert u["ProtectSystem"] == ["full"]  # not strict: /var must stay writable.
    assert u["ProtectHome"] == ["read-only"]  # disk checks on /home see the real filesystem.
    assert u["ProtectProc"] == ["default"]  # process checks see every process.
    caps = set(u["CapabilityBoundingSet"][0].split())
    assert {"CAP_KILL", "CAP_SYS_PTRACE", "CAP_DAC_OVERRIDE", "CAP_SETUID"} <= caps
    assert "CAP_SYS_ADMIN" not in caps
    assert "PrivateNetwork" not in u  # port and HTTP checks need the host's loopback.


def test_controlplane_unit_runs_the_real_server_module() -> None:
    u = unit("stanch-controlplane.service")
    start = u["ExecStart"][0]
    assert start.startswith("/opt/stanch/bin/python -m controlplane.server ")
    assert (ROOT / "controlplane" / "server.py").is_file()
    assert u["DynamicUser"] == ["yes"] and u["ProtectSystem"] == ["strict"]
    assert u["CapabilityBoundingSet"] == [""]
    assert "--assignment-key %d/assignment.key" in start  # a credential, not a readable file


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s(kind: str, name: str) -> dict[str, Any]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in docs(path):
            if doc.get("kind") == kind and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no {kind} {name} under {K8S}")


def test_kustomization_lists_every_manifest_but_the_secret_examples() -> None:
    listed = set(docs(K8S / "kustomization.yaml")[0]["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present - {"secrets.example.yaml"}


def test_daemonset_sees_the_host_and_probes_the_agent() -> None:
    ds = k8s("DaemonSet", "stanch-agent")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] and pod["hostNetwork"] and pod["priorityClassName"] == "stanch-agent"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    [agent] = pod["containers"]
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    assert mounts["host-root"]["mountPath"] == "/host" and mounts["host-root"]["readOnly"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["host-root"]["hostPath"]["path"] == "/"
    assert volumes["state"]["hostPath"]["path"] == "/var/lib/stanch"
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"requests", "limits"} <= set(agent["resources"])
    assert {"SYS_ADMIN", "SYS_PTRACE", "SYS_CHROOT"} <= set(
        agent["securityContext"]["capabilities"]["add"]
    )  # nsenter into the host's namespaces
    config = yaml.safe_load(k8s("ConfigMap", "stanch-agent-config")["data"]["agent.yaml"])
    assert config["root"] == "/host" and config["state_dir"] == "/var/lib/stanch"
    port = int(config["metrics"]["listen"].rsplit(":", 1)[1])
    assert agent["livenessProbe"]["httpGet"]["port"] == port
    assert agent["readinessProbe"]["httpGet"]["port"] == port


@pytest.mark.parametrize("where", ["packaging/config/agent.yaml", "kubernetes ConfigMap"])
def test_shipped_agent_configs_validate(where: str) -> None:
    if where == "kubernetes ConfigMap":
        raw = yaml.safe_load(k8s("ConfigMap", "stanch-agent-config")["data"]["agent.yaml"])
    else:
        raw = yaml.safe_load((ROOT / where).read_text())
    config = parse_config(raw, where)
    assert config.metrics.enabled


def test_policies_shipped_in_the_configmap_validate() -> None:
    for name, text in k8s("ConfigMap", "stanch-policies")["data"].items():
        policies, errors = load_text(text, name)
        assert errors == [] and policies, name


def test_containerfile_copies_only_what_exists() -> None:
    text = (PACKAGING / "Containerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.startswith("COPY") and "--from=" not in line:
            sources = line.split()[1:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"Containerfile: COPY {source}: not in the repo"
    for wrapper in ("host", "systemctl", "journalctl"):
        path = PACKAGING / "container" / wrapper
        assert path.stat().st_mode & 0o111, f"{path} must be executable"


# ---- dashboards and alerts use only exported metrics ------------------------------------------

METRIC = re.compile(r"\b((?:stanch|process)_[a-z0-9_]+)\b")


def exported_names() -> set[str]:
    pytest.importorskip("prometheus_client", reason="prometheus-client is not installed")
    from prometheus_client import CollectorRegistry
    from prometheus_client.process_collector import ProcessCollector

    from agent.checks.base import CheckResult, Status
    from agent.instrumentation import (
        AgentSnapshot,
        BundleSnapshot,
        ChannelSnapshot,
        PolicySnapshot,
    )
    from agent.metrics import AgentMetrics, StateCollector
    from agent.sdnotify import Watchdog

    registry = CollectorRegistry(auto_describe=False)
    m = AgentMetrics(registry)
    m.observe_check("p", "c", CheckResult("c", Status.OK, error="x"))
    m.observe_decision("p", "act", "rule_matched")
    m.observe_remediation("p", "fixed", 1.0)
    m.observe_notification("s", "delivered")
    snap = AgentSnapshot(
        "h",
        (PolicySnapshot("p", "auto", True, False, False, 0, False),),
        bundle=BundleSnapshot("b", "d", 1, 0.0, 1.0, 0.5, False),
        notifications={"pending": 0},
        channel=ChannelSnapshot(True, 0, 0, 1.0),
    )
    registry.register(StateCollector(lambda: snap, Watchdog(None, None)))
    ProcessCollector(registry=registry)
    return {s.name for family in registry.collect() for s in family.samples}


def used_in_dashboard() -> set[str]:
    dash = json.loads((PACKAGING / "monitoring" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 15
    return {m for e in exprs for m in METRIC.findall(e)}


def used_in_alerts() -> set[str]:
    rules = yaml.safe_load((PACKAGING / "monitoring" / "alerts.yaml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return {m for e in exprs for m in METRIC.findall(e)}


@pytest.mark.parametrize("where", ["dashboard", "alerts"])
def test_monitoring_uses_only_exported_metrics(where: str) -> None:
    used = used_in_dashboard() if where == "dashboard" else used_in_alerts()
    missing = used - exported_names()
    assert missing == set(), f"{where} uses metrics the agent does not export: {sorted(missing)}"


def test_an_automation_failing_alert_exists() -> None:
    rules = yaml.safe_load((PACKAGING / "monitoring" / "alerts.yaml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"StanchAutomationFailing", "StanchNotificationsFailing", "StanchAgentDown"} <= names

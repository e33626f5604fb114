"""The agent's own configuration (``/etc/stanch/agent.yaml``), parsed like a policy: typed,
frozen, every error reported with its path. Passed in explicitly; there is no global config."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.engine.guardrails import StormGuard
from agent.errors import ConfigError
from agent.fleet.config import ControlPlaneConfig, parse_control_plane
from agent.instrumentation import MetricsConfig, parse_metrics
from agent.policy.fields import ErrorSink, Fields
from agent.policy.loader import parse_window
from agent.policy.model import Window
from agent.redact import DEFAULT_REDACTOR, PatternError, Redactor, compile_pattern

CONFIG_KIND = "AgentConfig"


@dataclass(frozen=True)
class AgentConfig:
    policies_dir: Path
    state_dir: Path
    host_id: str = field(default_factory=socket.gethostname)
    labels: dict[str, str] = field(default_factory=dict)
    root: Path = Path("/")
    max_concurrency: int = 2
    max_runs_per_hour: int = 20
    storm: StormGuard = StormGuard()
    default_sinks: tuple[str, ...] = ()
    sinks: dict[str, Any] = field(default_factory=dict)
    """Sink name -> parsed sink config (see ``agent.notify``)."""
    check_workers: int = 4
    maintenance: tuple[Window, ...] = ()
    """Host-wide maintenance windows: no policy acts inside them."""
    policy_source: str = "directory"
    """``directory``: load ``policies_dir``. ``bundle``: run the active signed bundle in
    ``state_dir`` (installed with ``stanch-agent bundle install``); never a silent fallback."""
    housekeeping_interval: float = 600.0
    control_plane: ControlPlaneConfig | None = None
    """Where to report and take assignments from; None runs the agent alone (no grpc loaded)."""
    metrics: MetricsConfig = MetricsConfig()
    """``metrics:``: the Prometheus endpoint with /healthz and /readyz (off by default)."""
    redactor: Redactor = DEFAULT_REDACTOR
    """Built-in patterns, the ``redact:`` patterns and the sinks' secret values (``agent.redact``):
    applied to command output before the journal, reports and logs see it."""

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def pause_path(self) -> Path:
        return self.state_dir / "pause.json"


def load_config(path: str | Path, **overrides: Any) -> AgentConfig:
    file = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise ConfigError([_error(file, f"cannot read: {exc.strerror}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([_error(file, f"invalid YAML: {exc}")]) from None
    return parse_config(raw, file, **overrides)


def parse_config(raw: object, file: str = "<config>", **overrides: Any) -> AgentConfig:
    """Build an AgentConfig; ``overrides`` (from command-line flags) win over the file."""
    from agent.notify import parse_sinks, sink_secrets

    sink = ErrorSink(file)
    f = Fields(raw, "", sink)
    api = f.string("apiVersion", "stanch.dev/v1")
    if api != "stanch.dev/v1":
        f.error("apiVersion", f"unsupported apiVersion {api!r}; use stanch.dev/v1")
    kind = f.string("kind", CONFIG_KIND)
    if kind != CONFIG_KIND:
        f.error("kind", f"expected {CONFIG_KIND!r}")
    host = f.section("host")
    host_id = host.string("id", socket.gethostname())
    labels = host.str_map("labels")
    host.done()
    policies = f.string("policies", "/etc/stanch/policies")
    source = f.choice("policy_source", {"directory": "directory", "bundle": "bundle"}, "directory")
    state = f.string("state_dir", "/var/lib/stanch")
    root = f.string("root", "/")
    limits = f.section("limits")
    max_concurrency = limits.integer("max_concurrency", 2, minimum=1)
    max_per_hour = limits.integer("max_runs_per_hour", 20, minimum=1)
    check_workers = limits.integer("check_workers", 4, minimum=1)
    limits.done()
    storm = f.section("storm")
    guard = StormGuard(storm.number("percent", 50.0, minimum=0), storm.integer("min_firing", 3))
    storm.done()
    windows = f.items("maintenance", lambda item, path: parse_window(item, path, sink))
    esc = f.section("escalation")
    default_sinks = esc.str_list("default_sinks", ())
    esc.done()
    sinks = parse_sinks(f.get("sinks", {}), f.at("sinks"), sink)
    patterns = _redact_patterns(f, sink)
    control_plane = parse_control_plane(f)
    metrics = parse_metrics(f.section("metrics"))
    f.done()
    if f.has("control_plane") and f.raw["control_plane"] is not None and source != "bundle":
        sink.add(
            "policy_source",
            "a control plane assigns signed bundles, so set policy_source: bundle "
            f"(got {source!r}); a local policy directory would silently ignore its rollouts",
        )
    for name in default_sinks:
        if name not in sinks:
            sink.add("escalation.default_sinks", f"no sink named {name!r} under sinks")
    secrets = sink_secrets(sinks)
    if sink.errors:
        raise ConfigError(sink.errors)
    values: dict[str, Any] = {
        "policies_dir": Path(policies),
        "state_dir": Path(state),
        "host_id": host_id,
        "labels": labels,
        "root": Path(root),
        "max_concurrency": max_concurrency,
        "max_runs_per_hour": max_per_hour,
        "storm": guard,
        "default_sinks": default_sinks,
        "sinks": sinks,
        "check_workers": check_workers,
        "policy_source": source,
        "maintenance": tuple(windows),
        "control_plane": control_plane,
        "metrics": metrics,
        "redactor": Redactor.build(patterns, secrets),
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("policies_dir", "state_dir", "root"):
        values[key] = Path(values[key])
    return AgentConfig(**values)


def _redact_patterns(f: Fields, sink: ErrorSink) -> tuple[str, ...]:
    """``redact: [regex, ...]``: extra patterns for command output, each compiled now so a bad
    one fails the load with its index rather than at 3 AM on the first output it meets."""
    patterns = f.str_list("redact", ())
    for index, text in enumerate(patterns):
        try:
            compile_pattern(text)
        except PatternError as exc:
            sink.add(f"redact[{index}]", f"{exc}; fix or remove this pattern")
    return tuple(patterns)


def _error(file: str, problem: str) -> Any:
    from agent.errors import FieldError

    return FieldError(file, "", problem)

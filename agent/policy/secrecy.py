"""Policies carry no secrets: they are signed once, copied to every host and kept by the control
plane. A step's env var that looks like a secret, and sink settings in a policy, are load
errors that say where the secret goes instead (a root-only file on the host, the agent config).
"""

from __future__ import annotations

from agent.policy.fields import ErrorSink, Fields, join

SECRET_SUFFIXES = ("_TOKEN", "_SECRET", "_PASSWORD", "_PASSWD", "_KEY", "_CREDENTIALS")
SECRET_NAMES = frozenset({"TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "API_KEY"})
SINK_SECRET_KEYS = ("url", "webhook", "routing_key", "token", "secret", "password", "headers")
SECRETS_ELSEWHERE = (
    "policies and bundles are signed once, copied to every host and kept by the control plane, "
    "so a secret here is readable by everyone who can read a rollout"
)


def no_secret_env(f: Fields, env: dict[str, str], sink: ErrorSink) -> None:
    """A step's ``env`` names no secret (``DB_PASSWORD``); its ``*_FILE`` path is fine."""
    for var in env:
        if var.upper() in SECRET_NAMES or var.upper().endswith(SECRET_SUFFIXES):
            sink.add(
                join(f.at("env"), var),
                f"looks like a secret; {SECRETS_ELSEWHERE}. Keep it in a root-only file on "
                f"the host and pass its path instead, e.g. {var}_FILE: /etc/stanch/secrets/...",
            )


def no_sinks_in_policy(spec: Fields) -> None:
    for key in ("sinks", "notify", "notifications"):
        if spec.has(key):
            spec.get(key)  # Reported here, with what to do, rather than as an unknown key.
            spec.error(
                key,
                f"sinks are configured in the agent config (sinks:), never in a policy: "
                f"{SECRETS_ELSEWHERE}. Name a configured sink under spec.escalation.sinks",
            )


def no_sink_settings(f: Fields) -> None:
    """``spec.escalation`` names configured sinks; their settings live in the agent config."""
    for key in list(f.raw):
        if isinstance(key, str) and key.startswith(SINK_SECRET_KEYS):
            f.get(key)  # Reported here, with what to do, rather than as an unknown key.
            f.error(
                key,
                f"sink settings and their secrets (webhook URLs, routing keys, tokens) belong "
                f"in the agent config, read from a *_file or *_env there; {SECRETS_ELSEWHERE}. "
                "Here, name a configured sink: escalation.sinks: [pager]",
            )

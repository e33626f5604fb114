"""Context suppression: "do not restart the app while its database is down: escalate"."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import AgentHarness


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_context_suppresses_until_the_dependency_is_back(
    harness: AgentHarness, tmp_path: Path
) -> None:
    """While the dependency's port is closed: 'context' and a page; once it listens: act."""
    port = free_port()
    flag = tmp_path / "flag"
    db = {"type": "port", "host": "127.0.0.1", "port": port, "interval": "1s",
          "connect_timeout": "200ms"}  # fmt: skip
    harness.write_policy(
        "ctx",
        harness.policy_yaml(
            "app-restart",
            checks={"app": harness.file_check(flag), "db": db},
            when={"check": "app", **harness.MISSING},
            unless=[{"check": "db", "state": "critical"}],
            steps=[harness.step("restart-app", ["touch", str(flag)])],
        ),
    )
    harness.start()
    row = harness.wait_decision("app-restart", "suppressed", "context")
    assert row.message == "suppressed: context db critical; not acting, escalating"
    assert row.observed["db.status"] == "critical" and row.observed["app.exists"] == 0
    page = harness.wait_escalation("context")
    assert page["policy"] == "app-restart" and page["message"] == row.message
    assert page["observed"]["db.status"] == "critical"
    assert harness.executions("app-restart") == []

    with socket.create_server(("127.0.0.1", port)) as listener:
        listener.listen()
        harness.wait_executions("app-restart", 1, "fixed")
    assert flag.exists()
    act = harness.wait_decision("app-restart", "act", "rule_matched")
    assert act.observed["db.status"] == "ok"

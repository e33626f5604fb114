"""End to end with a real agent: a problem the agent could not fix is escalated to a receiver,
and when it clears, the same receiver gets the resolve (what closes a PagerDuty incident)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import AgentHarness


@pytest.fixture
def received() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    bodies: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    server.shutdown()
    server.server_close()


def test_a_cleared_problem_resolves_its_page(
    harness: AgentHarness, tmp_path: Path, received: tuple[str, list[dict[str, Any]]]
) -> None:
    url, bodies = received
    key = tmp_path / "routing-key"
    key.write_text("R0UTING")
    harness.configure(
        sinks={
            "pager": {
                "type": "pagerduty",
                "routing_key_file": str(key),
                "url": f"{url}/v2/enqueue",
            },
            "log": {"type": "log", "path": str(harness.notify_log)},
        },
        escalation={"default_sinks": ["pager", "log"]},
    )
    flag = tmp_path / "flag"
    slow = {"cooldown": "1h", "budget": {"max": 1, "per": "1h"}}
    harness.write_policy(
        "web",
        harness.flag_policy(
            "web-flag", flag, fix=False, guardrails=slow, verify=harness.SHORT_VERIFY
        ),
    )
    harness.start()
    harness.wait_escalation("not_fixed")
    harness.wait_for(lambda: bodies, 10, what="the trigger at the PagerDuty receiver")
    trigger = bodies[0]
    assert trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == "stanch/test-host/web-flag"

    flag.touch()  # A human fixed it.
    harness.wait_decision("web-flag", "cleared")
    harness.wait_for(
        lambda: any(b["event_action"] == "resolve" for b in bodies), 10, what="the resolve"
    )
    resolve = bodies[-1]
    assert resolve == {
        "routing_key": "R0UTING",
        "event_action": "resolve",
        "dedup_key": "stanch/test-host/web-flag",
    }
    # The log sink did not ask for resolves and got none.
    assert [e["event"] for e in harness.escalations()] == ["trigger"] * len(harness.escalations())

"""PagerDuty, Slack and webhook sinks against a real HTTP receiver on a loopback port: the exact
bodies on the wire, trigger then resolve through the durable queue, retry on 429/5xx, a recorded
drop on other 4xx, and secrets that never reach the journal."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.clock import FakeClock
from agent.journal import Journal
from agent.notify import Notifier, build_payload, build_sinks, parse_sinks, resolve_payload
from agent.policy.fields import ErrorSink

ROUTING_KEY = "R0UTING-KEY-5ecret-0123456789abcdef"
SLACK_PATH = "/services/T0KEN/B0T/5ecret-path"
RUNBOOK = "https://runbooks.example.com/nginx/down"

TRIGGER = build_payload(
    policy="nginx-down",
    host="web-17",
    severity="critical",
    reason="not_fixed",
    message="still nginx.count = 0 < 1 after 30s",
    runbook=RUNBOOK,
    tried=[{"name": "restart", "ok": True, "exit_code": 0, "stdout": "", "stderr": ""}],
    observed={"nginx.count": 0},
    correlation_id="c0ffee",
    at=1_700_000_000.0,
    labels={"role": "web"},
)
RESOLVED = resolve_payload(
    "nginx-down", "web-17", "condition no longer holds", RUNBOOK, "c0ffee", 1_700_000_900.0, {}
)


class Receiver:
    """Records each POST (path, headers, JSON body) and answers from a script of statuses, then
    ``default`` forever. Error bodies echo the request, as careless receivers do."""

    def __init__(self, default: int = 200) -> None:
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": json.loads(raw)}
                )
                status = receiver.statuses.pop(0) if receiver.statuses else default
                text = b'{"status":"success"}' if status < 300 else b"bad request: " + raw
                self.send_response(status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests if r["path"] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(default=202)
    yield r
    r.close()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "state.db")
    yield j
    j.close()


@pytest.fixture
def secrets(tmp_path: Path, receiver: Receiver) -> Path:
    (tmp_path / "pd-key").write_text(ROUTING_KEY + "\n")
    (tmp_path / "slack-url").write_text(receiver.url + SLACK_PATH + "\n")
    return tmp_path


def notifier(journal: Journal, config: str, clock: FakeClock) -> Notifier:
    sink = ErrorSink("agent.yaml")
    configs = parse_sinks(yaml.safe_load(config), "sinks", sink)
    assert sink.errors == []
    return Notifier(journal, build_sinks(configs), clock, jitter=lambda: 1.0)


def rows(journal: Journal) -> dict[int, dict[str, Any]]:
    return {r["id"]: dict(r) for r in journal.notifications(200)}


def sinks_config(receiver: Receiver, secrets: Path) -> str:
    return f"""
    pager: {{type: pagerduty, routing_key_file: {secrets / "pd-key"},
             url: '{receiver.url}/v2/enqueue'}}
    chat: {{type: slack, url_file: {secrets / "slack-url"}}}
    hook: {{type: webhook, url: '{receiver.url}/hook'}}
    audit: {{type: log, path: {secrets / "audit.jsonl"}}}
    """


def test_trigger_then_resolve_reaches_pagerduty_and_slack(
    receiver: Receiver, journal: Journal, secrets: Path
) -> None:
    clock = FakeClock()
    n = notifier(journal, sinks_config(receiver, secrets), clock)
    seen: list[tuple[str, str]] = []
    n.observer = lambda sink, result: seen.append((sink, result))
    n.enqueue(TRIGGER, ["pager", "chat", "hook", "audit"])
    assert n.deliver_due() == 4

    [trigger] = receiver.bodies("/v2/enqueue")
    assert trigger["routing_key"] == ROUTING_KEY
    assert trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == "stanch/web-17/nginx-down"
    assert trigger["payload"]["summary"] == TRIGGER["summary"]
    assert trigger["payload"]["source"] == "web-17"
    assert trigger["payload"]["severity"] == "critical"
    assert trigger["payload"]["custom_details"]["tried"] == TRIGGER["tried"]
    assert trigger["payload"]["custom_details"]["runbook"] == RUNBOOK
    assert trigger["links"] == [{"href": RUNBOOK, "text": "Runbook"}]
    [slack] = receiver.bodies(SLACK_PATH)
    assert slack["text"].startswith(TRIGGER["summary"]) and RUNBOOK in slack["text"]
    assert [b["type"] for b in slack["blocks"]] == ["header", "section", "section", "context"]
    assert receiver.bodies("/hook") == [json.loads(json.dumps(TRIGGER))]
    headers = receiver.requests[0]["headers"]
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == "stanch-agent"

    # Fixed: only the sinks that want resolves get one (the log and the plain webhook do not).
    ids = n.enqueue_resolve(RESOLVED, ["pager", "chat", "hook", "audit"])
    assert len(ids) == 2
    assert n.deliver_due() == 2
    resolve = receiver.bodies("/v2/enqueue")[-1]
    assert resolve == {
        "routing_key": ROUTING_KEY,
        "event_action": "resolve",
        "dedup_key": "stanch/web-17/nginx-down",
    }
    assert receiver.bodies(SLACK_PATH)[-1]["text"] == "Resolved: nginx-down on web-17"
    assert len(receiver.bodies("/hook")) == 1
    audit = (secrets / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in audit] == ["trigger"]
    assert sorted(seen) == sorted(
        [(s, "delivered") for s in ("pager", "chat", "hook", "audit", "pager", "chat")]
    )


@pytest.mark.parametrize("status", [429, 500, 503])
def test_throttled_or_failing_pagerduty_is_retried_with_backoff(
    receiver: Receiver, journal: Journal, secrets: Path, status: int
) -> None:
    clock = FakeClock()
    receiver.statuses = [status]
    n = notifier(journal, sinks_config(receiver, secrets), clock)
    [nid] = n.enqueue(TRIGGER, ["pager"])
    assert n.deliver_due() == 0
    row = rows(journal)[nid]
    assert (row["status"], row["attempts"]) == ("pending", 1)
    assert row["next_at"] == clock.now() + 2.0
    assert f"HTTP {status}" in row["last_error"]
    assert ROUTING_KEY not in row["last_error"]  # The receiver echoed the body back.
    clock.advance(2.0)
    assert n.deliver_due() == 1
    assert len(receiver.bodies("/v2/enqueue")) == 2


@pytest.mark.parametrize("status", [400, 403, 404])
def test_a_rejected_event_is_dropped_and_recorded(
    receiver: Receiver, journal: Journal, secrets: Path, status: int
) -> None:
    clock = FakeClock()
    receiver.statuses = [status]
    n = notifier(journal, sinks_config(receiver, secrets), clock)
    seen: list[tuple[str, str]] = []
    n.observer = lambda sink, result: seen.append((sink, result))
    [pd, chat] = n.enqueue(TRIGGER, ["pager", "chat"])
    n.deliver_due()
    failed = rows(journal)[pd]
    assert (failed["status"], failed["attempts"]) == ("failed", 1)
    assert failed["last_error"].startswith(
        f"permanent: POST {receiver.url}/v2/enqueue: HTTP {status}"
    )
    assert ROUTING_KEY not in failed["last_error"]
    assert rows(journal)[chat]["status"] == "delivered"
    assert ("pager", "failed") in seen
    clock.advance(86400)
    assert n.deliver_due() == 0 and len(receiver.bodies("/v2/enqueue")) == 1


def test_slack_errors_never_show_the_token_path(
    receiver: Receiver, journal: Journal, secrets: Path
) -> None:
    clock = FakeClock()
    receiver.statuses = [500, 404]
    n = notifier(journal, sinks_config(receiver, secrets), clock)
    [nid] = n.enqueue(TRIGGER, ["chat"])
    n.deliver_due()
    error = rows(journal)[nid]["last_error"]
    assert error.startswith(f"POST {receiver.url}/***: HTTP 500")
    assert "T0KEN" not in error and "5ecret-path" not in error
    clock.advance(2.0)
    n.deliver_due()
    assert rows(journal)[nid]["status"] == "failed"  # 404: the hook was deleted; permanent.


def test_missing_or_empty_secret_files_are_retried(
    receiver: Receiver, journal: Journal, secrets: Path
) -> None:
    clock = FakeClock()
    (secrets / "pd-key").write_text("\n")
    n = notifier(journal, sinks_config(receiver, secrets), clock)
    [nid] = n.enqueue(TRIGGER, ["pager"])
    n.deliver_due()
    row = rows(journal)[nid]
    assert row["status"] == "pending"
    assert row["last_error"] == f"routing_key_file {secrets / 'pd-key'} is empty"
    (secrets / "pd-key").write_text(ROUTING_KEY)  # Rotated in place: no restart needed.
    clock.advance(2.0)
    assert n.deliver_due() == 1
    assert receiver.bodies("/v2/enqueue")[0]["routing_key"] == ROUTING_KEY

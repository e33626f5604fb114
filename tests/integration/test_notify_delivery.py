"""Escalation delivery against real things: an HTTP server on a loopback port, real scripts, real
files and a real SQLite journal that is closed and reopened like an agent restart."""

from __future__ import annotations

import contextlib
import json
import socket
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.clock import FakeClock, SystemClock
from agent.journal import Journal
from agent.notify import Notifier, build_payload, build_sinks, parse_sinks
from agent.policy.fields import ErrorSink
from agent.sinks import (
    CommandConfig,
    CommandSink,
    DeliveryError,
    LogConfig,
    LogSink,
    Sink,
    WebhookConfig,
    WebhookSink,
)

PAYLOAD = build_payload(
    policy="web-restart",
    host="web-1",
    severity="critical",
    reason="breaker_open",
    message="3 failed fixes in 1h",
    runbook="https://wiki.example/runbooks/web",
    tried=[{"name": "restart", "ok": False, "stderr": "unit failed"}],
    observed={"web.ok": 0.0},
    correlation_id="c0ffee",
    at=1_700_000_000.0,
    labels={"role": "web"},
)


class Receiver:
    """A webhook receiver: records each POST and answers from a script of statuses
    (then 200 forever). ``echo`` makes error bodies repeat the request target, as many real
    receivers do, which is how a secret in a URL would leak into an error."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.echo = False
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
                )
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                text = f"no such hook {self.path}" if receiver.echo else "ok"
                self.send_response(status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "state.db")
    yield j
    j.close()


def webhook(url: str, timeout: float = 2.0) -> WebhookSink:
    return WebhookSink(WebhookConfig(url=url, timeout=timeout))


def notifier(journal: Journal, sinks: dict[str, Sink], clock: Any, **kw: Any) -> Notifier:
    return Notifier(journal, sinks, clock, jitter=lambda: 1.0, **kw)


def row(journal: Journal, notification_id: int) -> dict[str, Any]:
    return next(dict(r) for r in journal.notifications() if r["id"] == notification_id)


def test_retries_with_exponential_backoff_until_delivered(
    receiver: Receiver, journal: Journal
) -> None:
    clock = FakeClock()
    receiver.statuses = [500, 503]
    n = notifier(journal, {"oncall": webhook(receiver.url + "/hook")}, clock)
    nid = journal.enqueue_notification("oncall", PAYLOAD, clock.now())
    start = clock.now()

    assert n.deliver_due() == 0
    first = row(journal, nid)
    assert (first["status"], first["attempts"]) == ("pending", 1)
    assert first["next_at"] == start + 2.0  # base_backoff * 2**0
    assert "HTTP 500" in first["last_error"]

    clock.advance(1.9)
    assert n.deliver_due() == 0 and len(receiver.requests) == 1  # Not due yet: not tried.
    clock.advance(0.1)
    assert n.deliver_due() == 0
    assert row(journal, nid)["next_at"] == clock.now() + 4.0  # base_backoff * 2**1
    assert journal.next_notification_at() == clock.now() + 4.0

    clock.advance(4.0)
    assert n.deliver_due() == 1
    done = row(journal, nid)
    assert (done["status"], done["attempts"], done["delivered_at"]) == (
        "delivered",
        3,
        clock.now(),
    )
    assert len(receiver.requests) == 3 and journal.next_notification_at() is None
    sent = receiver.requests[-1]
    assert sent["path"] == "/hook"
    assert sent["headers"]["Content-Type"] == "application/json"
    assert sent["headers"]["User-Agent"] == "stanch-agent"
    assert sent["body"] == json.loads(json.dumps(PAYLOAD))


def test_backoff_is_capped_and_jittered(receiver: Receiver, journal: Journal) -> None:
    clock = FakeClock()
    receiver.statuses = [500] * 3
    n = Notifier(
        journal,
        {"oncall": webhook(receiver.url)},
        clock,
        base_backoff=10.0,
        max_backoff=15.0,
        jitter=lambda: 1.2,
    )
    nid = journal.enqueue_notification("oncall", PAYLOAD, clock.now())
    n.deliver_due()
    assert row(journal, nid)["next_at"] == pytest.approx(clock.now() + 12.0)
    clock.advance(12.0)
    n.deliver_due()
    assert row(journal, nid)["next_at"] == pytest.approx(clock.now() + 18.0)  # min(15, 20) * 1.2


def test_client_error_is_permanent(receiver: Receiver, journal: Journal) -> None:
    clock = FakeClock()
    receiver.statuses = [400]
    n = notifier(journal, {"oncall": webhook(receiver.url)}, clock)
    nid = journal.enqueue_notification("oncall", PAYLOAD, clock.now())
    assert n.deliver_due() == 0
    failed = row(journal, nid)
    assert (failed["status"], failed["attempts"]) == ("failed", 1)
    assert failed["last_error"].startswith("permanent: POST http://127.0.0.1:")
    assert "HTTP 400" in failed["last_error"]
    clock.advance(86400)
    assert n.deliver_due() == 0 and len(receiver.requests) == 1


@pytest.mark.parametrize("status", [408, 429, 502])
def test_throttling_and_server_errors_are_retried(
    receiver: Receiver, journal: Journal, status: int
) -> None:
    clock = FakeClock()
    receiver.statuses = [status]
    n = notifier(journal, {"oncall": webhook(receiver.url)}, clock)
    nid = journal.enqueue_notification("oncall", PAYLOAD, clock.now())
    n.deliver_due()
    assert row(journal, nid)["status"] == "pending"
    clock.advance(2.0)
    assert n.deliver_due() == 1


def test_gives_up_after_max_attempts(receiver: Receiver, journal: Journal) -> None:
    clock = FakeClock()
    receiver.statuses = [500] * 10
    n = notifier(journal, {"oncall": webhook(receiver.url)}, clock, max_attempts=3)
    nid = journal.enqueue_notification("oncall", PAYLOAD, clock.now())
    for _ in range(5):
        n.deliver_due()
        clock.advance(3600)
    failed = row(journal, nid)
    assert (failed["status"], failed["attempts"]) == ("failed", 3)
    assert failed["last_error"].startswith("gave up after 3 attempts: POST")
    assert len(receiver.requests) == 3


def test_unknown_sink_name_fails_with_a_clear_error(journal: Journal) -> None:
    clock = FakeClock()
    n = notifier(journal, {"audit": LogSink(LogConfig("/dev/null"))}, clock)
    nid = journal.enqueue_notification("pager", PAYLOAD, clock.now())
    assert n.deliver_due() == 0
    failed = row(journal, nid)
    assert failed["status"] == "failed"
    assert (
        failed["last_error"] == "no sink named 'pager' is configured (known: audit); not delivered"
    )


SECRETS = ("T0KEN-PATH-5ecret", "qu3ry-5ecret", "p4ss-5ecret")


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.mark.parametrize("status", [500, 403])
def test_url_file_secret_never_reaches_the_journal(
    receiver: Receiver, journal: Journal, tmp_path: Path, status: int
) -> None:
    secret_url = receiver.url.replace("http://", "http://bot:p4ss-5ecret@")
    secret_url += "/services/T0KEN-PATH-5ecret?key=qu3ry-5ecret"
    url_file = tmp_path / "oncall.url"
    url_file.write_text(secret_url + "\n")
    receiver.statuses, receiver.echo = [status], True
    clock = FakeClock()
    sinks = build_sinks(_parse(f"oncall: {{type: webhook, url_file: {url_file}}}"))
    n = notifier(journal, sinks, clock)
    nid = journal.enqueue_notification("oncall", PAYLOAD, clock.now())
    n.deliver_due()
    error = row(journal, nid)["last_error"]
    assert receiver.requests[0]["path"] == "/services/T0KEN-PATH-5ecret?key=qu3ry-5ecret"
    assert receiver.requests[0]["headers"]["Authorization"].startswith("Basic ")
    assert f"HTTP {status}" in error and "no such hook ***" in error
    assert error.split(": HTTP")[0].endswith(
        "http://***@127.0.0.1:" + receiver.url.split(":")[-1] + "/***"
    )
    assert_no_secret(error)


def test_url_file_secret_is_not_in_connection_errors(journal: Journal, tmp_path: Path) -> None:
    with socket.socket() as s:  # A port nobody listens on.
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url_file = tmp_path / "oncall.url"
    url_file.write_text(f"http://127.0.0.1:{port}/services/T0KEN-PATH-5ecret?key=qu3ry-5ecret")
    sink = WebhookSink(WebhookConfig(url_file=str(url_file), timeout=2.0))
    with pytest.raises(DeliveryError) as caught:
        sink.send(PAYLOAD)
    assert caught.value.retryable
    assert f"POST http://127.0.0.1:{port}/***:" in caught.value.message
    assert_no_secret(caught.value.message)


def test_url_env_and_missing_sources(receiver: Receiver, tmp_path: Path) -> None:
    environ = {"STANCH_ONCALL_URL": receiver.url + "/env-hook"}
    WebhookSink(WebhookConfig(url_env="STANCH_ONCALL_URL"), environ).send(PAYLOAD)
    assert receiver.requests[-1]["path"] == "/env-hook"

    with pytest.raises(DeliveryError, match="STANCH_ONCALL_URL .* is not set") as missing:
        WebhookSink(WebhookConfig(url_env="STANCH_ONCALL_URL"), {}).send(PAYLOAD)
    assert missing.value.retryable
    with pytest.raises(DeliveryError, match="cannot read url_file .*: No such file") as absent:
        WebhookSink(WebhookConfig(url_file=str(tmp_path / "nope"))).send(PAYLOAD)
    assert absent.value.retryable
    (tmp_path / "bad.url").write_text("ftp://T0KEN-PATH-5ecret.example/")
    with pytest.raises(DeliveryError) as bad:
        WebhookSink(WebhookConfig(url_file=str(tmp_path / "bad.url"))).send(PAYLOAD)
    assert not bad.value.retryable and "must be an absolute http" in bad.value.message
    assert_no_secret(bad.value.message)


class SilentServer:
    """Accepts connections and then either says nothing or dribbles one byte at a time,
    the two ways a receiver can hang a client that only sets a socket timeout."""

    def __init__(self, dribble: bool) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.accepted = 0
        self.dribble = dribble
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        held = []
        while not self.closing.is_set():
            try:
                conn, _ = self.sock.accept()
                self.accepted += 1
                held.append(conn)
            except TimeoutError:
                pass
            for conn in held if self.dribble else ():
                with contextlib.suppress(OSError):
                    conn.send(b"H")
        for conn in held:
            conn.close()

    def close(self) -> None:
        self.closing.set()
        self.thread.join(5)
        self.sock.close()


@pytest.mark.parametrize("dribble", [False, True])
def test_a_hanging_webhook_is_bounded_by_its_timeout(dribble: bool) -> None:
    server = SilentServer(dribble)
    try:
        started = time.monotonic()
        with pytest.raises(DeliveryError, match=r"timed out \(timeout 0.5s\)") as caught:
            webhook(server.url, timeout=0.5).send(PAYLOAD)
        assert time.monotonic() - started < 2.5
        assert caught.value.retryable
    finally:
        server.close()


def test_a_failing_sink_does_not_hold_up_the_others(journal: Journal, tmp_path: Path) -> None:
    server = SilentServer(dribble=False)
    try:
        clock = FakeClock()
        log_path = tmp_path / "escalations.jsonl"
        sinks: dict[str, Sink] = {
            "slow": webhook(server.url, timeout=0.5),
            "audit": LogSink(LogConfig(str(log_path))),
        }
        n = notifier(journal, sinks, clock)
        slow = [journal.enqueue_notification("slow", PAYLOAD, clock.now()) for _ in range(4)]
        audit = [journal.enqueue_notification("audit", PAYLOAD, clock.now()) for _ in range(4)]
        started = time.monotonic()
        assert n.deliver_due() == 4
        assert time.monotonic() - started < 1.9  # One timeout (0.5 s), not four.
        assert server.accepted == 1
        assert [row(journal, i)["status"] for i in audit] == ["delivered"] * 4
        assert len(log_path.read_text().splitlines()) == 4
        deferred = [row(journal, i) for i in slow[1:]]
        assert all(r["status"] == "pending" for r in deferred)
        assert all(r["last_error"].startswith("not tried, sink failed earlier") for r in deferred)
    finally:
        server.close()


def test_command_sink_gets_the_payload_on_stdin(journal: Journal, tmp_path: Path) -> None:
    script = tmp_path / "page-oncall"
    script.write_text('#!/bin/sh\ncat > "$1"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    out = tmp_path / "paged.json"
    clock = FakeClock()
    sinks = build_sinks(_parse(f"page: {{type: command, run: [{script}, {out}]}}"))
    n = notifier(journal, sinks, clock)
    nid = journal.enqueue_notification("page", PAYLOAD, clock.now())
    assert n.deliver_due() == 1
    assert json.loads(out.read_text()) == json.loads(json.dumps(PAYLOAD))
    assert row(journal, nid)["status"] == "delivered"


def test_command_sink_failure_is_retried_with_the_stderr_tail(journal: Journal) -> None:
    clock = FakeClock()
    run = ("/bin/sh", "-c", "echo noise >&2; echo 'pager API down' >&2; exit 3")
    n = notifier(journal, {"page": CommandSink(CommandConfig(run, 5.0))}, clock)
    nid = journal.enqueue_notification("page", PAYLOAD, clock.now())
    assert n.deliver_due() == 0
    pending = row(journal, nid)
    assert pending["status"] == "pending"
    assert pending["last_error"] == "/bin/sh: exited with status 3: noise\npager API down"

    hanging = CommandSink(CommandConfig(("/bin/sleep", "30"), 0.3))
    with pytest.raises(DeliveryError, match="timed out after 0.3s") as caught:
        hanging.send(PAYLOAD)
    assert caught.value.retryable


def test_log_sink_appends_one_json_line_each(journal: Journal, tmp_path: Path) -> None:
    path = tmp_path / "escalations.jsonl"
    clock = FakeClock()
    n = notifier(journal, build_sinks(_parse(f"audit: {{type: log, path: {path}}}")), clock)
    journal.enqueue_notification("audit", PAYLOAD, clock.now())
    journal.enqueue_notification("audit", {**PAYLOAD, "reason": "storm"}, clock.now())
    assert n.deliver_due() == 2
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["reason"] for line in lines] == ["breaker_open", "storm"]

    missing_dir = LogSink(LogConfig(str(tmp_path / "no" / "such" / "dir.jsonl")))
    with pytest.raises(DeliveryError, match="cannot append to .*: No such file") as caught:
        missing_dir.send(PAYLOAD)
    assert caught.value.retryable


def test_pending_rows_survive_an_agent_restart(receiver: Receiver, tmp_path: Path) -> None:
    clock = FakeClock()
    receiver.statuses = [500]
    first = Journal(tmp_path / "state.db")
    # One row the first agent tried once (the receiver failed it), one it never got to.
    retried = first.enqueue_notification("oncall", PAYLOAD, clock.now())
    notifier(first, {"oncall": webhook(receiver.url)}, clock).deliver_due()
    fresh = first.enqueue_notification("oncall", {**PAYLOAD, "reason": "storm"}, clock.now())
    assert row(first, retried)["attempts"] == 1 and row(first, fresh)["attempts"] == 0
    first.close()

    clock.advance(2.0)
    second = Journal(tmp_path / "state.db")  # The restarted agent: new journal, new notifier.
    try:
        n = notifier(second, {"oncall": webhook(receiver.url)}, clock)
        assert n.deliver_due() == 2
        assert [row(second, i)["status"] for i in (retried, fresh)] == ["delivered"] * 2
        assert row(second, retried)["attempts"] == 2
        reasons = sorted(r["body"]["reason"] for r in receiver.requests[1:])
        assert reasons == ["breaker_open", "storm"]
    finally:
        second.close()


def test_the_thread_delivers_promptly_and_follows_backoff(
    receiver: Receiver, journal: Journal
) -> None:
    receiver.statuses = [500]
    n = Notifier(journal, {"oncall": webhook(receiver.url)}, SystemClock(), base_backoff=0.2)
    n.start()
    try:
        started = time.monotonic()
        (nid,) = n.enqueue(PAYLOAD, ["oncall"])
        while row(journal, nid)["status"] != "delivered":
            assert time.monotonic() - started < 10.0, row(journal, nid)
            time.sleep(0.02)
        # Woken at once for the first attempt, then slept only until the retry was due
        # (not the 30 s idle poll).
        assert time.monotonic() - started < 5.0
        assert len(receiver.requests) == 2
    finally:
        assert n.stop(timeout=5.0)


def test_stop_is_prompt_when_idle(journal: Journal, tmp_path: Path) -> None:
    clock = SystemClock()
    n = Notifier(journal, {"audit": LogSink(LogConfig(str(tmp_path / "audit.jsonl")))}, clock)
    n.start()
    time.sleep(0.05)
    started = time.monotonic()
    assert n.stop(timeout=5.0)
    assert time.monotonic() - started < 1.0
    assert n.stop() is True  # Idempotent.
    # Stopping the thread does not disable direct delivery (a final flush at shutdown).
    journal.enqueue_notification("audit", PAYLOAD, clock.now())
    assert n.deliver_due() == 1


def _parse(text: str) -> Any:
    sink = ErrorSink("agent.yaml")
    configs = parse_sinks(yaml.safe_load(text), "sinks", sink)
    assert sink.errors == []
    return configs


def test_command_sinks_get_the_scrubbed_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API token in the agent's environment is not handed to the paging script."""
    out = tmp_path / "env.txt"
    monkeypatch.setenv("PAGER_API_TOKEN", "tok-5ecret")
    CommandSink(CommandConfig(("/bin/sh", "-c", f"env > {out}"), 5.0)).send(PAYLOAD)
    assert "tok-5ecret" not in out.read_text()


def test_a_url_http_client_refuses_is_permanent_and_redacted(tmp_path: Path) -> None:
    url_file = tmp_path / "oncall.url"
    url_file.write_text("http://127.0.0.1:9/hooks/T0KEN-PATH-5ecret/é")
    with pytest.raises(DeliveryError) as caught:
        WebhookSink(WebhookConfig(url_file=str(url_file))).send(PAYLOAD)
    assert not caught.value.retryable
    assert caught.value.message.startswith("POST http://127.0.0.1:9/***: cannot send:")
    assert_no_secret(caught.value.message)

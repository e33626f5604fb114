"""port, http and prometheus checks against real sockets and a real http.server on 127.0.0.1:0."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.checks.testing import build_check
from agent.errors import CheckError

EXPOSITION = b"""# HELP queue_depth Jobs waiting.
# TYPE queue_depth gauge
queue_depth{queue="mail",shard="1"} 17
queue_depth{queue="mail",shard="2"} 4
queue_depth{queue="sms",note="a \\"quoted\\" value"} 3 1700000000000
queue_depth_total 21
replication_lag_seconds +Inf
"""


class Handler(BaseHTTPRequestHandler):
    """Routes: /ok 200, /teapot 418, /redirect 302, /big (1 MiB), /slow, /metrics, /headers."""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        if self.path.startswith("/slow"):
            time.sleep(1.0)
        routes = {
            "/ok": (200, b"fine"),
            "/ok?x=1": (200, b"query kept"),
            "/teapot": (418, b"short and stout"),
            "/redirect": (302, b""),
            "/big": (200, b"x" * (1 << 20)),
            "/slow": (200, b"late"),
            "/metrics": (200, EXPOSITION),
            "/headers": (200 if self.headers.get("X-Token") == "t0k" else 403, b""),
        }
        status, body = routes.get(self.path, (404, b"not here"))
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "/teapot")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # On /big the client reads its 64 KiB and hangs up, as it should.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def free_port() -> int:
    """A port nothing listens on: bound and closed again (refused on connect)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# ---- port ------------------------------------------------------------------------------------


def test_port_open_and_closed() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        sample = build_check("port", {"port": port}).sample()
        assert sample.metrics["ok"] == 1.0 and 0 <= float(sample.metrics["connect_ms"]) < 1000
    sample = build_check("port", {"port": free_port()}).sample()
    assert sample.metrics["ok"] == 0.0 and "refused" in sample.summary.lower()


def test_port_times_out_within_connect_timeout() -> None:
    # A listener that never accepts, with its backlog full: Linux drops further SYNs, so the
    # next connect hangs until its timeout -- a wedged service, made locally.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(3):
                try:
                    fillers.append(socket.create_connection(("127.0.0.1", port), timeout=0.2))
                except TimeoutError:
                    break
            started = time.monotonic()
            raw = {"port": port, "connect_timeout": "200ms"}
            sample = build_check("port", raw).sample()
        finally:
            for s in fillers:
                s.close()
    assert sample.metrics["ok"] == 0.0 and "timed out" in sample.summary
    assert 0.15 < time.monotonic() - started < 1.0


# ---- http ------------------------------------------------------------------------------------


def test_http_ok_and_latency(server: str) -> None:
    sample = build_check("http", {"url": f"{server}/ok"}).sample()
    assert sample.metrics["ok"] == 1.0 and sample.metrics["status"] == 200.0
    assert 0 < float(sample.metrics["latency_ms"]) < 1000
    assert build_check("http", {"url": f"{server}/ok?x=1"}).sample().metrics["ok"] == 1.0


def test_http_status_rules(server: str) -> None:
    assert build_check("http", {"url": f"{server}/teapot"}).sample().metrics["ok"] == 0.0
    raw = {"url": f"{server}/teapot", "expect_status": 418}
    assert build_check("http", raw).sample().metrics["ok"] == 1.0
    raw = {"url": f"{server}/ok", "expect_status": 204}
    assert build_check("http", raw).sample().metrics["ok"] == 0.0


def test_http_does_not_follow_redirects(server: str) -> None:
    sample = build_check("http", {"url": f"{server}/redirect"}).sample()
    assert sample.metrics["status"] == 302.0 and sample.metrics["ok"] == 1.0


def test_http_sends_headers(server: str) -> None:
    raw = {"url": f"{server}/headers", "headers": {"X-Token": "t0k"}}
    assert build_check("http", raw).sample().metrics["status"] == 200.0
    assert build_check("http", {"url": f"{server}/headers"}).sample().metrics["status"] == 403.0


def test_http_reads_a_large_body_only_in_part(server: str) -> None:
    sample = build_check("http", {"url": f"{server}/big"}).sample()
    assert sample.metrics["ok"] == 1.0


def test_http_connection_refused_and_timeout(server: str) -> None:
    sample = build_check("http", {"url": f"http://127.0.0.1:{free_port()}/"}).sample()
    assert sample.metrics == {"ok": 0.0, "status": 0.0, "latency_ms": sample.metrics["latency_ms"]}
    started = time.monotonic()
    raw = {"url": f"{server}/slow", "request_timeout": "200ms"}
    sample = build_check("http", raw).sample()
    assert sample.metrics["ok"] == 0.0 and sample.metrics["status"] == 0.0
    assert time.monotonic() - started < 0.9


def test_https_against_a_plain_server_is_not_ok(server: str) -> None:
    url = server.replace("http://", "https://") + "/ok"
    sample = build_check("http", {"url": url, "request_timeout": "2s"}).sample()
    assert sample.metrics["ok"] == 0.0 and sample.metrics["status"] == 0.0


# ---- prometheus ------------------------------------------------------------------------------


def test_prometheus_value_by_labels(server: str) -> None:
    raw = {"url": f"{server}/metrics", "metric": "queue_depth", "labels": {"shard": "2"}}
    sample = build_check("prometheus", raw).sample()
    assert sample.metrics == {"value": 4.0, "found": 1.0}
    raw["labels"] = {"note": 'a "quoted" value'}
    assert build_check("prometheus", raw).sample().metrics["value"] == 3.0


def test_prometheus_first_of_several_matches_and_specials(server: str) -> None:
    raw = {"url": f"{server}/metrics", "metric": "queue_depth", "labels": {"queue": "mail"}}
    sample = build_check("prometheus", raw).sample()
    assert sample.metrics["value"] == 17.0 and "first of 2" in sample.summary
    raw = {"url": f"{server}/metrics", "metric": "replication_lag_seconds"}
    assert build_check("prometheus", raw).sample().metrics["value"] == float("inf")


def test_prometheus_missing_series_is_not_found(server: str) -> None:
    raw = {"url": f"{server}/metrics", "metric": "queue_depth", "labels": {"queue": "fax"}}
    sample = build_check("prometheus", raw).sample()
    assert sample.metrics == {"value": 0.0, "found": 0.0} and "not found" in sample.summary


def test_prometheus_unreachable_or_non_200_is_unknown(server: str) -> None:
    raw = {"url": f"{server}/nope", "metric": "up"}
    with pytest.raises(CheckError, match="HTTP 404"):
        build_check("prometheus", raw).sample()
    raw = {"url": f"http://127.0.0.1:{free_port()}/metrics", "metric": "up"}
    with pytest.raises(CheckError, match="cannot scrape"):
        build_check("prometheus", raw).sample()

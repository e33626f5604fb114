"""``http``: does a URL answer with an acceptable status, and how fast.

One GET, no redirects followed (a 302 to a login page is an answer worth seeing, not one to chase),
at most 64 KiB of body read. ``http.client`` and ``ssl`` are imported inside ``fetch`` so an agent
without HTTP checks never loads them. ``fetch`` is shared with the ``prometheus`` check.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from agent.checks.base import Check, CheckEnv, CheckType, Sample, Threshold, describe_error
from agent.policy.fields import Fields

BODY_LIMIT = 64 * 1024
USER_AGENT = "stanch-agent"


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    truncated: bool
    latency: float
    """Seconds from connecting to the end of the (capped) body."""


def fetch(
    url: str, headers: Mapping[str, str], timeout: float, limit: int = BODY_LIMIT
) -> Response:
    """GET ``url``. Raises OSError or http.client.HTTPException when there is no HTTP answer."""
    import http.client

    parts = urlsplit(url)
    host = parts.hostname or ""
    started = time.monotonic()
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        import ssl

        context = ssl.create_default_context()
        conn = http.client.HTTPSConnection(host, parts.port or 443, timeout=timeout,
                                           context=context)  # fmt: skip
    else:
        # An explicit port keeps http.client from reading one out of an IPv6 address.
        conn = http.client.HTTPConnection(host, parts.port or 80, timeout=timeout)
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target, headers={"User-Agent": USER_AGENT, **headers})
        resp = conn.getresponse()
        body = resp.read(limit + 1)
        return Response(resp.status, body[:limit], len(body) > limit, time.monotonic() - started)
    finally:
        conn.close()


def parse_url(f: Fields, key: str, schemes: tuple[str, ...]) -> str:
    """Read and validate a URL key; returns "" after reporting a problem."""
    url = f.string(key)
    if not isinstance(url, str):
        return ""
    try:
        parts = urlsplit(url)
        _ = parts.port  # Raises ValueError for a port that is not a number or out of range.
    except ValueError as exc:
        f.error(key, f"invalid URL: {exc}")
        return ""
    if parts.scheme not in schemes or not parts.hostname:
        want = " or ".join(f"{s}://" for s in schemes)
        f.error(key, f"must be an absolute {want} URL, e.g. {schemes[0]}://127.0.0.1:8080/health")
        return ""
    if parts.username or parts.password:
        f.error(key, "must not carry credentials; send them with 'headers' (Authorization)")
        return ""
    return url


@dataclass(frozen=True)
class HttpConfig:
    url: str
    expect_status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    request_timeout: float = 5.0


def parse(f: Fields) -> HttpConfig:
    url = parse_url(f, "url", ("http", "https"))
    expect = f.integer("expect_status", None, minimum=100)
    if isinstance(expect, int) and expect > 599:
        f.error("expect_status", f"must be an HTTP status between 100 and 599, got {expect}")
    headers = f.str_map("headers")
    for name, value in headers.items():
        if any(c in name + value for c in "\r\n\0") or not name.strip():
            f.error("headers", f"header {name!r} has a line break or NUL, or an empty name")
    timeout = f.duration("request_timeout", "5s", minimum=0.01)
    return HttpConfig(url, expect, headers, timeout or 5.0)


class HttpCheck:
    def __init__(self, config: HttpConfig) -> None:
        self.config = config

    def sample(self) -> Sample:
        import http.client

        c = self.config
        started = time.monotonic()
        try:
            resp = fetch(c.url, c.headers, c.request_timeout)
        except (OSError, http.client.HTTPException) as exc:
            elapsed = (time.monotonic() - started) * 1000.0
            return Sample({"ok": 0.0, "status": 0.0, "latency_ms": round(elapsed, 2)},
                          f"GET {c.url}: {describe_error(exc)}")  # fmt: skip
        if c.expect_status is not None:
            ok = resp.status == c.expect_status
        else:
            ok = 200 <= resp.status < 400
        latency = resp.latency * 1000.0
        metrics = {"ok": 1.0 if ok else 0.0, "status": float(resp.status),
                   "latency_ms": round(latency, 2)}  # fmt: skip
        return Sample(metrics, f"GET {c.url}: {resp.status} in {latency:.0f} ms")


def build(config: HttpConfig, env: CheckEnv) -> Check:
    return HttpCheck(config)


HTTP = CheckType(
    name="http",
    parse=parse,
    build=build,
    metrics=frozenset({"ok", "status", "latency_ms"}),
    default_critical=Threshold("ok", "<", 1.0),
    description="One GET of a URL: whether the status is acceptable, the status and latency.",
)

"""Where escalations go: the registry of sink types (``webhook``, ``command``, ``log``).

A sink type follows the check-type contract: ``parse(Fields)`` turns its YAML keys into a typed,
frozen config at load time, and ``build(config)`` makes a ``Sink``. ``Sink.send(payload)`` makes one
delivery attempt and either returns (delivered) or raises ``DeliveryError``, whose ``retryable``
flag tells the ``Notifier`` whether backing off and trying again can help.

Secrets stay out of errors. A webhook URL read from ``url_file`` or ``url_env`` (the way to keep it
out of policy bundles and config) is never repeated in a message: errors name only its scheme and
host. For any URL, userinfo and the query string are redacted, and every secret fragment is
scrubbed from text that came back from the network, since ``last_error`` lands in the journal and
in ``stanch-agent status``.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import SplitResult, urlsplit

from agent.errors import StanchError
from agent.policy.fields import Fields
from agent.subproc import run_bounded, scrubbed_env

USER_AGENT = "stanch-agent"
ERROR_BODY_LIMIT = 512
MAX_TIMEOUT = 120.0
"""Sinks are tried one after another; a longer timeout would hold up every other sink."""
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REDACTED = "***"


class DeliveryError(StanchError):
    """One delivery attempt failed. ``retryable`` is False when trying again cannot help
    (the receiver rejected the request as malformed, or the URL is not usable)."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class Sink(Protocol):
    def send(self, payload: Mapping[str, Any]) -> None:
        """Deliver once or raise DeliveryError. Must return within the sink's timeout."""
        ...


@dataclass(frozen=True)
class SinkType:
    name: str
    parse: Callable[[Fields], Any]
    build: Callable[[Any], Sink]
    description: str = ""


def _bounded_timeout(f: Fields, default: float) -> float:
    seconds = f.duration("timeout", default, minimum=0.01)
    if isinstance(seconds, float) and seconds > MAX_TIMEOUT:
        f.error("timeout", f"must be at most {MAX_TIMEOUT:g}s; sinks are tried one at a time")
    return min(seconds, MAX_TIMEOUT) if isinstance(seconds, float) and seconds > 0 else default


# ---- webhook ---------------------------------------------------------------------------------


def redact_url(url: str, secret: bool = False) -> str:
    """A URL fit for an error message: no userinfo, no query, no fragment; for a URL that is
    itself a secret (Slack-style tokens live in the path) only the scheme and host remain."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    if not parts.scheme or not parts.hostname:
        return "<invalid URL>"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = (f"{_REDACTED}@" if "@" in parts.netloc else "") + host
    netloc += f":{port}" if port is not None else ""
    if secret:
        return f"{parts.scheme}://{netloc}/{_REDACTED}"
    query = f"?{_REDACTED}" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"


def _secret_fragments(parts: SplitResult, url: str, secret: bool) -> list[str]:
    """Substrings that must never appear in an error, longest first so that replacing the
    whole URL happens before replacing a piece of it."""
    pieces = [url, parts.query, parts.password or "", parts.netloc.rpartition("@")[0]]
    if secret and len(parts.path) > 1:
        pieces += [parts.path, parts.path.lstrip("/")]
    return sorted({p for p in pieces if len(p) >= 3}, key=len, reverse=True)


def _scrub(text: str, fragments: list[str]) -> str:
    for fragment in fragments:
        text = text.replace(fragment, _REDACTED)
    return text


@dataclass(frozen=True)
class WebhookConfig:
    url: str | None = None
    url_file: str | None = None
    url_env: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 5.0


def parse_webhook(f: Fields) -> WebhookConfig:
    url = f.string("url", None)
    url_file = f.string("url_file", None)
    url_env = f.string("url_env", None)
    given = [k for k, v in (("url", url), ("url_file", url_file), ("url_env", url_env)) if v]
    if len(given) != 1:
        f.error(
            "url",
            "give exactly one of url, url_file (a file holding the URL; keeps secrets out of "
            f"config) or url_env (an environment variable); got {', '.join(given) or 'none'}",
        )
    if isinstance(url, str) and url:
        try:
            problem = _url_problem(urlsplit(url))
        except ValueError:
            problem = "is not a valid URL (check the port)"
        if problem:
            f.error("url", f"{problem}; e.g. https://alerts.example.com/hook")
    if isinstance(url_file, str) and url_file and not url_file.startswith("/"):
        f.error("url_file", "must be an absolute path")
    if isinstance(url_env, str) and url_env and not _ENV_NAME.fullmatch(url_env):
        f.error("url_env", "must be an environment variable name such as STANCH_WEBHOOK_URL")
    headers = f.str_map("headers")
    for name, value in headers.items():
        if not name.strip() or any(c in name + value for c in "\r\n\0") or ":" in name:
            f.error("headers", f"header {name!r}: empty name, or a colon, line break or NUL")
    timeout = _bounded_timeout(f, 5.0)
    return WebhookConfig(url, url_file, url_env, tuple(sorted(headers.items())), timeout)


def _url_problem(parts: SplitResult) -> str | None:
    _ = parts.port  # Raises ValueError for a port that is not a number or out of range.
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an absolute http:// or https:// URL"
    return None


class WebhookSink:
    """POSTs the payload as JSON. 2xx is delivered; 408, 429, 5xx and network errors are worth
    retrying; any other status is permanent (a 400 will be a 400 next time too). Redirects are
    not followed: the URL should name the receiver itself."""

    def __init__(self, config: WebhookConfig, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self._environ = os.environ if environ is None else environ

    def _resolve(self) -> tuple[str, bool]:
        """The URL to use now and whether it is a secret. Read at send time, so rotating the
        secret file needs no restart."""
        c = self.config
        if c.url:
            return c.url, False
        if c.url_file:
            try:
                with open(c.url_file, encoding="utf-8") as fh:
                    return fh.read(8192).strip(), True
            except OSError as exc:
                raise DeliveryError(
                    f"cannot read url_file {c.url_file}: {exc.strerror}", retryable=True
                ) from None
        value = self._environ.get(c.url_env or "", "").strip()
        if not value:
            raise DeliveryError(
                f"environment variable {c.url_env} (url_env) is not set in the agent's environment",
                retryable=True,
            )
        return value, True

    def send(self, payload: Mapping[str, Any]) -> None:
        import http.client

        url, secret = self._resolve()
        try:
            parts = urlsplit(url)
            problem = _url_problem(parts)
        except ValueError:
            parts, problem = urlsplit(""), "is not a valid URL"
        if problem:
            # Never echo the value: it came from a secret file or variable.
            where = self.config.url_file or self.config.url_env or "url"
            raise DeliveryError(f"the webhook URL from {where} {problem}", retryable=False)
        shown = redact_url(url, secret)
        fragments = _secret_fragments(parts, url, secret)
        body = json.dumps(dict(payload), default=str).encode()
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if parts.username is not None:
            import base64

            userinfo = f"{parts.username}:{parts.password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(userinfo).decode()
        headers.update(self.config.headers)
        conn = _connect(parts, self.config.timeout)
        # The socket timeout bounds each read; the watchdog bounds the whole exchange, so a
        # receiver that dribbles a byte at a time cannot hold the notifier past the timeout.
        expired = threading.Event()
        watchdog = threading.Timer(self.config.timeout, _abort, (conn, expired))
        watchdog.daemon = True
        watchdog.start()
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("POST", target, body=body, headers=headers)
            resp = conn.getresponse()
            status, reason = resp.status, resp.reason
            text = resp.read(ERROR_BODY_LIMIT).decode("utf-8", "replace") if status >= 300 else ""
        except (OSError, http.client.HTTPException) as exc:
            why = "timed out" if expired.is_set() else _scrub(_describe(exc), fragments)
            raise DeliveryError(
                f"POST {shown}: {why} (timeout {self.config.timeout:g}s)", retryable=True
            ) from None
        except ValueError as exc:  # A URL or header http.client refuses (non-ASCII, say).
            why = _scrub(_describe(exc), fragments)
            raise DeliveryError(f"POST {shown}: cannot send: {why}", retryable=False) from None
        finally:
            watchdog.cancel()
            conn.close()
        if 200 <= status < 300:
            return
        # Receivers often echo the request target in error bodies: scrub what came back.
        body_text = " ".join(text.split())
        detail = _scrub(f"{reason}: {body_text}" if body_text else reason, fragments)[:200]
        message = f"POST {shown}: HTTP {status} {detail}"
        if 300 <= status < 400:
            message += "; redirects are not followed, point the sink at the final URL"
        raise DeliveryError(message, retryable=status in (408, 429) or status >= 500)


def _connect(parts: SplitResult, timeout: float) -> Any:
    import http.client

    host = parts.hostname or ""
    if parts.scheme == "https":
        import ssl

        return http.client.HTTPSConnection(
            host, parts.port or 443, timeout=timeout, context=ssl.create_default_context()
        )
    # An explicit port keeps http.client from reading one out of an IPv6 address.
    return http.client.HTTPConnection(host, parts.port or 80, timeout=timeout)


def _abort(conn: Any, expired: threading.Event) -> None:
    import contextlib
    import socket

    expired.set()
    sock = getattr(conn, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _describe(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


WEBHOOK = SinkType(
    "webhook",
    parse_webhook,
    WebhookSink,
    "POST the payload as JSON to an http(s) URL (url, url_file or url_env).",
)


# ---- command ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandConfig:
    run: tuple[str, ...]
    timeout: float = 10.0


def parse_command(f: Fields) -> CommandConfig:
    run = f.str_list("run")
    if isinstance(run, tuple) and not run:
        f.error("run", "must name a program, e.g. [/usr/local/bin/page-oncall, --team, infra]")
    elif isinstance(run, tuple) and "/" in run[0] and not run[0].startswith("/"):
        f.error("run", "the program must be an absolute path or a name found on PATH")
    return CommandConfig(run or (), _bounded_timeout(f, 10.0))


class CommandSink:
    """Runs ``run`` (no shell) with the payload JSON on stdin; exit status 0 is delivered and
    anything else is retried. The child gets the scrubbed environment every command gets."""

    def __init__(self, config: CommandConfig) -> None:
        self.config = config

    def send(self, payload: Mapping[str, Any]) -> None:
        data = json.dumps(dict(payload), default=str).encode()
        outcome = run_bounded(
            self.config.run,
            self.config.timeout,
            env=scrubbed_env(),
            stdin=data,
            output_limit=16 * 1024,
        )
        if outcome.ok:
            return
        tail = outcome.stderr.strip()[-ERROR_BODY_LIMIT:]
        why = outcome.error or f"exited with status {outcome.exit_code}"
        message = f"{self.config.run[0]}: {why}: {tail}" if tail else f"{self.config.run[0]}: {why}"
        raise DeliveryError(message, retryable=True)


COMMAND = SinkType(
    "command",
    parse_command,
    CommandSink,
    "Run a program with the payload JSON on stdin (paging CLIs, mail, custom glue).",
)


# ---- log -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogConfig:
    path: str


def parse_log(f: Fields) -> LogConfig:
    path = f.string("path")
    if isinstance(path, str) and not path.startswith("/"):
        f.error("path", "must be an absolute path, e.g. /var/log/stanch/escalations.jsonl")
    return LogConfig(path or "/")


class LogSink:
    """Appends one JSON line per notification and fsyncs it: delivered means on disk. For
    air-gapped hosts (a log shipper picks the file up), demos and tests."""

    def __init__(self, config: LogConfig) -> None:
        self.config = config

    def send(self, payload: Mapping[str, Any]) -> None:
        line = (json.dumps(dict(payload), default=str, sort_keys=True) + "\n").encode()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(self.config.path, flags, 0o640)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise DeliveryError(
                f"cannot append to {self.config.path}: {exc.strerror}", retryable=True
            ) from None


LOG = SinkType(
    "log",
    parse_log,
    LogSink,
    "Append one JSON line per notification to a file, fsynced.",
)

SINK_TYPES: dict[str, SinkType] = {
    WEBHOOK.name: WEBHOOK,
    COMMAND.name: COMMAND,
    LOG.name: LOG,
}

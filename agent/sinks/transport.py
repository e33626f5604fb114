"""The one HTTP POST every HTTP sink makes, and where its secrets come from.

Secrets stay out of errors. A URL or key read from a file or an environment variable (the way to
keep it out of policy bundles and config) is never repeated in a message: errors name only the
scheme and host. For any URL, userinfo and the query string are redacted, and every secret fragment
is scrubbed from text that came back from the network, since ``last_error`` lands in the journal
and in ``stanch-agent status``.

Status codes: 2xx is delivered; 408, 429, 5xx and network errors are worth retrying; any other
status is permanent (a 400 will be a 400 next time too). Redirects are not followed: the URL
should name the receiver itself. ``http.client`` and ``ssl`` are imported on first send, so an
agent with no HTTP sink never loads them.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import SplitResult, urlsplit

from agent.policy.fields import Fields
from agent.secrets import SecretError, SecretRef, exposure
from agent.sinks.base import ERROR_BODY_LIMIT, USER_AGENT, DeliveryError

__all__ = ["SecretRef", "parse_secret", "post_json", "read_secret", "redact_url", "url_problem"]

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REDACTED = "***"


def read_secret(
    ref: SecretRef, what: str, environ: Mapping[str, str] | None = None
) -> tuple[str, bool]:
    """``ref.read`` for a delivery attempt: a secret that cannot be used (unreadable, empty,
    exposed to every user) is a retryable DeliveryError: fixing the file or the unit's
    environment makes the next attempt work."""
    try:
        return ref.read(what, environ)
    except SecretError as exc:
        raise DeliveryError(str(exc), retryable=True) from None


def parse_secret(f: Fields, key: str, inline: bool, example: str) -> SecretRef:
    """Read ``key``, ``key_file`` and ``key_env``, exactly one of them. With ``inline`` False the
    plain ``key`` is refused: the value is always a secret (a routing key, a Slack token URL)."""
    value = f.string(key, None)
    file = f.string(f"{key}_file", None)
    env = f.string(f"{key}_env", None)
    if not inline and value:
        f.error(key, f"is a secret: give {key}_file (a file holding it) or {key}_env instead")
        return SecretRef(None, file, env)
    given = [k for k, v in ((key, value), (f"{key}_file", file), (f"{key}_env", env)) if v]
    if len(given) != 1:
        first = f"{key}, " if inline else ""
        f.error(
            key,
            f"give exactly one of {first}{key}_file (a file holding it; keeps secrets out of "
            f"config) or {key}_env (an environment variable); got {', '.join(given) or 'none'}",
        )
    if isinstance(file, str) and file and not file.startswith("/"):
        f.error(f"{key}_file", "must be an absolute path")
    elif isinstance(file, str) and file and (problem := exposure(file)):
        f.error(f"{key}_file", problem)
    if isinstance(env, str) and env and not ENV_NAME.fullmatch(env):
        f.error(f"{key}_env", f"must be an environment variable name such as {example}")
    return SecretRef(value, file, env)


def url_problem(parts: SplitResult) -> str | None:
    _ = parts.port  # Raises ValueError for a port that is not a number or out of range.
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an absolute http:// or https:// URL"
    return None


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


def _secret_fragments(
    parts: SplitResult, url: str, secret: bool, extra: tuple[str, ...]
) -> list[str]:
    """Substrings that must never appear in an error, longest first so that replacing the
    whole URL happens before replacing a piece of it."""
    pieces = [url, parts.query, parts.password or "", parts.netloc.rpartition("@")[0], *extra]
    if secret and len(parts.path) > 1:
        pieces += [parts.path, parts.path.lstrip("/")]
    return sorted({p for p in pieces if len(p) >= 3}, key=len, reverse=True)


def scrub(text: str, fragments: list[str]) -> str:
    for fragment in fragments:
        text = text.replace(fragment, _REDACTED)
    return text


def post_json(
    url: str,
    body: Mapping[str, Any],
    timeout: float,
    *,
    secret: bool = False,
    where: str = "url",
    what: str = "webhook",
    headers: tuple[tuple[str, str], ...] = (),
    secrets: tuple[str, ...] = (),
) -> None:
    """POST ``body`` as JSON; return on 2xx, raise ``DeliveryError`` otherwise. ``secrets``
    are further strings (a routing key in the body) to scrub from any error."""
    import http.client

    try:
        parts = urlsplit(url)
        problem = url_problem(parts)
    except ValueError:
        parts, problem = urlsplit(""), "is not a valid URL"
    if problem:
        # Never echo the value: it may have come from a secret file or variable.
        raise DeliveryError(f"the {what} URL from {where} {problem}", retryable=False)
    shown = redact_url(url, secret)
    fragments = _secret_fragments(parts, url, secret, secrets)
    data = json.dumps(dict(body), default=str).encode()
    sent = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if parts.username is not None:
        import base64

        userinfo = f"{parts.username}:{parts.password or ''}".encode()
        sent["Authorization"] = "Basic " + base64.b64encode(userinfo).decode()
    sent.update(headers)
    conn = _connect(parts, timeout)
    # The socket timeout bounds each read; the watchdog bounds the whole exchange, so a
    # receiver that dribbles a byte at a time cannot hold the notifier past the timeout.
    expired = threading.Event()
    watchdog = threading.Timer(timeout, _abort, (conn, expired))
    watchdog.daemon = True
    watchdog.start()
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", target, body=data, headers=sent)
        resp = conn.getresponse()
        status, reason = resp.status, resp.reason
        text = resp.read(ERROR_BODY_LIMIT).decode("utf-8", "replace") if status >= 300 else ""
    except (OSError, http.client.HTTPException) as exc:
        why = "timed out" if expired.is_set() else scrub(_describe(exc), fragments)
        raise DeliveryError(f"POST {shown}: {why} (timeout {timeout:g}s)", retryable=True) from None
    except ValueError as exc:  # A URL or header http.client refuses (non-ASCII, say).
        why = scrub(_describe(exc), fragments)
        raise DeliveryError(f"POST {shown}: cannot send: {why}", retryable=False) from None
    finally:
        watchdog.cancel()
        conn.close()
    if 200 <= status < 300:
        return
    # Receivers often echo the request target in error bodies: scrub what came back.
    body_text = " ".join(text.split())
    detail = scrub(f"{reason}: {body_text}" if body_text else reason, fragments)[:200]
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

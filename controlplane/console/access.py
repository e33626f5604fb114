"""Logging in and out, and the checks every state-changing request passes.

Login: the operator pastes an API token (``opsctl``'s) into a POST form; ``plane.auth`` checks
it; a session is created and only its random id goes to the browser, in a cookie that is
``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends it) and
``Secure`` when the console is served over TLS. The token itself is never stored, logged or put
in a URL. The login form has its own double-submit CSRF cookie, so another site cannot log a
browser in under the attacker's token either.

:func:`checked` is the gate of every POST after login: a session, a same-origin ``Origin``
header when the browser sends one, and the session's CSRF token in the form.

Rotation: a login always issues a fresh random session id and drops the one the browser sent,
if any (a planted or leftover cookie never becomes a logged-in session); logout drops the id.
Login attempts pass :class:`controlplane.console.throttle.LoginThrottle` first (429 beyond it),
keyed by the client's address (``Console.client``: the peer's, or behind a
``--console-trusted-proxy`` the forwarded one). Every attempt's result is counted in
``plane.auth.events`` (``stanch_cp_console_logins_total{result}``).
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from controlplane.auth import LEGACY_ADMIN, ROLES, Principal, split_token
from controlplane.console.app import ENDED, Console, log
from controlplane.console.sessions import COOKIE, LOGIN_COOKIE, Session

MAX_FORM_BYTES = 64 * 1024

ENDED_MESSAGE = (
    "Your session ended (it expired, the control plane restarted, or its token was revoked or "
    "expired). Log in again."
)

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Refusal(Exception):
    status: int
    message: str


def same_origin(request: Request, scheme: str | None = None) -> bool:
    """False when the browser says the request comes from another origin. ``scheme``: the
    browser's, when a trusted proxy said it (``Console.scheme``); else the request's."""
    origin = request.headers.get("origin")
    if origin is None:  # not a browser, or an old one: the CSRF token still has to match
        return True
    expected = f"{scheme or request.url.scheme}://{request.headers.get('host', '')}"
    return origin == expected


async def read_form(request: Request) -> FormData:
    size = int(request.headers.get("content-length") or 0)
    if size > MAX_FORM_BYTES:
        raise Refusal(413, "form too large")
    return await request.form(max_files=0, max_fields=50)


async def checked(console: Console, request: Request) -> tuple[Session, FormData]:
    """The session and form of a legitimate state-changing request, or :class:`Refusal`."""
    session = await console.session(request)
    if session is None:
        raise Refusal(401, "not logged in (the session expired or its token was revoked): log in")
    if not same_origin(request, console.scheme(request)):
        raise Refusal(403, "refused: the request came from another site")
    form = await read_form(request)
    if not session.csrf_ok(str(form.get("csrf", ""))):
        raise Refusal(403, "refused: the form is stale or did not come from this console")
    return session, form


def login_form(console: Console) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        if await console.session(request) is not None:
            return RedirectResponse("/", status_code=303)
        ended = request.query_params.get(ENDED) == "1"
        return _login_page(console, request, ENDED_MESSAGE if ended else "", 200)

    return endpoint


def _login_page(console: Console, request: Request, error: str, status: int) -> Response:
    nonce = secrets.token_urlsafe(24)
    response = console.render(request, "login.html", {"login_csrf": nonce, "error": error}, status)
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=600,
        path="/login",
        httponly=True,
        samesite="strict",
        secure=console.secure,
    )
    return response


def login(console: Console) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        address = console.client(request)
        if not console.throttle.allow(address):
            console.events.console_login("rate_limited")
            wait = console.throttle.retry_after()
            log.debug("console login from %s refused: too many attempts", address)
            return Response(
                f"Too many login attempts; try again in {wait} s.",
                status_code=429,
                headers={"retry-after": str(wait)},
            )
        try:
            form = await read_form(request)
        except Refusal as exc:
            console.events.console_login("bad_form")
            return Response(exc.message, status_code=exc.status)
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        given = str(form.get("login_csrf", ""))
        fresh = bool(cookie) and hmac.compare_digest(given, cookie)
        if not same_origin(request, console.scheme(request)) or not fresh:
            console.events.console_login("csrf")
            return _login_page(console, request, "The form expired; try again.", 403)
        token = str(form.get("token", "")).strip()
        principal = await console.auth.from_token(token) if token else None
        if principal is None or principal.role not in ROLES:
            # A role the console does not know is told apart in the metric only: the page
            # says the same as for a wrong token.
            console.events.console_login("bad_token" if principal is None else "forbidden")
            console.throttle.failed += 1
            log.warning(
                "console login from %s refused (unknown, expired or revoked token; %d so far)",
                address,
                console.throttle.failed,
            )
            await asyncio.sleep(console.failed_login_delay)
            return _login_page(console, request, "Unknown, expired or revoked token.", 401)
        parts = split_token(token)
        token_id = parts[0] if parts and principal != LEGACY_ADMIN else ""
        console.sessions.drop(request.cookies.get(COOKIE, ""))  # rotate: never reuse an id
        session = console.sessions.create(
            Principal(name=principal.name, role=principal.role, via="console"), token_id
        )
        console.events.console_login("ok")
        log.info("console login: %s (%s) from %s", principal.name, principal.role, address)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE,
            session.id,
            max_age=int(console.sessions.ttl),
            path="/",
            httponly=True,
            samesite="strict",
            secure=console.secure,
        )
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    return endpoint


def logout(console: Console) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        try:
            session, _form = await checked(console, request)
        except Refusal as exc:
            if exc.status == 401:
                return RedirectResponse("/login", status_code=303)
            return Response(exc.message, status_code=exc.status)
        console.sessions.drop(session.id)
        log.info("console logout: %s", session.principal.name)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    return endpoint

"""The console's Starlette application: routes, sessions, security headers, rendering.

``create_app(plane)`` builds it around a running :class:`ControlPlane`; ``serve`` runs it with
uvicorn inside the control-plane process. Pages read through ``controlplane.fleet_view`` and the
other service modules, never from tables, on the console's own read-only storage thread when it
has one (``Console.reads``, opened by ``serve`` from ``plane.db``; see
``controlplane.storage.reader``); actions go through the same service functions as the Admin
API, on the plane's storage thread, checked with ``controlplane.auth.allows`` and written to
``plane.audit``.

Login attempts and open sessions are counted in ``plane.auth.events`` (the security tallies
``/metrics`` exports as ``stanch_cp_console_logins_total`` and ``stanch_cp_console_sessions``).

Every response carries a strict Content-Security-Policy (scripts and styles from this origin
only, no framing, forms may only post here) and ``Cache-Control: no-store``: a shared terminal's
browser history must not keep fleet pages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.duration import format_duration
from controlplane.auth import Principal, allows
from controlplane.console.proxies import (
    FORWARDED_FOR,
    FORWARDED_PROTO,
    Network,
    client_address,
    forwarded_scheme,
)
from controlplane.console.sessions import COOKIE, Session, SessionStore
from controlplane.console.throttle import LOGIN_LIMITS, LoginThrottle
from controlplane.output import ago, labels_text, stamp
from controlplane.plane import ControlPlane
from controlplane.ratelimit import EnrollLimits
from controlplane.storage.runner import StorageThread

log = logging.getLogger("stanch.cp.console")
ENDED = "ended"
"""Query flag of the login form after a session ended under the browser's feet."""
HERE = Path(__file__).parent
HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    # Not "no-referrer": under it Chromium sends ``Origin: null`` with every form POST, and the
    # same-origin check (``access.same_origin``) could no longer tell the console from a forger.
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class TokenCheck(Protocol):
    """``plane.auth``: a token's principal, or None (unknown, expired or revoked)."""

    async def from_token(self, token: str) -> Principal | None: ...

    async def from_token_id(self, token_id: str) -> Principal | None:
        """The principal of a still usable token, by id (a session re-checking its token)."""
        ...


class AuditSink(Protocol):
    """``plane.audit``: the hash-chained audit log every mutating call is written to."""

    async def record(
        self,
        principal: Principal,
        action: str,
        target: str,
        source: str,
        result: str,
        detail: Mapping[str, Any] | None = None,
    ) -> object: ...


@dataclass
class Console:
    plane: ControlPlane
    auth: TokenCheck
    audit: AuditSink
    secure: bool = False
    """Served over TLS: session cookies are ``Secure``."""
    login_limits: EnrollLimits = LOGIN_LIMITS
    failed_login_delay: float = 0.5
    """Seconds a wrong token waits before the answer (on top of :attr:`throttle`)."""
    reads: StorageThread | None = None
    """Read-only storage on its own thread for the pages (None: the plane's own thread)."""
    trusted_proxies: Sequence[Network] = ()
    """``--console-trusted-proxy``: peers whose ``X-Forwarded-For`` is believed."""
    sessions: SessionStore = field(init=False)
    throttle: LoginThrottle = field(init=False)
    flashes: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Session id -> (tone, text): the outcome of an action, shown once on the next page."""

    def __post_init__(self) -> None:
        self.sessions = SessionStore(self.plane.clock)
        self.throttle = LoginThrottle(self.plane.clock.now, self.login_limits)
        self.events = self.plane.auth.events
        self.events.count_console_sessions = self.sessions.open_count
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            ago=lambda ts: ago(ts, self.plane.clock.now()),
            stamp=stamp,
            duration=lambda s: format_duration(max(0.0, float(s))),
            labels=labels_text,
            pct=lambda x: f"{float(x):.0%}",
            short=lambda d: (d or "")[:12],
        )

    async def session(self, request: Request) -> Session | None:
        """The request's live session, its token re-checked through ``plane.auth`` when the
        last check is older than ``sessions.recheck``; None when there is none (any more)."""
        session = self.stored(request)
        if session is None or not self.sessions.due(session):
            return session
        principal = await self.auth.from_token_id(session.token_id)
        if principal is None:
            log.info(
                "console session of %s ended: its token was revoked or expired",
                session.principal.name,
            )
        elif principal.role != session.principal.role:
            log.info(
                "console session of %s: role %s -> %s (the token's role changed)",
                principal.name,
                session.principal.role,
                principal.role,
            )
        return self.sessions.confirm(session, principal)

    def client(self, request: Request) -> str:
        """The client's address: the TCP peer's, or behind a trusted proxy the one it
        forwarded (``controlplane.console.proxies``)."""
        peer = request.client.host if request.client else "unknown"
        forwarded = request.headers.getlist(FORWARDED_FOR)
        return client_address(peer, forwarded, self.trusted_proxies)

    def scheme(self, request: Request) -> str:
        """The browser's scheme: the request's, or the one a trusted proxy forwarded."""
        peer = request.client.host if request.client else "unknown"
        proto = request.headers.get(FORWARDED_PROTO)
        return forwarded_scheme(peer, proto, self.trusted_proxies) or request.url.scheme

    def stored(self, request: Request) -> Session | None:
        """The request's session as stored, without re-checking its token."""
        return self.sessions.get(request.cookies.get(COOKIE, ""))

    def render(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any],
        status: int = 200,
        session: Session | None = None,
    ) -> HTMLResponse:
        session = session or self.stored(request)
        me = session.principal if session else None
        flash = self.flashes.pop(session.id, None) if session else None
        page = self.env.get_template(template).render(
            {
                "me": me,
                "can_act": me is not None and allows(me, "operator"),
                "csrf": session.csrf if session else "",
                "flash": flash,
                "now": self.plane.clock.now(),
                "path": request.url.path,
                **context,
            }
        )
        return HTMLResponse(page, status_code=status)

    def flash(self, session: Session, tone: str, text: str) -> None:
        self.flashes[session.id] = (tone, text)
        for stale in [sid for sid in self.flashes if self.sessions.get(sid) is None]:
            del self.flashes[stale]


Page = Callable[[Console, Request, Session], Awaitable[Response]]


def page(console: Console, handler: Page) -> Callable[[Request], Awaitable[Response]]:
    """A page needs a session; without one the browser goes to the login form."""

    async def endpoint(request: Request) -> Response:
        session = await console.session(request)
        if session is None:
            if request.headers.get("x-stanch-live"):
                return Response("session expired", status_code=401)
            if not request.cookies.get(COOKIE):
                return RedirectResponse("/login", status_code=303)
            # A cookie for a session that no longer is: say so on the login form, and forget it.
            response = RedirectResponse(f"/login?{ENDED}=1", status_code=303)
            response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
            return response
        return await handler(console, request, session)

    return endpoint


class SecurityHeaders:
    """Adds :data:`HEADERS` to every response and logs each request (path only: no query
    string, no form body, so nothing an operator types ends up in a log)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers += [(k.encode(), v.encode()) for k, v in HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
        log.debug(
            "%s %s %d %.1f ms",
            scope["method"],
            scope["path"],
            status,
            (time.perf_counter() - started) * 1000,
        )


def create_app(
    plane: ControlPlane,
    auth: TokenCheck | None = None,
    audit: AuditSink | None = None,
    secure: bool = False,
    login_limits: EnrollLimits = LOGIN_LIMITS,
    reads: StorageThread | None = None,
    trusted_proxies: Sequence[Network] = (),
) -> Starlette:
    """The console around ``plane`` (``auth`` and ``audit`` default to ``plane.auth`` and
    ``plane.audit``, the ones the gRPC interceptor uses). Pages read through ``reads`` (the
    caller opens and closes it) or, without it, through the plane's own storage thread."""
    from controlplane.console import access, actions, pages

    console = Console(
        plane,
        auth if auth is not None else plane.auth,
        audit if audit is not None else plane.audit,
        secure,
        login_limits,
        reads=reads,
        trusted_proxies=tuple(trusted_proxies),
    )
    routes = [
        Route("/", page(console, pages.fleet)),
        Route("/rollouts", page(console, pages.rollouts)),
        Route("/rollouts/live", page(console, pages.rollouts_live)),
        Route("/hosts/{host:str}", page(console, pages.host)),
        Route("/toil", page(console, pages.toil)),
        Route("/approvals", page(console, pages.approvals_page)),
        Route("/approvals/live", page(console, pages.approvals_live)),
        Route("/login", access.login_form(console), methods=["GET"]),
        Route("/login", access.login(console), methods=["POST"]),
        Route("/logout", access.logout(console), methods=["POST"]),
        Route("/act", actions.endpoint(console), methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.console = console
    app.add_middleware(SecurityHeaders)
    return app

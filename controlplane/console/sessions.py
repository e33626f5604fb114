"""Console sessions: an operator token is exchanged once for a session, held in memory.

Why server-side and in memory: the cookie carries only a random session id (never the token, so
nothing an operator pastes ends up in a browser's storage, a URL or a log), logging out or a
restart ends every session at once, and a session cannot outlive its expiry whatever the browser
does. Each session also holds its CSRF token (the synchronizer pattern): every state-changing
form carries it, and a request without the matching value is refused.

Bounded: at most ``max_sessions`` live at once (the oldest goes first); expired ones are dropped
whenever a session is created or looked up.

A session remembers the id of the API token it was opened with (never its secret) and when its
principal was last confirmed. Every ``recheck`` seconds the console asks ``plane.auth`` again
(:meth:`SessionStore.due`, :meth:`SessionStore.confirm`): a revoked or expired token ends the
session, a changed role replaces the session's. Why a cache at all: one page load is a handful
of requests (page, live polls, static files), and a storage read for each buys nothing that
five seconds of delay costs.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field, replace

from agent.clock import Clock
from controlplane.auth import Principal

COOKIE = "stanch_session"
LOGIN_COOKIE = "stanch_login"
RECHECK = 5.0
"""Seconds a session's principal is trusted before ``plane.auth`` is asked again."""
"""Double-submit cookie for the login form itself (there is no session yet to hold a token)."""


@dataclass(frozen=True)
class Session:
    id: str
    principal: Principal
    csrf: str
    created_at: float
    expires_at: float
    token_id: str = ""
    """The API token the session was opened with (its id only); "" for the legacy shared admin
    token, which has no id and cannot be revoked (a restart ends those sessions)."""
    checked_at: float = 0.0
    """``clock.monotonic()`` when the principal was last confirmed by ``plane.auth``."""

    def csrf_ok(self, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.csrf.encode())


@dataclass
class SessionStore:
    clock: Clock
    ttl: float = 8 * 3600.0
    """A session lasts one on-call shift, then the operator logs in again."""
    max_sessions: int = 1000
    recheck: float = RECHECK
    _sessions: dict[str, Session] = field(default_factory=dict)

    def create(self, principal: Principal, token_id: str = "") -> Session:
        now = self.clock.now()
        self._expire(now)
        while len(self._sessions) >= self.max_sessions:
            oldest = min(self._sessions.values(), key=lambda s: s.created_at)
            del self._sessions[oldest.id]
        session = Session(
            id=secrets.token_urlsafe(32),
            principal=principal,
            csrf=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + self.ttl,
            token_id=token_id,
            checked_at=self.clock.monotonic(),
        )
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> Session | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires_at <= self.clock.now():
            del self._sessions[session_id]
            return None
        return session

    def due(self, session: Session) -> bool:
        """Whether the session's token must be checked again before it is trusted."""
        return bool(session.token_id) and (
            self.clock.monotonic() - session.checked_at >= self.recheck
        )

    def confirm(self, session: Session, principal: Principal | None) -> Session | None:
        """Record a re-check: None (token revoked, expired or gone) ends the session; otherwise
        the session, now holding the token's current name and role."""
        if principal is None:
            self.drop(session.id)
            return None
        if session.id not in self._sessions:  # logged out while the check ran
            return None
        now = replace(
            session,
            principal=Principal(principal.name, principal.role, session.principal.via),
            checked_at=self.clock.monotonic(),
        )
        self._sessions[session.id] = now
        return now

    def drop(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def open_count(self) -> int:
        """Sessions not expired now (``stanch_cp_console_sessions``); expired ones still held
        until the next create or lookup are not counted. On the event loop."""
        now = self.clock.now()
        return sum(1 for s in list(self._sessions.values()) if s.expires_at > now)

    def _expire(self, now: float) -> None:
        for sid in [s.id for s in self._sessions.values() if s.expires_at <= now]:
            del self._sessions[sid]

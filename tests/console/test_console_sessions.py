"""Console sessions against the token they were opened with, login throttling and session id
rotation. A real control plane (real SQLite, its background tasks running) on an injected
FakeClock, the console app over httpx's ASGI transport in the same event loop: the clock moves
only when a test says so, so the 5 s re-check cache, token expiry and the login buckets are
driven without sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from console_harness import BASE, FAST, hidden, login
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette

from agent.clock import FakeClock
from controlplane.assignments import make_signer
from controlplane.auth import Authenticator, Principal
from controlplane.bundle_fixtures import KeyRing
from controlplane.console.access import ENDED_MESSAGE
from controlplane.console.app import Console, create_app
from controlplane.console.sessions import COOKIE, LOGIN_COOKIE, RECHECK
from controlplane.plane import ControlPlane
from controlplane.ratelimit import EnrollLimits, Rate
from controlplane.storage.sqlite import SqliteStorage

PAUSE = {"action": "pause", "policy": "heartbeat", "ttl": "1h", "confirmed": "yes"}


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


@dataclass
class CountingAuth:
    """``plane.auth`` itself, counting the re-checks the console makes through it."""

    auth: Authenticator
    by_id: list[str] = field(default_factory=list)

    async def from_token(self, token: str) -> Principal | None:
        return await self.auth.from_token(token)

    async def from_token_id(self, token_id: str) -> Principal | None:
        self.by_id.append(token_id)
        return await self.auth.from_token_id(token_id)


@dataclass
class Env:
    tmp: Path
    plane: ControlPlane
    clock: FakeClock
    counting: CountingAuth
    app: Starlette

    @property
    def console(self) -> Console:
        console: Console = self.app.state.console
        return console

    def client(self, address: str = "127.0.0.1", **cookies: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        jar = httpx.Cookies()
        for name, value in cookies.items():
            jar.set(name, value, domain=httpx.URL(BASE).host)
        return httpx.AsyncClient(transport=transport, base_url=BASE, cookies=jar)

    async def token(self, name: str, role: str, expires_in: float = 0.0) -> tuple[str, str]:
        text, record = await self.plane.auth.create(name, role, expires_in, "test")
        return text, record.id


@contextlib.asynccontextmanager
async def env_of(tmp: Path, limits: EnrollLimits | None = None) -> AsyncIterator[Env]:
    ring = KeyRing.generate(1)
    clock = FakeClock(time.time())
    plane = ControlPlane(
        SqliteStorage(tmp / "cp.db"),
        ring.trust(1),
        make_signer(Ed25519PrivateKey.generate()),
        clock,
        FAST,
    )
    await plane.start()
    try:
        counting = CountingAuth(plane.auth)
        kw = {"login_limits": limits} if limits else {}
        app = create_app(plane, auth=counting, **kw)  # type: ignore[arg-type]
        env = Env(tmp, plane, clock, counting, app)
        env.console.failed_login_delay = 0.0
        yield env
    finally:
        await plane.stop()


async def ended(client: httpx.AsyncClient) -> None:
    """The session is gone: a page sends the browser to the login form, which says why."""
    page = await client.get("/")
    assert page.status_code == 303 and page.headers["location"] == "/login?ended=1"
    assert f"{COOKIE}=" in page.headers["set-cookie"]  # the stale cookie is deleted
    assert COOKIE not in client.cookies
    form = await client.get(page.headers["location"])
    assert form.status_code == 200 and ENDED_MESSAGE in form.text


def test_a_revoked_token_ends_its_sessions_after_the_recheck(tmp_path: Path) -> None:
    async def body() -> None:
        async with env_of(tmp_path) as env, env.client() as client:
            token, token_id = await env.token("alice", "operator")
            assert (await login(client, token)).status_code == 303
            session = env.console.sessions.get(client.cookies[COOKIE])
            assert session is not None and session.token_id == token_id
            assert token not in repr(session)  # the id, never the secret
            csrf = hidden((await client.get("/")).text, "csrf")
            for _ in range(5):  # a page load and its polls: no storage read for the token
                assert (await client.get("/")).status_code == 200
            assert env.counting.by_id == []
            assert await env.plane.auth.revoke(token_id) is not None
            assert (await client.get("/")).status_code == 200  # within the 5 s cache
            env.clock.advance(RECHECK)
            live = await client.get("/rollouts/live", headers={"x-stanch-live": "1"})
            assert live.status_code == 401
            assert env.counting.by_id == [token_id]
            assert len(env.console.sessions) == 0
            refused = await client.post("/act", data={**PAUSE, "csrf": csrf})
            assert refused.status_code == 401 and "revoked" in refused.text
            assert await env.plane.store.run(env.plane.db.pauses, env.clock.now()) == []
            await ended(client)

    run(body())


def test_an_expired_token_ends_its_sessions(tmp_path: Path) -> None:
    async def body() -> None:
        async with env_of(tmp_path) as env, env.client() as client:
            token, token_id = await env.token("bob", "viewer", expires_in=60.0)
            assert (await login(client, token)).status_code == 303
            env.clock.advance(30)
            assert (await client.get("/")).status_code == 200  # re-checked: still valid
            assert env.counting.by_id == [token_id]
            env.clock.advance(31)
            await ended(client)
            assert len(env.console.sessions) == 0

    run(body())


def test_a_role_change_of_the_token_takes_effect(tmp_path: Path) -> None:
    async def body() -> None:
        async with env_of(tmp_path) as env, env.client() as client:
            token, token_id = await env.token("carol", "operator")
            await login(client, token)
            page = await client.get("/")
            assert "Pause automation" in page.text
            # No API changes a token's role (revoke and issue another); whatever the table
            # says, the console follows plane.auth. A second connection writes it, as an
            # administrator's repair would.
            with contextlib.closing(sqlite3.connect(tmp_path / "cp.db")) as db, db:
                db.execute("UPDATE api_tokens SET role = 'viewer' WHERE id = ?", (token_id,))
            env.clock.advance(RECHECK)
            page = await client.get("/")
            assert page.status_code == 200 and "Pause automation" not in page.text
            refused = await client.post("/act", data={**PAUSE, "csrf": hidden(page.text, "csrf")})
            assert refused.status_code == 403 and "you are viewer" in refused.text
            entries = await env.plane.audit.entries()
            assert [(e.actor, e.result) for e in entries] == [("carol", "PERMISSION_DENIED")]

    run(body())


def test_from_token_id_knows_only_usable_tokens(tmp_path: Path) -> None:
    async def body() -> None:
        async with env_of(tmp_path) as env:
            auth = env.plane.auth
            _text, live = await env.token("dan", "admin")
            _text, short = await env.token("erin", "viewer", expires_in=10.0)
            assert await auth.from_token_id(live) == Principal("dan", "admin", "token")
            assert await auth.from_token_id("nosuchid") is None
            env.clock.advance(10)
            assert await auth.from_token_id(short) is None
            await auth.revoke(live)
            assert await auth.from_token_id(live) is None

    run(body())


def test_login_attempts_are_limited_per_address(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    limits = EnrollLimits(per_peer=Rate(1 / 6, 3), overall=Rate(100.0, 100))

    async def body() -> None:
        async with env_of(tmp_path, limits) as env:
            token, _id = await env.token("frank", "operator")
            wrong = token[:-3] + "xyz"
            async with env.client("10.0.0.1") as guesser, env.client("10.0.0.2") as other:
                for _ in range(3):
                    assert (await login(guesser, wrong)).status_code == 401
                throttled = await login(guesser, token)  # even the right one, now
                assert throttled.status_code == 429
                assert throttled.headers["retry-after"] == "6"
                assert throttled.text == "Too many login attempts; try again in 6 s."
                assert COOKIE not in guesser.cookies
                assert (await login(other, token)).status_code == 303  # its own bucket
                env.clock.advance(6)
                assert (await login(guesser, token)).status_code == 303
            assert (env.console.throttle.failed, env.console.throttle.refused) == (3, 1)
        refusals = [r.getMessage() for r in caplog.records if "login from" in r.getMessage()]
        assert sum("10.0.0.1 refused (unknown" in m for m in refusals) == 3
        assert "3 so far" in refusals[2]
        assert token not in caplog.text and wrong not in caplog.text

    run(body())


def test_login_attempts_are_limited_overall(tmp_path: Path) -> None:
    limits = EnrollLimits(per_peer=Rate(1.0, 10), overall=Rate(0.1, 4))

    async def body() -> None:
        async with env_of(tmp_path, limits) as env:
            token, _id = await env.token("gina", "viewer")
            for n in range(4):
                async with env.client(f"10.0.1.{n}") as client:
                    assert (await login(client, "stk_guess_guess")).status_code == 401
            async with env.client("10.0.2.1") as fresh:
                throttled = await login(fresh, token)
                assert throttled.status_code == 429
                assert throttled.headers["retry-after"] == "10"
                env.clock.advance(10)
                assert (await login(fresh, token)).status_code == 303
            assert (env.console.throttle.failed, env.console.throttle.refused) == (4, 1)

    run(body())


def test_login_issues_a_new_session_id_and_drops_the_old_one(tmp_path: Path) -> None:
    async def body() -> None:
        async with env_of(tmp_path) as env:
            token, _id = await env.token("hal", "operator")
            planted = "chosen-by-an-attacker"
            async with env.client(**{COOKIE: planted}) as client:
                assert (await login(client, token)).status_code == 303
                first = client.cookies[COOKIE]
                assert first != planted and env.console.sessions.get(planted) is None
            # Logging in again from a browser that still holds a session: a new id, the old
            # one dropped (the login form's double-submit cookie set by hand).
            async with env.client(**{COOKIE: first, LOGIN_COOKIE: "x"}) as client:
                again = await client.post("/login", data={"token": token, "login_csrf": "x"})
                assert again.status_code == 303
                second = client.cookies[COOKIE]
                assert second != first
                assert env.console.sessions.get(first) is None  # rotated, not kept
                assert len(env.console.sessions) == 1
                assert (await client.get("/")).status_code == 200
            async with env.client(**{COOKIE: first}) as stale:
                await ended(stale)

    run(body())


def test_logout_drops_the_session_id(tmp_path: Path) -> None:
    async def body() -> None:
        async with env_of(tmp_path) as env, env.client() as client:
            await login(client, (await env.token("ivy", "viewer"))[0])
            sid = client.cookies[COOKIE]
            page = await client.get("/")
            out = await client.post("/logout", data={"csrf": hidden(page.text, "csrf")})
            assert out.status_code == 303 and out.headers["location"] == "/login"
            assert env.console.sessions.get(sid) is None and len(env.console.sessions) == 0
            async with env.client(**{COOKIE: sid}) as replay:
                await ended(replay)
                replay.cookies.set(COOKIE, sid)
                assert (await replay.post("/act", data=PAUSE)).status_code == 401

    run(body())


def test_a_legacy_admin_token_session_has_no_token_id_to_recheck(tmp_path: Path) -> None:
    async def body() -> None:
        async with env_of(tmp_path) as env, env.client() as client:
            env.plane.auth.accept_legacy("shared-admin-secret")
            assert (await login(client, "shared-admin-secret")).status_code == 303
            session = env.console.sessions.get(client.cookies[COOKIE])
            assert session is not None and session.token_id == ""
            assert session.principal == Principal("legacy-admin-token", "admin", "console")
            env.clock.advance(RECHECK)
            assert (await client.get("/")).status_code == 200
            assert env.counting.by_id == []  # nothing to look up: a restart ends it

    run(body())

"""The console over HTTP (httpx on the ASGI app, in the control plane's own event loop): login
and sessions, CSRF and cross-origin refusals, the viewer refused at the server, actions with
their confirmation step and audit entries, and every page rendering real data."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest
from console_harness import console_env, csrf_of, decision, execution, hidden, login

from agent.fleet.approval import KIND
from controlplane import rollout_admin
from controlplane.console.sessions import COOKIE
from controlplane.rollout_admin import RolloutRequest
from controlplane.storage.base import Report


def run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


def test_login_exchanges_the_token_for_a_strict_session_cookie(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    async def body() -> None:
        async with console_env(tmp_path) as env, env.client() as client:
            first = await client.get("/")
            assert first.status_code == 303 and first.headers["location"] == "/login"
            token = await env.token("alice", "operator")
            wrong = await login(client, token[:-2] + "xx")
            assert wrong.status_code == 401 and "revoked token" in wrong.text
            assert COOKIE not in client.cookies
            done = await login(client, token)
            assert done.status_code == 303
            cookie = done.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
            assert "Secure" not in cookie  # plain HTTP here; see the TLS test
            assert token not in cookie and client.cookies[COOKIE] != token
            page = await client.get("/")
            assert page.status_code == 200 and "alice" in page.text
            assert token not in page.text
            assert "default-src 'self'" in page.headers["content-security-policy"]
            assert page.headers["cache-control"] == "no-store"
            out = await client.post("/logout", data={"csrf": hidden(page.text, "csrf")})
            assert out.status_code == 303 and out.headers["location"] == "/login"
            assert (await client.get("/")).status_code == 303
        assert token not in caplog.text

    run(body())


def test_secure_cookie_when_served_over_tls(tmp_path: Path) -> None:
    async def body() -> None:
        async with console_env(tmp_path, secure=True) as env, env.client() as client:
            done = await login(client, await env.token("alice", "viewer"))
            assert done.status_code == 303
            assert "Secure" in done.headers["set-cookie"]

    run(body())


def test_login_form_needs_its_own_csrf_cookie(tmp_path: Path) -> None:
    async def body() -> None:
        async with console_env(tmp_path) as env, env.client() as client:
            token = await env.token("alice", "operator")
            forged = await client.post("/login", data={"token": token, "login_csrf": "guess"})
            assert forged.status_code == 403
            assert COOKIE not in client.cookies

    run(body())


def test_forged_and_cross_origin_posts_are_refused(tmp_path: Path) -> None:
    async def body() -> None:
        async with console_env(tmp_path) as env, env.client() as client:
            await login(client, await env.token("olga", "operator"))
            csrf = await csrf_of(client)
            pause = {"action": "pause", "policy": "heartbeat", "ttl": "1h", "confirmed": "yes"}
            missing = await client.post("/act", data=pause)
            wrong = await client.post("/act", data={**pause, "csrf": "x" * 43})
            other = await client.post(
                "/act", data={**pause, "csrf": csrf}, headers={"origin": "http://evil.example"}
            )
            for refused in (missing, wrong, other):
                assert refused.status_code == 403, refused.text
            assert "another site" in other.text
            now = env.plane.clock.now()
            assert await env.plane.store.run(env.plane.db.pauses, now) == []
            anonymous = env.client()
            async with anonymous:
                denied = await anonymous.post("/act", data={**pause, "csrf": csrf})
                assert denied.status_code == 401
            assert await env.plane.store.run(env.plane.db.pauses, now) == []

    run(body())


def test_viewer_sees_no_buttons_and_is_refused_by_the_server(tmp_path: Path) -> None:
    async def body() -> None:
        async with console_env(tmp_path) as env, env.client() as client:
            await env.agent("web-1", {"env": "prod"}, connected=True)
            await login(client, await env.token("vic", "viewer"))
            page = await client.get("/")
            assert page.status_code == 200 and "web-1" in page.text
            assert "data-action" not in page.text and "Pause automation" not in page.text
            csrf = hidden(page.text, "csrf")  # the logout form's: a viewer has a session too
            form = {"csrf": csrf, "action": "pause", "policy": "heartbeat", "confirmed": "yes"}
            refused = await client.post("/act", data=form)
            assert refused.status_code == 403 and "needs the operator role" in refused.text
            assert await env.plane.store.run(env.plane.db.pauses, env.plane.clock.now()) == []
            entries = await env.plane.audit.entries()
            assert [(e.actor, e.action, e.source, e.result) for e in entries] == [
                ("vic", "fleet.pause", "console", "PERMISSION_DENIED")
            ]

    run(body())


def test_operator_pause_needs_confirmation_and_is_audited(tmp_path: Path) -> None:
    async def body() -> None:
        async with console_env(tmp_path) as env, env.client() as client:
            await env.agent("web-1", {"env": "prod"}, connected=True)
            await login(client, await env.token("olga", "operator"))
            csrf = await csrf_of(client)
            form = {
                "csrf": csrf,
                "action": "pause",
                "policy": "heartbeat",
                "selector": "env=prod",
                "ttl": "30m",
                "reason": "noisy after the deploy",
            }
            asked = await client.post("/act", data=form)
            assert asked.status_code == 200 and "Pause automation?" in asked.text
            assert "Stop remediating policy heartbeat on env=prod for 30m" in asked.text
            assert await env.plane.store.run(env.plane.db.pauses, env.plane.clock.now()) == []
            done = await client.post("/act", data={**form, "confirmed": "yes"})
            assert done.status_code == 303 and done.headers["location"] == "/"
            pauses = await env.plane.store.run(env.plane.db.pauses, env.plane.clock.now())
            assert [(p.scope, dict(p.selector), p.by) for p in pauses] == [
                ("heartbeat", {"env": "prod"}, "olga")
            ]
            assert 1790 < pauses[0].until - time.time() <= 1800
            page = await client.get("/")
            assert "paused heartbeat on env=prod for 30m" in page.text  # the flash, once
            assert "noisy after the deploy" in page.text
            assert "paused heartbeat on env=prod" not in (await client.get("/")).text
            (entry,) = await env.plane.audit.entries()
            assert (entry.actor, entry.via, entry.action, entry.target, entry.result) == (
                "olga",
                "console",
                "fleet.pause",
                "policy=heartbeat",
                "ok",
            )
            resume = {"csrf": csrf, "action": "resume", "policy": "heartbeat"}
            resume["selector"] = "env=prod"
            await client.post("/act", data={**resume, "confirmed": "yes"})
            assert await env.plane.store.run(env.plane.db.pauses, env.plane.clock.now()) == []
            assert (await env.plane.audit.verify()).ok

    run(body())


def test_rollouts_page_shows_waves_gates_and_aborts_with_audit(tmp_path: Path) -> None:
    async def body() -> None:
        async with console_env(tmp_path) as env, env.client() as client:
            for i in range(4):
                await env.agent(f"web-{i}", {"env": "prod"}, connected=False)
            bundle = await env.bundle()
            started = await rollout_admin.start(
                env.plane.engine,
                RolloutRequest(bundle.digest, {"env": "prod"}, ["1", "50%", "100%"], 600.0),
            )
            await login(client, await env.token("olga", "operator"))
            page = await client.get("/rollouts")
            assert page.status_code == 200
            assert started.id in page.text and 'data-live="/rollouts/live"' in page.text
            assert page.text.count('class="wave ') == 3
            live = await client.get("/rollouts/live", headers={"x-stanch-live": "1"})
            assert live.status_code == 200 and "<html" not in live.text
            assert 'data-action="rollout-abort"' in live.text
            csrf = hidden(page.text, "csrf")
            form = {"csrf": csrf, "action": "rollout-abort", "rollout": started.id}
            asked = await client.post("/act", data=form)
            assert "roll every updated host back" in asked.text
            await client.post("/act", data={**form, "confirmed": "yes"})
            after = await client.get("/rollouts/live", headers={"x-stanch-live": "1"})
            assert 'data-state="aborted"' in after.text and "abort by olga" in after.text
            (entry,) = await env.plane.audit.entries()
            assert (entry.action, entry.target) == ("rollout.abort", f"id={started.id}")
        async with console_env(tmp_path / "x") as env, env.client() as client:
            expired = await client.get("/rollouts/live", headers={"x-stanch-live": "1"})
            assert expired.status_code == 401  # the script sends the browser to /login

    (tmp_path / "x").mkdir()
    run(body())


def test_fleet_page_filters_pages_and_flags(tmp_path: Path) -> None:
    async def body() -> None:
        async with console_env(tmp_path) as env, env.client() as client:
            bundle = await env.bundle()
            for i in range(130):
                role = "db" if i % 10 == 0 else "web"
                await env.agent(
                    f"h-{i:03d}",
                    {"env": "prod", "role": role},
                    connected=i % 2 == 0,
                    bundle_digest=bundle.digest,
                    bundle_version=1,
                    health={"bundle_stale": i == 10, "firing_policies": ["heartbeat"]},
                )
            await login(client, await env.token("vic", "viewer"))
            first = await client.get("/")
            assert "<strong>130</strong> agents" in first.text
            assert "page 1 of 2" in first.text and "h-099" in first.text
            assert "h-100" not in first.text
            second = await client.get("/?page=2")
            assert "h-100" in second.text and "h-129" in second.text
            dbs = await client.get("/", params={"selector": "role=db"})
            assert "<strong>13</strong> agents" in dbs.text and "h-001" not in dbs.text
            assert "1 stale bundle" in dbs.text and ">stale</span>" in dbs.text
            bad = await client.get("/", params={"selector": "role"})
            assert bad.status_code == 200 and "expected key=value" in bad.text

    run(body())


def test_host_page_explains_in_plain_words(tmp_path: Path) -> None:
    async def body() -> None:
        async with console_env(tmp_path) as env, env.client() as client:
            bundle = await env.bundle(runbook="https://runbooks.example.com/heartbeat")
            await env.agent("web-1", {"env": "prod"}, connected=True, bundle_digest=bundle.digest)
            until = time.time() + 300
            await env.reports(
                "web-1",
                decision(
                    "web-1",
                    1,
                    "suppressed",
                    "cooldown",
                    message="suppressed: cooldown until 12:00",
                    until=until,
                    observed={"beat.age_seconds": 400},
                    why=["beat.age_seconds 400 > 120"],
                ),
                execution(
                    "web-1",
                    2,
                    "failed",
                    steps=[
                        {
                            "name": "restart",
                            "argv": ["systemctl", "restart", "app"],
                            "ok": False,
                            "error": "exit 1",
                            "stdout": "connecting with password=hunter2",
                            "stderr": "x" * 5000,
                        }
                    ],
                ),
            )
            await login(client, await env.token("vic", "viewer"))
            page = await client.get("/hosts/web-1", params={"policy": "heartbeat"})
            text = page.text
            assert page.status_code == 200
            assert "Held back by <strong>cooldown</strong> until" in text
            assert "beat.age_seconds=400" in text
            assert "Because: beat.age_seconds 400 &gt; 120" in text
            assert "systemctl restart app" in text and "exit 1" in text
            assert "hunter2" not in text and "password=[REDACTED]" in text
            assert "characters cut" in text and "x" * 2001 not in text
            assert 'href="https://runbooks.example.com/heartbeat"' in text
            missing = await client.get("/hosts/nobody")
            assert missing.status_code == 404 and "never connected" in missing.text

    run(body())


def test_toil_page_draws_the_pareto(tmp_path: Path) -> None:
    async def body() -> None:
        async with console_env(tmp_path) as env, env.client() as client:
            await env.bundle()
            await env.reports(
                "web-1",
                *[execution("web-1", i, "fixed" if i % 4 else "failed") for i in range(1, 9)],
            )
            await login(client, await env.token("vic", "viewer"))
            page = await client.get("/toil", params={"window": "24h"})
            assert page.status_code == 200
            assert '<svg class="pareto"' in page.text and "<rect" in page.text
            assert "<strong>8</strong> remediations" in page.text
            assert "toil saved <strong>120 min</strong>" in page.text  # 8 x 15 manual minutes
            assert "75%" in page.text  # fixed rate

    run(body())


def test_approvals_page_lists_pending_and_a_refused_decision_is_audited(tmp_path: Path) -> None:
    async def body() -> None:
        async with console_env(tmp_path) as env, env.client() as client:
            await env.agent("web-1", {"env": "prod"}, connected=False)
            now = time.time()
            asked = {
                "approval_id": "ap-1",
                "created_at": now - 30,
                "expires_at": now + 600,
                "message": "restart app: beat.age_seconds 400 > 120",
                "observed": {"beat.age_seconds": 400},
            }
            at = now - 30
            report = Report("web-1", 1, KIND, "heartbeat", at, "pending", "", json.dumps(asked))
            await env.reports("web-1", report)
            await login(client, await env.token("olga", "operator"))
            page = await client.get("/approvals")
            assert 'data-host="web-1" data-policy="heartbeat"' in page.text
            assert "restart app: beat.age_seconds 400 &gt; 120" in page.text
            assert "10m left" in page.text and "host disconnected" in page.text
            live = await client.get("/approvals/live", headers={"x-stanch-live": "1"})
            assert 'data-action="approve"' in live.text and "<html" not in live.text
            form = {"csrf": hidden(page.text, "csrf"), "action": "approve", "host": "web-1"}
            form["policy"] = "heartbeat"
            confirm = await client.post("/act", data=form)
            assert "Let the agent on web-1 run the remediation of heartbeat" in confirm.text
            done = await client.post("/act", data={**form, "confirmed": "yes"})
            assert done.status_code == 303 and done.headers["location"] == "/approvals"
            after = await client.get("/approvals")
            assert "Approve remediation failed" in after.text  # never queued for a dead host
            (entry,) = await env.plane.audit.entries()
            assert (entry.action, entry.target, entry.result) == (
                "approval.decide",
                "host=web-1",
                "FAILED_PRECONDITION",
            )

    run(body())

"""Console logins and sessions on the control plane's real ``/metrics``: a control plane with
``--metrics-listen`` wired as ``stanch-cp`` wires it (``ServedMetrics``), the console served by
uvicorn on loopback, logins that succeed and fail in each way, and the exposition scraped over
HTTP and read back with prometheus_client's parser."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest
from console_harness import FAST, hidden
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

pytest.importorskip("prometheus_client", reason="prometheus-client is not installed")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from agent.clock import SystemClock  # noqa: E402
from controlplane.assignments import make_signer  # noqa: E402
from controlplane.auth import Authenticator, Principal  # noqa: E402
from controlplane.bundle_fixtures import KeyRing  # noqa: E402
from controlplane.console.serve import ConsoleServer  # noqa: E402
from controlplane.console.throttle import LoginThrottle  # noqa: E402
from controlplane.metrics_server import ServedMetrics  # noqa: E402
from controlplane.plane import ControlPlane  # noqa: E402
from controlplane.ratelimit import EnrollLimits, Rate  # noqa: E402
from controlplane.security_events import CONSOLE_LOGIN_RESULTS  # noqa: E402
from controlplane.storage.sqlite import SqliteStorage  # noqa: E402

ROBOT = "stk_robot_token"
"""A token the wrapped authenticator knows with a role the console does not."""


class RobotAuth:
    """``plane.auth``, plus one token whose role is not an operator role (``forbidden``)."""

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth

    async def from_token(self, token: str) -> Principal | None:
        if token == ROBOT:
            return Principal("robot", "robot", "token")
        return await self.auth.from_token(token)

    async def from_token_id(self, token_id: str) -> Principal | None:
        return await self.auth.from_token_id(token_id)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


async def post_login(
    client: httpx.AsyncClient, token: str, csrf: str | None = None
) -> httpx.Response:
    form = await client.get("/login")
    nonce = hidden(form.text, "login_csrf") if csrf is None else csrf
    return await client.post("/login", data={"token": token, "login_csrf": nonce})


def test_console_logins_and_sessions_on_metrics(tmp_path: Path) -> None:
    async def body() -> None:
        metrics = ServedMetrics("127.0.0.1", 0)
        plane = ControlPlane(
            SqliteStorage(tmp_path / "cp.db"),
            KeyRing.generate(1).trust(1),
            make_signer(Ed25519PrivateKey.generate()),
            SystemClock(),
            FAST,
            metrics,
        )
        await plane.start()
        loop = asyncio.get_running_loop()
        metrics.serve(plane, loop)
        assert metrics.server is not None
        url = f"http://127.0.0.1:{metrics.server.port}/metrics"
        console = ConsoleServer(plane, "127.0.0.1", 0, auth=RobotAuth(plane.auth))
        limits = EnrollLimits(per_peer=Rate(1 / 600, 6), overall=Rate(100.0, 100))
        console.console.throttle = LoginThrottle(plane.clock.now, limits)
        console.console.failed_login_delay = 0.0
        await console.start()
        try:
            before = await loop.run_in_executor(None, scrape, url)
            for result in CONSOLE_LOGIN_RESULTS:
                assert before[("stanch_cp_console_logins_total", (("result", result),))] == 0
            assert before[("stanch_cp_console_sessions", ())] == 0
            token, _ = await plane.auth.create("mia", "operator", 0.0, "test")
            async with (
                httpx.AsyncClient(base_url=console.url, timeout=10) as alice,
                httpx.AsyncClient(base_url=console.url, timeout=10) as bob,
            ):
                assert (await post_login(alice, token)).status_code == 303  # ok
                assert (await post_login(bob, token)).status_code == 303  # ok

                async def fresh(token: str, csrf: str | None = None) -> int:
                    async with httpx.AsyncClient(base_url=console.url, timeout=10) as other:
                        return (await post_login(other, token, csrf)).status_code

                assert await fresh(token[:-3] + "xyz") == 401
                assert await fresh("") == 401  # bad_token too
                assert await fresh(ROBOT) == 401  # forbidden
                assert await fresh(token, csrf="forged") == 403
                assert await fresh(token) == 429  # the 7th attempt from 127.0.0.1
                seen = await loop.run_in_executor(None, scrape, url)

                def logins(result: str) -> float:
                    return seen[("stanch_cp_console_logins_total", (("result", result),))]

                assert logins("ok") == 2
                assert logins("bad_token") == 2
                assert logins("forbidden") == 1
                assert logins("csrf") == 1
                assert logins("rate_limited") == 1
                assert logins("bad_form") == logins("other") == 0
                assert seen[("stanch_cp_console_sessions", ())] == 2
                page = await alice.get("/")
                out = await alice.post("/logout", data={"csrf": hidden(page.text, "csrf")})
                assert out.status_code == 303
            after = await loop.run_in_executor(None, scrape, url)
            assert after[("stanch_cp_console_sessions", ())] == 1
            # Bounded: results only, never a name, a token or an address.
            body = await loop.run_in_executor(
                None, lambda: urllib.request.urlopen(url, timeout=10).read().decode()
            )
            lines = [line for line in body.splitlines() if line.startswith("stanch_cp_console")]
            assert len(lines) == len(CONSOLE_LOGIN_RESULTS) + 1  # + the sessions gauge
            assert not any(re.search(r"mia|127\.0\.0\.1|stk_", line) for line in lines)
        finally:
            await console.stop()
            await plane.stop()
            metrics.close()

    run(body())

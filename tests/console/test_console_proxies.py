"""The console behind a reverse proxy (``--console-trusted-proxy``): the client address that
keys the login throttle, unit by unit (``controlplane.console.proxies``) and over HTTP, through
the ASGI app and through the real uvicorn server (whose own proxy-header handling, which
trusts 127.0.0.1 by default, must be off)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import re
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest
from console_harness import console_env, hidden

from controlplane import server_config
from controlplane.console.proxies import client_address, forwarded_scheme, parse_network
from controlplane.console.serve import ConsoleServer
from controlplane.console.throttle import LoginThrottle
from controlplane.ratelimit import EnrollLimits, Rate

PROXIES = [ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00::/8")]
TIGHT = EnrollLimits(per_peer=Rate(1 / 600, 2), overall=Rate(100.0, 100))
"""Two attempts per address, then nothing for ten minutes; the console-wide bucket never
empties in these tests."""


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


# ---- the rule ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("10.0.0.2", ["203.0.113.5"], "203.0.113.5"),
        ("10.0.0.2", ["198.51.100.1, 203.0.113.5"], "203.0.113.5"),  # left: the client's word
        ("10.0.0.2", ["203.0.113.5, 10.0.0.7"], "203.0.113.5"),  # a chain of trusted proxies
        ("10.0.0.2", ["198.51.100.1", "203.0.113.5"], "203.0.113.5"),  # two headers, one list
        ("10.0.0.2", ["203.0.113.5:4711"], "203.0.113.5"),
        ("10.0.0.2", ["[2001:db8::5]:4711"], "2001:db8::5"),
        ("::ffff:10.0.0.2", ["203.0.113.5"], "203.0.113.5"),  # IPv4-mapped peer
        ("fd00::2", ["2001:db8::5"], "2001:db8::5"),
        ("10.0.0.2", [], "10.0.0.2"),  # no header: the proxy itself
        ("10.0.0.2", [" , "], "10.0.0.2"),
        ("10.0.0.2", ["10.0.0.9, 10.0.0.7"], "10.0.0.9"),  # all trusted: the farthest
        ("10.0.0.2", ["198.51.100.1, unknown"], "10.0.0.2"),  # garbage where the client is
        ("192.0.2.1", ["203.0.113.5"], "192.0.2.1"),  # not a trusted peer: header ignored
        ("unknown", ["203.0.113.5"], "unknown"),
    ],
)
def test_client_address(peer: str, forwarded: list[str], expected: str) -> None:
    assert client_address(peer, forwarded, PROXIES) == expected


def test_without_trusted_proxies_the_header_is_never_read() -> None:
    assert client_address("127.0.0.1", ["203.0.113.5"], []) == "127.0.0.1"
    assert forwarded_scheme("127.0.0.1", "https", []) is None


def test_forwarded_scheme_only_from_a_trusted_proxy() -> None:
    assert forwarded_scheme("10.0.0.2", "https", PROXIES) == "https"
    assert forwarded_scheme("10.0.0.2", "http, HTTPS", PROXIES) == "https"  # the nearest
    assert forwarded_scheme("10.0.0.2", "gopher", PROXIES) is None
    assert forwarded_scheme("192.0.2.1", "https", PROXIES) is None


def test_the_flag_takes_cidrs_and_addresses_and_is_repeatable() -> None:
    base = ["--db", "x.db", "--assignment-key", "k", "--trust", "t"]
    args = server_config.parser().parse_args(
        [*base, "--console-trusted-proxy", "10.0.0.0/8", "--console-trusted-proxy", "192.0.2.7"]
    )
    assert args.console_trusted_proxy == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.7/32"),
    ]
    assert server_config.parser().parse_args(base).console_trusted_proxy == []
    with pytest.raises(argparse.ArgumentTypeError, match="expected an address or a CIDR"):
        parse_network("10.0.0.0/33")
    with pytest.raises(server_config.ConfigError, match="needs --console-listen"):
        server_config.build(args)


# ---- over HTTP, the ASGI app --------------------------------------------------------------------


async def attempt(client: httpx.AsyncClient, token: str, forwarded: str = "") -> int:
    headers = {"x-forwarded-for": forwarded} if forwarded else {}
    form = await client.get("/login")
    response = await client.post(
        "/login",
        data={"token": token, "login_csrf": hidden(form.text, "login_csrf")},
        headers=headers,
    )
    return response.status_code


def test_behind_a_trusted_proxy_each_client_has_its_own_bucket(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    async def body() -> None:
        async with console_env(tmp_path) as env:
            token = await env.token("ivy", "viewer")
            wrong = token[:-3] + "xyz"
            kw: dict[str, Any] = {"trusted_proxies": PROXIES, "login_limits": TIGHT}
            async with env.client(peer="10.0.0.2", failed_login_delay=0.0, **kw) as proxy:
                assert await attempt(proxy, wrong, "203.0.113.5") == 401
                assert await attempt(proxy, wrong, "198.51.100.9, 203.0.113.5") == 401
                assert await attempt(proxy, token, "203.0.113.5") == 429
                assert await attempt(proxy, token, "192.0.2.99, 203.0.113.5") == 429  # no escape
                assert await attempt(proxy, token, "203.0.113.6") == 303  # another operator
        refused = [r.getMessage() for r in caplog.records if "refused (unknown" in r.getMessage()]
        assert len(refused) == 2 and all("from 203.0.113.5 " in m for m in refused)
        assert any("login: ivy (viewer) from 203.0.113.6" in r.getMessage() for r in caplog.records)

    run(body())


def test_without_trust_every_client_of_a_peer_shares_its_bucket(tmp_path: Path) -> None:
    async def body() -> None:
        async with console_env(tmp_path) as env:
            token = await env.token("jon", "viewer")
            kw: dict[str, Any] = {"login_limits": TIGHT, "failed_login_delay": 0.0}
            async with env.client(peer="10.0.0.2", **kw) as proxy:
                assert await attempt(proxy, "stk_x_y", "203.0.113.5") == 401
                assert await attempt(proxy, "stk_x_y", "203.0.113.6") == 401
                assert (
                    await attempt(proxy, token, "203.0.113.7") == 429
                )  # the header changed nothing

    run(body())


def test_a_trusted_proxy_ending_tls_passes_the_same_origin_check(tmp_path: Path) -> None:
    """A plain-HTTP console behind a proxy that ends TLS: the browser's Origin is https://, and
    only a trusted proxy's X-Forwarded-Proto makes that this console's origin."""

    async def body() -> None:
        async with console_env(tmp_path) as env:
            token = await env.token("kim", "viewer")
            for trusted, expected in ((PROXIES, 303), ((), 403)):
                async with env.client(peer="10.0.0.2", trusted_proxies=trusted) as proxy:
                    form = await proxy.get("/login")
                    done = await proxy.post(
                        "/login",
                        data={"token": token, "login_csrf": hidden(form.text, "login_csrf")},
                        headers={"origin": "https://console.test", "x-forwarded-proto": "https"},
                    )
                    assert done.status_code == expected

    run(body())


# ---- over HTTP, the real server ------------------------------------------------------------------


def test_uvicorn_believes_no_forwarded_header_unless_told(tmp_path: Path) -> None:
    """From 127.0.0.1, which uvicorn trusts by default, X-Forwarded-For picks no bucket unless
    ``trusted_proxies`` says so; with it, each forwarded client has its own."""

    async def body() -> None:
        async with console_env(tmp_path) as env:
            for trusted, third in (((), 429), ([ipaddress.ip_network("127.0.0.1/32")], 401)):
                server = ConsoleServer(env.plane, "127.0.0.1", 0, trusted_proxies=trusted)
                server.console.throttle = LoginThrottle(env.plane.clock.now, TIGHT)
                server.console.failed_login_delay = 0.0
                await server.start()
                try:
                    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                        assert await attempt(client, "stk_x_y", "203.0.113.5") == 401
                        assert await attempt(client, "stk_x_y", "203.0.113.5") == 401
                        assert await attempt(client, "stk_x_y", "203.0.113.6") == third
                finally:
                    await server.stop()
                assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", server.url)

    run(body())

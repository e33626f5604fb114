"""``controlplane.fleet_view``, the read layer under the Admin API and the console: flags per
agent (stale, behind its assignment, paused) and paging, on a real control plane's storage."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

from console_harness import console_env
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane import fleet_view
from controlplane.assignments import make_signer
from controlplane.storage.base import AssignmentRequest


def test_flags_counts_and_paging(tmp_path: Path) -> None:
    async def body() -> None:
        async with console_env(tmp_path) as env:
            plane = env.plane
            current = await env.bundle(1)
            newer = await env.bundle(2)
            expired = replace(current, digest="e" * 64, expires=time.time() - 1)
            await plane.store.run(plane.db.put_bundle, expired, b"")
            for i in range(7):
                role = "db" if i < 2 else "web"
                digest = expired.digest if i == 6 else current.digest
                await env.agent(f"h{i}", {"role": role}, connected=i % 2 == 0, bundle_digest=digest)
            requests = [AssignmentRequest("h2", newer.digest, 2, "r1")]
            sign = make_signer(Ed25519PrivateKey.generate())
            await plane.store.run(plane.db.issue_assignments, requests, time.time(), sign)
            await plane.killswitch.pause("", {"role": "db"}, 600, "maintenance", "olga")

            page = await fleet_view.fleet_page(plane, {}, offset=5, limit=5)
            assert [v.agent.host_id for v in page.agents] == ["h5", "h6"]
            assert (page.total, page.connected, page.stale, page.behind, page.paused) == (
                7,
                4,
                1,
                1,
                2,
            )
            views = {v.agent.host_id: v for v in await fleet_view.agents(plane, {})}
            assert views["h6"].stale and not views["h5"].stale
            assert views["h2"].behind and views["h2"].assigned is not None
            assert views["h0"].paused == ("*",) and views["h3"].paused == ()
            assert views["h0"].bundle_name == "web"
            dbs = await fleet_view.fleet_page(plane, {"role": "db"})
            assert [v.agent.host_id for v in dbs.agents] == ["h0", "h1"]
            one = await fleet_view.agent(plane, "h2")
            assert one is not None and one.behind
            assert await fleet_view.agent(plane, "nobody") is None
            assert [p.scope for p in await fleet_view.pauses(plane)] == ["*"]

    asyncio.run(asyncio.wait_for(body(), 30))

"""Harness for the console's HTTP tests: a real control plane in the test's event loop (real
SQLite, real keys, its background tasks running) and the console app driven over httpx's ASGI
transport in the same loop, so actions hit the very engine, kill switch and audit log the gRPC
API uses. Pages read through a read-only reader on the same SQLite file, as ``ConsoleServer``
opens one (``controlplane.storage.reader``), so every page test also checks that the reader sees
what the plane just wrote. Data is put in through the service layer and the storage API, as
agents and opsctl would put it there.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.clock import SystemClock
from controlplane import publish
from controlplane.assignments import make_signer
from controlplane.bundle_fixtures import KeyRing, make_bundle, policy_text, write_source
from controlplane.console.app import create_app
from controlplane.plane import ControlPlane, Settings
from controlplane.storage.base import AgentRecord, BundleRecord, Report
from controlplane.storage.reader import open_reader
from controlplane.storage.runner import StorageThread
from controlplane.storage.sqlite import SqliteStorage

BASE = "http://console.test"
FAST = Settings(lost_after=5.0, apply_timeout=5.0, tick=0.05, presence_interval=0.1, holder="test")


@dataclass
class Env:
    tmp: Path
    plane: ControlPlane
    ring: KeyRing
    secure: bool = False
    reads: StorageThread | None = None

    def client(self, **app: Any) -> httpx.AsyncClient:
        """A client of a new console app; ``app`` goes to ``create_app`` (``trusted_proxies``,
        ``login_limits``), except ``peer``: the client address the app sees (default
        ``127.0.0.1``), and ``failed_login_delay`` (default the console's 0.5 s)."""
        peer = app.pop("peer", "127.0.0.1")
        delay = app.pop("failed_login_delay", None)
        made = create_app(self.plane, secure=self.secure, reads=self.reads, **app)
        if delay is not None:
            made.state.console.failed_login_delay = delay
        base = BASE.replace("http:", "https:") if self.secure else BASE
        transport = httpx.ASGITransport(app=made, client=(peer, 43210))
        return httpx.AsyncClient(transport=transport, base_url=base)

    async def token(self, name: str, role: str) -> str:
        text, _record = await self.plane.auth.create(name, role, 0.0, "test")
        return text

    async def agent(self, host: str, labels: Mapping[str, str], **kw: object) -> None:
        record = AgentRecord(host_id=host, labels=dict(labels), **kw)  # type: ignore[arg-type]
        await self.plane.store.run(self.plane.db.upsert_agent, record)

    async def bundle(self, version: int = 1, runbook: str = "") -> BundleRecord:
        text = policy_text("heartbeat") + "  manual_minutes: 15\n"
        if runbook:
            text = text.replace("spec:\n", f"spec:\n  runbook: {runbook}\n", 1)
        source = write_source(self.tmp / f"src-{version}", {"heartbeat.yaml": text})
        data = make_bundle(
            source, self.ring, [0], name="web", version=version, created=time.time() - 60
        ).data
        result = publish.check(data, self.plane.trust, time.time(), [])
        await self.plane.store.run(self.plane.db.put_bundle, result.record, data)
        return result.record

    async def reports(self, host: str, *reports: Report) -> None:
        await self.plane.store.run(self.plane.db.insert_reports, list(reports))


def decision(host: str, rid: int, outcome: str, reason: str, **body: object) -> Report:
    at = time.time()
    return Report(host, rid, "decision", "heartbeat", at, outcome, reason, json.dumps(body))


def execution(host: str, rid: int, outcome: str, **body: object) -> Report:
    at = time.time()
    doc = {"started_at": at - 3, "finished_at": at, "status": outcome, **body}
    return Report(host, rid, "execution", "heartbeat", at, outcome, "verification", json.dumps(doc))


@contextlib.asynccontextmanager
async def console_env(tmp: Path, secure: bool = False) -> AsyncIterator[Env]:
    ring = KeyRing.generate(1)
    plane = ControlPlane(
        SqliteStorage(tmp / "cp.db"),
        ring.trust(1),
        make_signer(Ed25519PrivateKey.generate()),
        SystemClock(),
        FAST,
    )
    await plane.start()
    reads = open_reader(plane.db)
    try:
        yield Env(tmp, plane, ring, secure, reads)
    finally:
        if reads is not None:
            reads.close()
        await plane.stop()


def hidden(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found, f"no hidden field {name!r} in the page"
    return found.group(1)


async def login(client: httpx.AsyncClient, token: str) -> httpx.Response:
    form = await client.get("/login")
    assert form.status_code == 200
    return await client.post(
        "/login", data={"token": token, "login_csrf": hidden(form.text, "login_csrf")}
    )


async def csrf_of(client: httpx.AsyncClient, path: str = "/") -> str:
    page = await client.get(path)
    assert page.status_code == 200, page.text
    return hidden(page.text, "csrf")

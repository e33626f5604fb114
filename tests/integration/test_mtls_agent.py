"""The real agent's fleet client over mTLS against the real control plane on loopback: it
enrolls with a token file on first start (the token is then gone, the key 0600), connects with
its certificate, renews it before expiry and reconnects with the new one, and no report is
lost across the swap."""

from __future__ import annotations

import asyncio
import stat
import threading
import time
from pathlib import Path
from typing import Any

import grpc.aio
from cp_harness import Cluster, cluster, until

from agent.config import parse_config
from agent.fleet.client import FleetClient
from agent.fleet.outbox import Outbox
from agent.fleet.tls import IdentityFiles, load_key
from agent.journal import Journal, Report
from controlplane.storage.base import ReportQuery
from stanch.v1 import pki_pb2, pki_pb2_grpc

HOST = "web-1"


async def _token(c: Cluster, host: str) -> str:
    async with grpc.aio.secure_channel(c.addr, c.operator_credentials()) as channel:
        request = pki_pb2.CreateEnrollmentTokenRequest(host_id=host, ttl_seconds=600)
        answer = await pki_pb2_grpc.PkiStub(channel).CreateEnrollmentToken(request, timeout=5)
    return str(answer.token)


def _agent(c: Cluster, root: Path, tls: dict[str, Any]) -> tuple[FleetClient, Journal, Outbox]:
    keys = root / "assignment-keys"
    keys.mkdir(exist_ok=True)
    raw = {
        "host": {"id": HOST, "labels": {"env": "prod"}},
        "policy_source": "bundle",
        "state_dir": str(root / "state"),
        "control_plane": {
            "address": c.addr,
            "tls": tls,
            "assignment_keys": str(keys),
            "trust": str(c.ring.write_pubs(root / "trust")),
            "reconnect": {"initial": "50ms", "max": "300ms"},
            "heartbeat": "200ms",
            "report_batch": 5,
        },
    }
    config = parse_config(raw, "<test>")
    config.state_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(config.journal_path)
    assert config.control_plane is not None
    outbox = Outbox(journal, config.control_plane.outbox_limit)
    journal.reporter = outbox
    client = FleetClient(config, journal, outbox)
    client.start()
    return client, journal, outbox


async def _stored(c: Cluster) -> list[int]:
    found = await c.plane.store.run(c.plane.db.reports, ReportQuery(since=0, host=HOST))
    return sorted(r.id for r in found)


def test_the_agent_enrolls_connects_renews_and_loses_no_report(tmp_path: Path) -> None:
    async def scenario() -> None:
        # 9 s certificates: renewal is due after ~6 s (plus up to 0.5 s of jitter).
        async with cluster(tmp_path, tls=True, cert_lifetime=9.0) as c:
            token_file = tmp_path / "enroll-token"
            token_file.write_text(await _token(c, HOST) + "\n")
            ca = tmp_path / "ca.crt"
            ca.write_bytes(c.ca_pem)
            tls = {
                "ca": str(ca),
                "enroll_token_file": str(token_file),
                "enroll_address": f"127.0.0.1:{c.enroll_port}",
            }
            client, journal, outbox = _agent(c, tmp_path, tls)
            try:
                await until(lambda: c.plane.connections.hosts() == [HOST], 10, "enrolled, in")
                assert not token_file.exists()
                key = tmp_path / "state" / "tls" / "agent.key"
                assert stat.S_IMODE(key.stat().st_mode) == 0o600
                first = await c.plane.store.run(c.plane.db.certificates, HOST)
                assert len(first) == 1
                # Reports flow all through the renewal: one every 50 ms for ~6 s.
                stop = threading.Event()

                def produce() -> int:
                    n = 0
                    while not stop.is_set() and n < 400:
                        n += 1
                        outbox.put(Report("decision", f"p{n}", time.time(), "acted", "fired", {}))
                        time.sleep(0.05)
                    return n

                producer = asyncio.get_running_loop().run_in_executor(None, produce)
                certs = await until(
                    lambda: _renewed(c), 30, "the certificate renewed and the agent back"
                )
                await asyncio.sleep(0.5)  # a few more reports on the new session
                stop.set()
                produced = await producer
                await until(lambda: outbox.depth() == 0, 10, "every report acked")
                assert produced >= 80
                assert await _stored(c) == list(range(1, produced + 1))  # none lost
                assert client.stats.sessions >= 2
                assert len(certs) >= 2 and certs[0].serial != first[0].serial
            finally:
                client.stop()
                journal.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


async def _renewed(c: Cluster) -> Any:
    certs = await c.plane.store.run(c.plane.db.certificates, HOST)
    back = c.plane.connections.hosts() == [HOST]
    return certs if len(certs) >= 2 and back else None


def test_without_a_token_the_agent_says_how_to_enroll(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, tls=True) as c:
            ca = tmp_path / "ca.crt"
            ca.write_bytes(c.ca_pem)
            tls = {"ca": str(ca), "enroll_token_file": str(tmp_path / "missing")}
            client, journal, _ = _agent(c, tmp_path, tls)
            try:
                error = await until(lambda: client.stats.last_error, 10, "an error")
                assert "opsctl pki token --host web-1" in error
                assert c.plane.connections.hosts() == []
            finally:
                client.stop()
                journal.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_an_expired_certificate_takes_a_new_enrollment(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, tls=True) as c:
            ca = tmp_path / "ca.crt"
            ca.write_bytes(c.ca_pem)
            key, cert, _ = c.issue_host_cert(HOST, lifetime=1.0)
            files = IdentityFiles(tmp_path / "state" / "tls")
            files.save(load_key(key), cert)
            await asyncio.sleep(1.2)  # the host was "off" for longer than the lifetime
            token_file = tmp_path / "enroll-token"
            tls = {
                "ca": str(ca),
                "enroll_token_file": str(token_file),
                "enroll_address": f"127.0.0.1:{c.enroll_port}",
            }
            client, journal, _ = _agent(c, tmp_path, tls)
            try:
                error = await until(lambda: client.stats.last_error, 10, "an error")
                assert "expired" in error and "opsctl pki token --host web-1" in error
                token_file.write_text(await _token(c, HOST))
                await until(lambda: c.plane.connections.hosts() == [HOST], 10, "re-enrolled")
                assert not token_file.exists() and files.cert.read_bytes() != cert
            finally:
                client.stop()
                journal.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))

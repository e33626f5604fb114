"""Revocations cut live agent streams on every replica: two real ``stanch-cp`` processes with mTLS
on one PostgreSQL, agents streaming to replica ``a``, the operator revoking through replica
``b`` (which holds none of those streams):

- ``RevokeHost`` (``opsctl agents revoke``) through ``b`` ends the host's stream on ``a`` within
  the revocation sweep's period (``revocation_sweep.EVERY``, 5 s) and a tick; its reconnect to
  ``a`` is refused;
- ``RevokeCertificate`` (``opsctl pki revoke-cert``) of another host's serial through ``b`` ends
  the stream opened with it on ``a`` as fast; a third host's stream is untouched throughout;
- ``a`` logs each cut with the host and the reason.

Skipped, naming the URL tried, when no PostgreSQL answers (``STANCH_TEST_PG`` overrides it)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from cp_harness import SimAgent, until
from cp_process import FAST_FLAGS, REPO, ServerProcess

from controlplane.pki import PkiPaths, init_pki
from controlplane.revocation_sweep import EVERY
from controlplane.storage.base_pki import CertificateRecord
from controlplane.storage.postgres import PostgresStorage
from stanch.v1 import pki_pb2, pki_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "storage"))
from pg_schema import fresh_schema  # noqa: E402

CUT_WITHIN = EVERY + 2.5
"""One sweep period, a tick, and room for a noisy 2-core CI box."""


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


def start_tls_replica(
    cp: ServerProcess, url: str, pki: PkiPaths, name: str
) -> tuple[subprocess.Popen[bytes], str]:
    """``stanch-cp`` serving mTLS from ``pki`` on a free port, on the shared database;
    ``(process, address)``. Logs to ``tmp/<name>.log``."""
    log = (cp.tmp / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "controlplane.server",
            "--db", url,
            "--listen", "127.0.0.1:0",
            "--pki-dir", str(pki.directory),
            "--assignment-key", str(cp.tmp / "cp" / "assign.key"),
            "--trust", str(cp.tmp / "trust"),
            "--replica-id", name,
            *FAST_FLAGS,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=log,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.stdout is not None
    stdout = proc.stdout
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            line = pool.submit(stdout.readline).result(timeout=30).decode()
        except concurrent.futures.TimeoutError:
            line = ""
    if "listening on" not in line:
        proc.kill()
        proc.wait(10)
        raise AssertionError(
            f"replica {name} did not start: {(cp.tmp / f'{name}.log').read_text()}"
        )
    return proc, "127.0.0.1:" + line.rsplit(":", 1)[1].strip()


def streams_on(url: str, replica: str) -> set[str]:
    """Hosts the agents table says are connected to ``replica``."""
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT host_id FROM agents WHERE connected <> 0 AND replica = %s", (replica,)
        ).fetchall()
    return {str(row[0]) for row in found}


def test_a_revocation_through_one_replica_cuts_the_stream_on_another(
    tmp_path: Path, pg_url: str
) -> None:
    cp = ServerProcess.create(tmp_path)
    cp.pki = init_pki(tmp_path / "pki", ["localhost", "127.0.0.1"], time.time())
    replicas = [start_tls_replica(cp, pg_url, cp.pki, name) for name in ("a", "b")]
    (proc_a, addr_a), (proc_b, addr_b) = replicas

    async def scenario() -> list[float]:
        certs = {host: cp.issue_host_cert(host) for host in ("web-1", "web-2", "web-3")}
        db = PostgresStorage(pg_url)  # record what was issued, as enrollment does
        now = time.time()
        for host, (_, _, serial) in certs.items():
            db.add_certificate(CertificateRecord(serial, host, now - 300, now + 3600, now))
        db.close()

        def agent(host: str) -> SimAgent:
            key, cert, _ = certs[host]
            sim = SimAgent(
                addr_a, host, {"env": "prod"}, cp.assign_keys, credentials=cp.credentials(cert, key)
            )
            cp.agents.append(sim)
            return sim

        web1, web2, web3 = [await agent(h).connect() for h in ("web-1", "web-2", "web-3")]
        channel = grpc.aio.secure_channel(addr_b, cp.operator_credentials("root", "admin"))
        pki = pki_pb2_grpc.PkiStub(channel)
        took: list[float] = []
        try:
            everyone = {"web-1", "web-2", "web-3"}
            await until(lambda: streams_on(pg_url, "a") == everyone, 15, "three streams on a")

            asked = time.monotonic()
            revoked = await pki.RevokeHost(
                pki_pb2.RevokeHostRequest(host_id="web-1", reason="stolen", by="root"), timeout=10
            )
            assert revoked.certificates_revoked == 1
            assert not revoked.disconnected  # b holds no stream of web-1: a must cut it
            await until(lambda: web1.ended is not None, CUT_WITHIN + 10, "web-1's stream cut on a")
            took.append(time.monotonic() - asked)
            assert web1.ended == grpc.StatusCode.OK

            again = await agent("web-1").connect()
            await until(lambda: again.ended is not None, 10, "web-1's reconnect to end")
            assert again.ended == grpc.StatusCode.PERMISSION_DENIED

            asked = time.monotonic()
            serial = certs["web-2"][2]
            cut = await pki.RevokeCertificate(
                pki_pb2.RevokeCertificateRequest(serial=serial, reason="key leaked", by="root"),
                timeout=10,
            )
            assert (cut.serial, cut.subject, cut.newly_revoked) == (serial, "web-2", True)
            await until(lambda: web2.ended is not None, CUT_WITHIN + 10, "web-2's stream cut on a")
            took.append(time.monotonic() - asked)

            await asyncio.sleep(EVERY + 0.5)  # another sweep: the bystander stays
            assert web3.ended is None
            assert streams_on(pg_url, "a") == {"web-3"}
        finally:
            await channel.close()
            await cp.close_agents()
        return took

    try:
        took = asyncio.run(asyncio.wait_for(scenario(), 90))
    finally:
        for proc, _ in replicas:
            proc.terminate()
            proc.wait(10)
    print(f"streams cut on replica a {took[0]:.2f} s (host) and {took[1]:.2f} s (serial) later")
    assert all(t < CUT_WITHIN for t in took), took
    log_a = (tmp_path / "a.log").read_text()
    assert "revocation sweep: stream of host web-1" in log_a and "(stolen)" in log_a
    assert "revocation sweep: stream of host web-2" in log_a and "(key leaked)" in log_a
    assert "revocation sweep: stream of host web-3" not in log_a

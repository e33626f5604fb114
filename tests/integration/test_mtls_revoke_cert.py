"""Revoking one host certificate by serial cuts the stream opened with it, over real mTLS on
loopback: ``opsctl pki revoke-cert SERIAL`` (a real process, with an operator certificate) ends
the agent's live ``Connect`` within seconds, its reconnect with the same certificate is refused,
another host's stream is untouched, and a certificate issued afterwards connects."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import grpc
from cp_harness import Cluster, cluster, run, until
from cp_process import REPO

from controlplane.pki_issue import issue_operator

CUT_WITHIN = 3.0
""""Within a couple of seconds", with room for a noisy CI box."""


async def opsctl_as_admin(c: Cluster, tmp: Path, *args: str) -> tuple[int, str, str]:
    """``opsctl ARGS`` in a process of its own, as an admin operator certificate."""
    key, issued = issue_operator(c.authority(), "root", "admin", time.time())
    (tmp / "op.key").write_bytes(key)
    (tmp / "op.crt").write_bytes(issued.pem)
    (tmp / "ca.crt").write_bytes(c.ca_pem)
    env = {**os.environ, "PYTHONPATH": str(REPO), "STANCH_ADDR": c.addr}
    env.pop("STANCH_TOKEN", None)
    env.pop("STANCH_INSECURE", None)
    env |= {
        "STANCH_CA": str(tmp / "ca.crt"),
        "STANCH_CERT": str(tmp / "op.crt"),
        "STANCH_KEY": str(tmp / "op.key"),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controlplane.opsctl",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_revoking_a_host_certificate_by_serial_cuts_its_live_stream(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, tls=True) as c:
            key, cert, serial = c.issue_host_cert("web-1")
            await c.record_cert("web-1", serial)  # as enrollment records what it issues
            other_key, other_cert, other_serial = c.issue_host_cert("web-2")
            await c.record_cert("web-2", other_serial)
            agent = await c.agent("web-1", credentials=c.credentials(cert, key))
            bystander = await c.agent("web-2", credentials=c.credentials(other_cert, other_key))
            await until(
                lambda: c.plane.connections.hosts() == ["web-1", "web-2"], 10, "both connected"
            )

            code, out, err = await opsctl_as_admin(
                c, tmp_path, "pki", "revoke-cert", serial.upper(), "--reason", "key leaked"
            )
            asked = time.monotonic()
            assert code == 0, err
            assert f"{serial} (web-1): revoked" in out, out
            await until(lambda: agent.ended is not None, CUT_WITHIN + 5, "web-1's stream cut")
            assert time.monotonic() - asked < CUT_WITHIN
            await until(lambda: c.plane.connections.hosts() == ["web-2"], 5, "web-1 released")

            again = await c.agent("web-1", credentials=c.credentials(cert, key))
            await until(lambda: again.ended is not None, 10, "the reconnect to end")
            assert again.ended == grpc.StatusCode.PERMISSION_DENIED
            assert bystander.ended is None and "web-2" in c.plane.connections.hosts()

            # The host itself is not revoked: a new certificate connects.
            fresh_key, fresh_cert, fresh_serial = c.issue_host_cert("web-1")
            await c.record_cert("web-1", fresh_serial)
            back = await c.agent("web-1", credentials=c.credentials(fresh_cert, fresh_key))
            await until(lambda: "web-1" in c.plane.connections.hosts(), 10, "web-1 back")
            assert back.ended is None

            audit = await c.plane.audit.entries(action="certificate.revoke")
            assert [(e.actor, e.target, e.result) for e in audit] == [
                ("root", f"serial={serial.upper()}", "ok")
            ]

    run(scenario())


def test_revoking_a_renewed_hosts_old_certificate_leaves_its_current_stream(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, tls=True) as c:
            _, _, old_serial = c.issue_host_cert("web-1")
            await c.record_cert("web-1", old_serial)
            key, cert, serial = c.issue_host_cert("web-1")  # renewed: streams on this one
            await c.record_cert("web-1", serial)
            agent = await c.agent("web-1", credentials=c.credentials(cert, key))
            await until(lambda: c.plane.connections.hosts() == ["web-1"], 10, "web-1 in")
            conn = c.plane.connections.get("web-1")
            assert conn is not None and conn.serial == serial
            code, out, err = await opsctl_as_admin(c, tmp_path, "pki", "revoke-cert", old_serial)
            assert code == 0 and f"{old_serial} (web-1): revoked" in out, err
            # RevokeCertificate closes the streams it cuts before it answers: none here.
            assert not conn.closed and c.plane.connections.get("web-1") is conn
            assert agent.ended is None

    run(scenario())

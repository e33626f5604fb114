"""``stanch-cp`` and ``opsctl`` as real processes with TLS: the server refuses to start without
TLS material unless ``--insecure``; ``opsctl pki init`` material serves mTLS; an operator
certificate drives ``pki token`` and ``agents revoke``, which cuts a live agent off, then
``agents unrevoke``; ``pki revoke-cert`` refuses one operator certificate from the next call."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import sys
from pathlib import Path

import grpc
from cp_harness import SimAgent, until
from cp_process import REPO, ServerProcess

from controlplane.pki import PkiPaths

FAST = ("--tick", "50ms", "--presence-interval", "100ms", "--log-format", "json")


def _base(cp: ServerProcess) -> list[str]:
    tmp = cp.tmp
    return [
        sys.executable, "-m", "controlplane.server",
        "--db", str(tmp / "cp.db"),
        "--listen", "127.0.0.1:0",
        "--assignment-key", str(tmp / "cp" / "assign.key"),
        "--trust", str(tmp / "trust"),
        *FAST,
    ]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
    for name in ("STANCH_TOKEN", "STANCH_CA", "STANCH_CERT", "STANCH_KEY", "STANCH_INSECURE"):
        if name not in extra:
            env.pop(name, None)
    return env


def _opsctl(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controlplane.opsctl", *args],
        cwd=REPO,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_tls_material_and_no_insecure_refuses_to_start(tmp_path: Path) -> None:
    cp = ServerProcess.create(tmp_path)
    done = subprocess.run(
        _base(cp), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    for named in ("--pki-dir", "--tls-cert", "--client-ca", "opsctl pki init", "--insecure"):
        assert named in done.stderr, named
    both = [*_base(cp), "--insecure", "--pki-dir", str(tmp_path)]
    done = subprocess.run(both, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "contradict" in done.stderr


def test_opsctl_pki_material_serves_mtls_and_revoke_cuts_an_agent_off(tmp_path: Path) -> None:
    cp = ServerProcess.create(tmp_path)
    pki = tmp_path / "pki"
    init = _opsctl("pki", "init", "--dir", str(pki), "--san", "localhost", "--san", "127.0.0.1")
    assert init.returncode == 0, init.stderr
    issued = _opsctl("pki", "issue-operator", "root", "--role", "admin", "--dir", str(pki))
    assert issued.returncode == 0, issued.stderr
    log = (tmp_path / "cp.log").open("ab")
    proc = subprocess.Popen(
        [*_base(cp), "--pki-dir", str(pki)], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
        stderr=log,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        stdout = proc.stdout
        reading = concurrent.futures.ThreadPoolExecutor(1).submit(
            lambda: [stdout.readline().decode() for _ in range(2)]
        )
        lines = reading.result(timeout=30)
        assert "listening on" in lines[0] and "enrollment on" in lines[1], lines
        addr = "127.0.0.1:" + lines[0].rsplit(":", 1)[1].strip()
        enroll_addr = "127.0.0.1:" + lines[1].rsplit(":", 1)[1].strip()
        paths = PkiPaths(pki)
        admin = {
            "STANCH_ADDR": addr,
            "STANCH_CA": str(paths.ca_cert),
            "STANCH_CERT": str(pki / "root.crt"),
            "STANCH_KEY": str(pki / "root.key"),
        }
        token = _opsctl("pki", "token", "--host", "web-1", "--valid", "10m", **admin)
        assert token.returncode == 0, token.stderr
        assert len(token.stdout.strip().split(".")) == 2
        # Only a CA and no certificate: the mTLS port refuses the handshake, and says why.
        bare = _opsctl("agents", "list", STANCH_ADDR=addr, STANCH_CA=str(paths.ca_cert))
        assert bare.returncode == 2 and "operator certificate" in bare.stderr
        # A bearer token and no certificate: the enrollment port serves TLS without one.
        minted = subprocess.run(
            [sys.executable, "-m", "controlplane.server", "tokens", "create", "--db"]
            + [str(tmp_path / "cp.db"), "--name", "bob", "--role", "viewer"],
            cwd=REPO,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert minted.returncode == 0, minted.stderr
        by_token = _opsctl(
            "agents",
            "list",
            STANCH_ADDR=enroll_addr,
            STANCH_CA=str(paths.ca_cert),
            STANCH_TOKEN=minted.stdout.strip(),
        )
        assert by_token.returncode == 0, by_token.stderr
        # Plaintext against a TLS server fails rather than leaking anything.
        plain = _opsctl("agents", "list", "--insecure", STANCH_ADDR=enroll_addr)
        assert plain.returncode == 2

        async def scenario() -> None:
            cp.pki = paths
            cp.port = int(addr.rsplit(":", 1)[1])
            key, cert, _ = cp.issue_host_cert("web-1")
            agent = SimAgent(
                addr, "web-1", {"env": "prod"}, cp.assign_keys,
                credentials=cp.credentials(cert, key),
            )  # fmt: skip
            await agent.connect()
            try:
                listed = await asyncio.to_thread(_opsctl, "agents", "list", "-o", "json", **admin)
                await until(lambda: "web-1" in _opsctl("agents", "list", **admin).stdout, 10)
                assert listed.returncode == 0
                revoke = await asyncio.to_thread(
                    _opsctl, "agents", "revoke", "web-1", "--reason", "decommissioned", **admin
                )
                assert revoke.returncode == 0, revoke.stderr
                assert "its stream was cut" in revoke.stdout
                code = await until(lambda: agent.ended, 5, "the stream cut")
                assert code == grpc.StatusCode.OK
                again = SimAgent(
                    addr, "web-1", {"env": "prod"}, cp.assign_keys,
                    credentials=cp.credentials(cert, key),
                )  # fmt: skip
                await again.connect()
                assert await until(lambda: again.ended, 5) == grpc.StatusCode.PERMISSION_DENIED
                await again.close()
            finally:
                await agent.close()

        asyncio.run(asyncio.wait_for(scenario(), 60))
        revoked = _opsctl("pki", "revoked", **admin)
        assert "web-1" in revoked.stdout and "decommissioned" in revoked.stdout
        # One operator certificate revoked by the serial issue-operator printed.
        eve = _opsctl("pki", "issue-operator", "eve", "--role", "viewer", "--dir", str(pki))
        assert eve.returncode == 0, eve.stderr
        serial = eve.stdout.split("serial: ", 1)[1].split()[0]
        as_eve = {**admin, "STANCH_CERT": str(pki / "eve.crt"), "STANCH_KEY": str(pki / "eve.key")}
        assert _opsctl("agents", "list", **as_eve).returncode == 0
        neither = _opsctl("pki", "revoke-cert", **admin)
        assert neither.returncode != 0 and "exactly one" in neither.stderr
        cut = _opsctl("pki", "revoke-cert", serial, "--reason", "left", **admin)
        assert cut.returncode == 0 and f"{serial} (operator:?): revoked" in cut.stdout, cut
        refused = _opsctl("agents", "list", **as_eve)
        assert refused.returncode != 0 and "authentication required" in refused.stderr, refused
        # The host comes back: unrevoked (once), it may enroll again.
        lifted = _opsctl("agents", "unrevoke", "web-1", **admin)
        assert lifted.returncode == 0 and "enroll it again" in lifted.stdout, lifted
        twice = _opsctl("agents", "unrevoke", "web-1", **admin)
        assert twice.returncode != 0 and "not revoked" in twice.stderr, twice
        assert "web-1" not in _opsctl("pki", "revoked", **admin).stdout
    finally:
        proc.terminate()
        proc.wait(10)
    text = (tmp_path / "cp.log").read_text()
    assert "host 'web-1' is revoked" in text

"""What the fleet channel costs a host: nothing without a control plane, a bounded RSS with one.

The module checks run a real ``Agent`` in a fresh interpreter (the only honest way to see what
it imports); the RSS check runs ``stanch-agent run`` as a real process connected to a fake
control plane and is marked slow (it needs a warm-up to measure a steady state).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_fake import FakeFleet

from agent.bundle import BundleStore
from agent.bundle.keys import public_pem
from controlplane.bundle_fixtures import KeyRing, make_bundle, policy_text, write_source

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("grpc", "google.protobuf", "stanch", "asyncio", "cryptography")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def setup_host(root: Path, policies: int = 20, control_plane: str | None = None) -> Path:
    """An agent config running a signed bundle of ``policies`` file checks; returns its path."""
    ring = KeyRing.generate(1)
    trust = ring.write_pubs(root / "trust")
    keys = root / "keys"
    keys.mkdir()
    (keys / "cp.pub").write_bytes(public_pem(Ed25519PrivateKey.generate().public_key()))
    texts = {
        f"p{i}.yaml": policy_text(f"p{i}", path=str(root / f"hb{i}"), limit=10**6)
        for i in range(policies)
    }
    bundle = make_bundle(write_source(root / "src", texts), ring, [0], created=time.time())
    state = root / "state"
    BundleStore(state).install(bundle.write(root / "out"), ring.trust(1), time.time())
    doc: dict[str, object] = {
        "apiVersion": "stanch.dev/v1",
        "kind": "AgentConfig",
        "host": {"id": "footprint"},
        "policy_source": "bundle",
        "state_dir": str(state),
    }
    if control_plane:
        doc["control_plane"] = {
            "address": control_plane,
            "insecure": True,
            "assignment_keys": str(keys),
            "trust": str(trust),
            "heartbeat": "1s",
        }
    path = root / "agent.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def loaded_modules(config: Path) -> list[str]:
    """Run an Agent for a moment in a fresh interpreter; the heavy modules it loaded."""
    code = textwrap.dedent(
        f"""
        import json, sys, threading, time
        from agent.config import load_config
        from agent.runner import Agent
        agent = Agent(load_config({str(config)!r}))
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        time.sleep(1.5)
        agent.request_stop()
        thread.join(20)
        heavy = {HEAVY!r}
        print(json.dumps(sorted(m for m in sys.modules if m.startswith(heavy))))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return modules


def test_an_agent_without_a_control_plane_never_loads_grpc(tmp_path: Path) -> None:
    assert loaded_modules(setup_host(tmp_path, policies=3)) == []


def test_a_connected_agent_loads_grpc_but_never_cryptography(tmp_path: Path) -> None:
    """Signatures are checked by the verifier child process, so the long-lived agent does not
    map cryptography's ~6 MiB (see agent/fleet/verifier.py)."""
    config = setup_host(tmp_path, policies=3, control_plane=f"127.0.0.1:{free_port()}")
    loaded = loaded_modules(config)
    assert "grpc" in loaded and "stanch.v1.fleet_pb2" in loaded
    assert not [m for m in loaded if m.startswith("cryptography")]


def rss_mib(config: Path, fake: FakeFleet | None, warmup: float = 8.0) -> float:
    """Median RSS of ``stanch-agent run`` over 5 s after a warm-up."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "--config", str(config), "run", "--log-level", "error"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(warmup)
        if fake is not None:
            assert fake.wait(lambda: len(fake.heartbeats) >= 3), "the agent never connected"
        process = psutil.Process(proc.pid)
        samples = []
        for _ in range(10):
            samples.append(process.memory_info().rss / 2**20)
            time.sleep(0.5)
        return sorted(samples)[len(samples) // 2]
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.slow
def test_rss_of_a_connected_agent(tmp_path: Path) -> None:
    """Measured on python-svc (2 cores, CPython 3.11, grpcio 1.85), 20 policies: ~23 MiB alone,
    ~45 MiB connected. Where the ~22 MiB go: grpcio's cygrpc ~10 MiB mapped, the asyncio + ssl
    (libcrypto) it imports ~5 MiB, protobuf ~2.5 MiB, the rest grpc core threads and buffers.
    The issue's target is 45 MB (42.9 MiB); the figure is a benchmark (BENCHMARKS.md), and it
    varies between runs and venvs (45.1-48.7 MiB seen). This bound only catches gross
    regressions (a heavy import on the agent's path), not the target."""
    alone = rss_mib(setup_host(tmp_path / "alone"), None)
    fake = FakeFleet().start()
    try:
        config = setup_host(tmp_path / "connected", control_plane=fake.address)
        connected = rss_mib(config, fake)
    finally:
        fake.stop()
    print(f"RSS: alone {alone:.1f} MiB, connected {connected:.1f} MiB")
    assert alone < 30.0
    assert connected < 56.0

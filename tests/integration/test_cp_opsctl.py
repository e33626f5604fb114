"""``opsctl`` as an operator runs it: a real command against a real control-plane process, with
simulated agents attached. kubectl habits: ``-o``, ``-l``, errors on stderr, exit codes,
``STANCH_ADDR``; ``rollout status --watch`` exits 0 on success and 1 on rollback."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from cp_harness import execution, run, until
from cp_process import REPO, ServerProcess

from controlplane import bundle_build
from controlplane.bundle_fixtures import policy_text, write_source


@dataclass
class Result:
    code: int
    out: str
    err: str


async def opsctl(cp: ServerProcess, *args: str, addr: str | None = None) -> Result:
    env = {**os.environ, "PYTHONPATH": str(REPO), "STANCH_ADDR": addr or cp.addr}
    env.pop("STANCH_TOKEN", None)
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
    return Result(proc.returncode, out.decode(), err.decode())


def write(cp: ServerProcess, data: bytes, name: str) -> str:
    path = cp.tmp / name
    path.write_bytes(data)
    return str(path)


def test_publish_refuses_unsigned_tampered_and_older_bundles(tmp_path: Path) -> None:
    async def scenario() -> None:
        cp = ServerProcess.create(tmp_path)
        cp.start()
        try:
            v2 = write(cp, cp.bundle(2), "v2.bundle")
            ok = await opsctl(cp, "bundle", "publish", v2)
            assert ok.code == 0, ok.err
            assert ok.out.startswith("published web v2 ")
            again = await opsctl(cp, "bundle", "publish", v2, "-o", "json")
            assert again.code == 0 and json.loads(again.out)["already_published"] is True

            source = write_source(tmp_path / "plain", {"heartbeat.yaml": policy_text("heartbeat")})
            unsigned = bundle_build.build(source, "web", 3, time.time(), time.time() + 3600)
            refused = await opsctl(cp, "bundle", "publish", write(cp, unsigned.data, "u.bundle"))
            assert refused.code == 1 and "no_signature" in refused.err and not refused.out

            signed = bundle_build.read(Path(v2))
            files = {**signed.files, "heartbeat.yaml": b"tampered: true\n"}
            tampered = bundle_build.assemble(signed.envelope, signed.manifest, files)
            bad = await opsctl(cp, "bundle", "publish", write(cp, tampered.data, "t.bundle"))
            assert bad.code == 1 and "hash_mismatch" in bad.err

            older = await opsctl(cp, "bundle", "publish", write(cp, cp.bundle(1), "v1.bundle"))
            assert older.code == 1 and "version_not_newer" in older.err and "v2" in older.err

            down = await opsctl(cp, "agents", "list", addr="127.0.0.1:1")
            assert down.code == 2 and "cannot reach the control plane" in down.err
        finally:
            await cp.close()

    run(scenario())


def test_rollouts_fleet_and_reports_from_the_command_line(tmp_path: Path) -> None:
    async def scenario() -> None:
        cp = ServerProcess.create(tmp_path)
        cp.start()
        try:
            v1 = await cp.publish(cp.bundle(1, minutes=15))
            bad_digest = ""

            def verdict(a):  # the agents refuse v3
                return (False, "invalid_policy") if a.bundle_digest == bad_digest else (True, "")

            web = [
                await cp.agent(
                    f"web-{i}",
                    {"env": "prod", "role": "web"},
                    digest=v1.digest,
                    version=1,
                    verdict=verdict,
                )
                for i in range(3)
            ]
            db = await cp.agent("db-0", {"env": "prod", "role": "db"}, digest=v1.digest, version=1)
            good = write(cp, cp.bundle(2, minutes=15), "v2.bundle")
            start = await opsctl(
                cp,
                "rollout",
                "policy",
                good,
                "--selector",
                "env=prod",
                "--waves",
                "1,100%",
                "--bake",
                "300ms",
                "--gate",
                "agents_lost=1",
                "--gate-mode",
                "escalations=observe",
                "--watch",
            )
            assert start.code == 0, start.err + start.out
            assert "completed" in start.out.splitlines()[-1]
            assert all(s.on != v1.digest for s in [*web, db])

            status = await opsctl(cp, "rollout", "status", "-o", "json")
            doc = json.loads(status.out)
            assert doc["state"] == "completed" and doc["selector"] == {"env": "prod"}
            gates = {g["name"]: g for g in doc["gates"]}
            assert gates["agents_lost"]["threshold"] == "1"
            assert gates["escalations"]["mode"] == "observe"
            table = await opsctl(cp, "rollout", "status")
            assert "WAVE" in table.out and "passed" in table.out and "GATE" in table.out

            conflict_bake = await opsctl(
                cp, "rollout", "policy", good, "--all-hosts", "--bake", "1h"
            )
            assert conflict_bake.code == 0, conflict_bake.err
            clash = await opsctl(cp, "rollout", "policy", good, "-l", "role=web")
            assert clash.code == 1 and "abort" in clash.err
            listed = await opsctl(cp, "rollout", "list", "-o", "json")
            running = [r["id"] for r in json.loads(listed.out) if r["state"] == "running"]
            aborted = await opsctl(cp, "rollout", "abort", running[0], "--reason", "clash test")
            assert aborted.code == 0 and "aborted" in aborted.out

            bad = await cp.publish(cp.bundle(3, minutes=15))
            bad_digest = bad.digest
            halted = await opsctl(
                cp,
                "rollout",
                "policy",
                bad.digest[:12],
                "-l",
                "role=web",
                "--waves",
                "1,100%",
                "--bake",
                "5s",
                "--watch",
            )
            assert halted.code == 1, halted.out + halted.err
            assert "rolled_back" in halted.out and "failed_applies" in halted.out
            assert (
                sum(1 for s in web if any(a.bundle_digest == bad.digest for a in s.accepted)) == 1
            )

            agents = await opsctl(cp, "agents", "list", "-o", "json", "-l", "role=web")
            assert sorted(a["host_id"] for a in json.loads(agents.out)) == [s.host_id for s in web]
            as_yaml = yaml.safe_load((await opsctl(cp, "agents", "list", "-o", "yaml")).out)
            assert {a["host_id"] for a in as_yaml} == {"web-0", "web-1", "web-2", "db-0"}
            plain = await opsctl(cp, "agents", "list", "-l", "role=db")
            assert plain.out.splitlines()[0].split()[:2] == ["HOST", "CONNECTED"]
            assert "db-0" in plain.out and "web-0" not in plain.out

            now = time.time()
            await web[0].report(
                execution(1, "heartbeat", "fixed", at=now - 5, detected_at=now - 65),
                execution(2, "heartbeat", "not_fixed", at=now - 4),
            )
            await db.report(execution(1, "disk", "fixed", at=now - 3))
            await until(lambda: len(web[0].acks) == 2 and len(db.acks) == 1, what="acks")
            reports = await opsctl(cp, "reports", "list", "--policy", "heartbeat", "-o", "json")
            assert [r["id"] for r in json.loads(reports.out)] == ["2", "1"]
            pareto = json.loads(
                (await opsctl(cp, "reports", "pareto", "--since", "7d", "-o", "json")).out
            )
            top = pareto["policies"][0]
            assert top["policy"] == "heartbeat" and top["count"] == "2" and top["fixed"] == "1"
            assert top["toil_saved_minutes"] == 30.0 and top["mttr_seconds"] == 60.0
            pareto_table = await opsctl(cp, "reports", "pareto")
            assert "TOIL SAVED" in pareto_table.out and "30m" in pareto_table.out
            explain = await opsctl(cp, "explain", "web-0", "heartbeat")
            assert "not_fixed" in explain.out and "fixed" in explain.out
            unknown = await opsctl(cp, "explain", "nope", "heartbeat")
            assert unknown.code == 1 and "never connected" in unknown.err

            paused = await opsctl(
                cp, "pause", "--policy", "heartbeat", "--for", "1h", "--reason", "maintenance"
            )
            assert paused.code == 0 and "reached 4" in paused.out
            await until(lambda: all("heartbeat" in s.pauses for s in [*web, db]), 1.0, "pause")
            assert "heartbeat" in (await opsctl(cp, "pauses", "list")).out
            assert "PAUSED centrally" in (await opsctl(cp, "explain", "db-0", "heartbeat")).out
            resumed = await opsctl(cp, "resume", "--policy", "heartbeat")
            assert resumed.code == 0 and "cleared 1" in resumed.out
        finally:
            await cp.close()

    run(scenario())

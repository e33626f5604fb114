"""The operator's path, as real commands against a real ``stanch-cp`` process: the first admin
token minted offline (``stanch-cp tokens create --db``, no token needed), ``opsctl tokens``,
``opsctl audit list``, and ``opsctl audit verify`` catching a row edited or deleted in the SQLite
file behind the control plane's back."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

from cp_harness import run
from cp_process import REPO, ServerProcess


@dataclass
class Result:
    code: int
    out: str
    err: str


async def command(module: str, *args: str, env: dict[str, str]) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def environment(cp: ServerProcess, token: str | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "STANCH_ADDR": cp.addr}
    for name in ("STANCH_TOKEN", "STANCH_ADMIN_TOKEN", "STANCH_CA", "STANCH_CERT", "STANCH_KEY"):
        env.pop(name, None)  # plaintext to the --insecure server, only the token given here
    if token:
        env["STANCH_TOKEN"] = token
    return env


async def opsctl(cp: ServerProcess, token: str | None, *args: str) -> Result:
    return await command("controlplane.opsctl", *args, env=environment(cp, token))


def test_bootstrap_tokens_audit_and_tamper_detection(tmp_path: Path) -> None:
    async def scenario() -> None:
        cp = ServerProcess.create(tmp_path)
        cp.start()
        db = str(tmp_path / "cp.db")
        try:
            boot = await command(
                "controlplane.server",
                "tokens",
                "create",
                "--db",
                db,
                "--name",
                "root",
                "--role",
                "admin",
                "--expires",
                "30d",
                env=environment(cp, None),
            )
            assert boot.code == 0, boot.err
            root = boot.out.strip()
            assert root.startswith("stk_") and "shown only once" in boot.err, boot

            anonymous = await opsctl(cp, None, "tokens", "list")
            assert anonymous.code == 1 and "authentication required" in anonymous.err, anonymous

            minted = await opsctl(
                cp, root, "tokens", "create", "--name", "otto", "--role", "operator"
            )
            assert minted.code == 0, minted.err
            otto = minted.out.strip()
            denied = await opsctl(cp, otto, "tokens", "create", "--name", "x", "--role", "admin")
            assert denied.code == 1 and "permission denied" in denied.err, denied

            paused = await opsctl(cp, otto, "pause", "--policy", "heartbeat", "--reason", "maint")
            assert paused.code == 0, paused.err
            listed = await opsctl(cp, root, "tokens", "list", "-o", "json")
            names = {t["name"]: t for t in json.loads(listed.out)["tokens"]}
            assert set(names) == {"root", "otto"} and names["otto"]["created_by"] == "root"
            assert names["root"]["created_by"].startswith("local:")

            table = await opsctl(cp, otto, "audit", "list")
            assert (
                table.code == 0 and "fleet.pause" in table.out and "otto (operator)" in table.out
            ), table
            doc = json.loads((await opsctl(cp, otto, "audit", "list", "-o", "json")).out)
            rows = [(e["seq"], e["actor"], e["action"], e["result"]) for e in doc["entries"]]
            assert [r[2:] for r in rows] == [
                ("token.create", "ok"),
                ("token.create", "ok"),
                ("token.create", "PERMISSION_DENIED"),
                ("fleet.pause", "ok"),
            ]
            assert rows[0][1].startswith("local:") and rows[3][1] == "otto"
            only = await opsctl(cp, otto, "audit", "list", "--actor", "otto", "-o", "json")
            assert [e["action"] for e in json.loads(only.out)["entries"]] == [
                "token.create",
                "fleet.pause",
            ]

            ok = await opsctl(cp, otto, "audit", "verify")
            assert ok.code == 0 and "intact: 4 entries" in ok.out, ok.err
            head = json.loads((await opsctl(cp, otto, "audit", "verify", "-o", "json")).out)
            anchor = f"{head['head_seq']}:{head['head_hash']}"
            assert head["head_seq"] == "4" and anchor in ok.out

            # Cutting the newest entry leaves a valid shorter chain; the anchor kept from
            # before catches it. Put back, the anchor matches again.
            with sqlite3.connect(db) as conn:
                saved = conn.execute("SELECT * FROM audit_log WHERE seq = 4").fetchone()
                conn.execute("DELETE FROM audit_log WHERE seq = 4")
            assert (await opsctl(cp, otto, "audit", "verify")).code == 0
            short = await opsctl(cp, otto, "audit", "verify", "--anchor", anchor)
            assert short.code == 1 and "cut from the end" in short.err, short
            with sqlite3.connect(db) as conn:
                marks = ",".join("?" * len(saved))
                conn.execute(f"INSERT INTO audit_log VALUES ({marks})", saved)
            back = await opsctl(cp, otto, "audit", "verify", "--anchor", anchor)
            assert back.code == 0 and "anchor 4 matches" in back.out, back
            typo = await opsctl(cp, otto, "audit", "verify", "--anchor", "4:nothex")
            assert typo.code != 0 and "expected SEQ:HASH" in typo.err, typo

            # Someone with the file rewrites history: the denied attempt becomes a success.
            with sqlite3.connect(db) as conn:
                conn.execute("UPDATE audit_log SET result = 'ok' WHERE seq = 3")
            bad = await opsctl(cp, otto, "audit", "verify")
            assert bad.code == 1 and "TAMPERED at seq 3" in bad.err and "edited" in bad.err, bad
            with sqlite3.connect(db) as conn:
                conn.execute("UPDATE audit_log SET result = 'PERMISSION_DENIED' WHERE seq = 3")
            assert (await opsctl(cp, otto, "audit", "verify")).code == 0

            # ... or removes the entry altogether.
            with sqlite3.connect(db) as conn:
                conn.execute("DELETE FROM audit_log WHERE seq = 2")
            gone = await opsctl(cp, otto, "audit", "verify", "-o", "json")
            assert gone.code == 1, gone
            result = json.loads(gone.out)
            assert (result["ok"], result["first_bad_seq"], result["checked"]) == (False, "3", "1")

            revoked = await command(
                "controlplane.server",
                "tokens",
                "revoke",
                "--db",
                db,
                otto.split("_")[1],
                env=environment(cp, None),
            )
            assert revoked.code == 0, revoked.err
            cut = await opsctl(cp, otto, "audit", "list")
            assert cut.code == 1 and "authentication required" in cut.err, cut
        finally:
            await cp.close()

    run(scenario())

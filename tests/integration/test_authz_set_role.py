"""``opsctl tokens set-role`` against a real ``stanch-cp`` process: admin only, effective on the
token's next call (same secret), audited with the old and the new role, refused for an unknown
or revoked token with a message that says what to do."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from cp_process import ServerProcess
from test_authz_cli import command, environment, opsctl

from controlplane.audit import summarize

SET_ROLE = "/stanch.v1.Security/SetTokenRole"


def test_set_role_is_admin_only_effective_at_once_and_audited(tmp_path: Path) -> None:
    action = summarize(SET_ROLE, None)[0]

    async def scenario() -> None:
        cp = ServerProcess.create(tmp_path)
        cp.start()
        db = str(tmp_path / "cp.db")
        try:
            boot = await command(
                "controlplane.server",
                *("tokens", "create", "--db", db, "--name", "root", "--role", "admin"),
                env=environment(cp, None),
            )
            assert boot.code == 0, boot.err
            root = boot.out.strip()
            minted = await opsctl(
                cp, root, "tokens", "create", "--name", "otto", "--role", "operator"
            )
            assert minted.code == 0, minted.err
            otto = minted.out.strip()
            otto_id = otto.split("_")[1]

            # an operator cannot promote itself
            denied = await opsctl(cp, otto, "tokens", "set-role", otto_id, "admin")
            assert denied.code == 1 and "permission denied" in denied.err, denied

            demoted = await opsctl(cp, root, "tokens", "set-role", otto_id, "viewer")
            assert demoted.code == 0, demoted.err
            assert f"token {otto_id} (otto): role operator -> viewer" in demoted.out, demoted
            # the same secret, the new role, from the very next call
            paused = await opsctl(cp, otto, "pause", "--policy", "heartbeat", "--reason", "x")
            assert paused.code == 1 and "permission denied" in paused.err, paused
            assert (await opsctl(cp, otto, "audit", "list")).code == 0

            promoted = await opsctl(
                cp, root, "tokens", "set-role", otto, "admin", "-o", "json"
            )  # a pasted whole token works too: only its id goes over the wire
            assert promoted.code == 0, promoted.err
            doc = json.loads(promoted.out)
            assert (doc["old_role"], doc["info"]["role"]) == ("viewer", "admin")
            listed = await opsctl(cp, otto, "tokens", "list", "-o", "json")
            assert listed.code == 0, listed.err
            roles = {t["name"]: t["role"] for t in json.loads(listed.out)["tokens"]}
            assert roles == {"root": "admin", "otto": "admin"}

            unknown = await opsctl(cp, root, "tokens", "set-role", "feedfeedfeedfeed", "viewer")
            assert unknown.code == 1 and "no such token" in unknown.err, unknown
            assert (await opsctl(cp, root, "tokens", "revoke", otto_id)).code == 0
            dead = await opsctl(cp, root, "tokens", "set-role", otto_id, "viewer")
            assert dead.code == 1 and "is revoked" in dead.err and "tokens create" in dead.err

            audit = await opsctl(cp, root, "audit", "list", "--action", action, "-o", "json")
            entries = json.loads(audit.out)["entries"]
            rows = [(e["actor"], e["target"], e["result"]) for e in entries]
            assert rows == [
                ("otto", f"id={otto_id}", "PERMISSION_DENIED"),
                ("root", f"id={otto_id}", "ok"),
                ("root", f"id={otto_id}", "ok"),
                ("root", "id=feedfeedfeedfeed", "NOT_FOUND"),
                ("root", f"id={otto_id}", "FAILED_PRECONDITION"),
            ]
            details = [json.loads(e["detail_json"]) for e in entries]
            assert [(d.get("old_role"), d.get("new_role"), d.get("role")) for d in details] == [
                (None, None, "admin"),
                ("operator", "viewer", "viewer"),
                ("viewer", "admin", "admin"),
                (None, None, "viewer"),
                (None, None, "viewer"),
            ]
            assert details[1]["holder"] == "otto"
            assert (await opsctl(cp, root, "audit", "verify")).code == 0
        finally:
            await cp.close()

    asyncio.run(asyncio.wait_for(scenario(), 120))  # ~15 opsctl processes

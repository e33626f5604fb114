"""A fleet of real agent processes whose one policy is in ``mode: approve``, driven with real
``opsctl`` commands: shared by the approval tests on one control plane
(``test_cp_approvals``) and on two replicas sharing PostgreSQL (``test_pg_replicas_approvals``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from agent.journal import Journal
from controlplane.fleet_demo import FIX, POLICY, Demo

NAME = "app-heartbeat"
HOSTS = [("web-1", "web"), ("web-2", "web"), ("web-3", "web")]
APPROVE_POLICY = POLICY.format(script=FIX).replace(
    "  guardrails: {cooldown: 1s}\n",
    "  mode: approve\n  guardrails: {cooldown: 1s, approval_ttl: 10m}\n",
)


class ApprovalFleet(Demo):
    Failure = AssertionError
    # Every host is broken on purpose: the fleet storm breaker must not pause the policy.
    cp_flags = ("--tick", "200ms", "--presence-interval", "500ms", "--storm-min-hosts", "100")
    agent_log_level = "info"

    def ctl(
        self, *args: str, operator: str = "alice", addr: str = ""
    ) -> subprocess.CompletedProcess[str]:
        """``opsctl ARGS`` as ``operator``, against ``addr`` (default: the control plane)."""
        done = subprocess.run(
            [sys.executable, "-m", "controlplane.opsctl", *args],
            env={**self.env, "STANCH_ADDR": addr or self.addr, "STANCH_OPERATOR": operator},
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        return done

    def json(self, *args: str, addr: str = "") -> Any:
        done = self.ctl(*args, "-o", "json", addr=addr)
        assert done.returncode == 0, f"opsctl {' '.join(args)}: {done.stderr}"
        return json.loads(done.stdout)

    def release(self) -> None:
        source = self.work / "policies"
        source.mkdir()
        (source / f"{NAME}.yaml").write_text(APPROVE_POLICY)
        out = self.work / "bundles"
        built = self.opsctl(
            "bundle", "build", str(source), "-o", str(out), "--name", "demo",
            "--version", "1", "--expires", "7d", show=False, must=True,
        )  # fmt: skip
        key = str(self.work / "keys" / "release-1")
        signed = self.opsctl(
            "bundle", "sign", built.stdout.split()[1], "--key", key, show=False, must=True
        )
        path = signed.stdout.split()[1]
        self.opsctl("bundle", "publish", path, show=False, must=True)
        rollout = self.opsctl(
            "rollout", "policy", path, "-l", "env=demo", "--waves", "100%", "--bake", "0s",
            "--watch", show=False, timeout=120,
        )  # fmt: skip
        assert rollout.returncode == 0, rollout.stdout + rollout.stderr

    def pending(self, addr: str = "") -> dict[str, dict[str, Any]]:
        return {a["host_id"]: a for a in self.json("approvals", "list", addr=addr)}

    def reports(self, host: str, kind: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.json("reports", "list", "--host", host, "--kind", kind)
        return found

    def approval_rows(self, host: str) -> list[dict[str, Any]]:
        journal = Journal(self.work / host / "state" / "state.db")
        try:
            return [dict(r) for r in journal.approvals(None)]
        finally:
            journal.close()

    def executions(self, host: str) -> list[str]:
        journal = Journal(self.work / host / "state" / "state.db")
        try:
            return [e.status for e in journal.executions(NAME)]
        finally:
            journal.close()

"""Harness for the console's browser tests: the demo's real processes plus a real browser.

:class:`ConsoleFleet` is :class:`controlplane.fleet_demo.Demo` (a real ``stanch-cp`` on SQLite,
one real ``python -m agent.cli run`` process per host, bundles built, signed and published with
``opsctl``, faults injected by letting a host's heartbeat file go stale) with the console on
(``--console-listen 127.0.0.1:0``, read with ``Demo.open_console``) and API tokens minted offline
with ``stanch-cp tokens create``, as an operator bootstraps them; ``opsctl`` then runs with an
admin token. Plaintext (``Demo.tls`` off), as the e2e harness.

:func:`launch` starts Debian's chromium (``/usr/bin/chromium``) through Playwright's
``executable_path``; the tests skip with a reason where either is missing. Screenshots go to
``docs/screenshots/`` (linked from the README).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from controlplane.fleet_demo import FIX, POLICY, Demo, wait_for
from controlplane.storage.base_auth import AuditQuery
from controlplane.storage.sqlite import SqliteStorage

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
NAME = "app-heartbeat"
HOSTS = [("web-1", "web"), ("web-2", "web"), ("web-3", "web"), ("db-1", "db")]
APPROVE_POLICY = POLICY.format(script=FIX).replace(
    "  guardrails: {cooldown: 1s}\n",
    "  mode: approve\n  runbook: https://runbooks.example.com/app-heartbeat\n"
    "  guardrails: {cooldown: 1s, approval_ttl: 10m}\n",
)


class ConsoleFleet(Demo):
    Failure = AssertionError
    cp_flags = (
        *Demo.cp_flags,
        "--console-listen",
        "127.0.0.1:0",
        # Tests break hosts on purpose; the fleet storm breaker must not pause the policy.
        "--storm-min-hosts",
        "100",
    )
    agent_log_level = "info"

    def __init__(self, work: Path) -> None:
        super().__init__(work, HOSTS)
        self.console = ""
        self.tokens: dict[str, str] = {}
        self.version = 0
        self.good = ""
        self.spent: set[str] = set()
        """Hosts whose run budget a failing fix used up (they suppress, not ask, for an hour)."""

    def start(self) -> None:
        self.start_control_plane()
        url, _demo_operator = self.open_console()  # opsctl now runs with an admin token
        self.console = url.rstrip("/")
        for name, role in (("olga", "operator"), ("vic", "viewer")):
            self.tokens[name] = self.mint_token(name, role)
        self.start_agents()

    def ctl_json(self, *args: str) -> Any:
        done = self.opsctl(*args, "-o", "json", show=False, must=True)
        return json.loads(done.stdout)

    def release(self, policy_text: str) -> str:
        """Build, sign and publish the next version of the demo bundle; its digest."""
        self.version += 1
        source = self.work / f"policies-v{self.version}"
        source.mkdir()
        (source / f"{NAME}.yaml").write_text(policy_text)
        out = self.work / "bundles"
        built = self.opsctl(
            "bundle", "build", str(source), "-o", str(out), "--name", "demo",
            "--version", str(self.version), "--expires", "7d", show=False, must=True,
        )  # fmt: skip
        key = str(self.work / "keys" / "release-1")
        signed = self.opsctl(
            "bundle", "sign", built.stdout.split()[1], "--key", key, show=False, must=True
        )
        path = signed.stdout.split()[1]
        self.opsctl("bundle", "publish", path, show=False, must=True)
        return Path(path).name.removesuffix(".bundle")

    def rollout(self, digest: str, waves: str, bake: str) -> str:
        doc = self.ctl_json(
            "rollout", "policy", digest, "-l", "env=demo", "--waves", waves, "--bake", bake
        )
        return str(doc["id"])

    def rollout_state(self, rollout_id: str) -> str:
        return str(self.ctl_json("rollout", "status", rollout_id)["state"])

    def bundles_on(self) -> dict[str, str]:
        return {a["host_id"]: a["bundle_digest"] for a in self.ctl_json("agents", "list")}

    def baseline(self) -> str:
        """Every host on a good bundle (the fix works); its digest."""
        if self.good and set(self.bundles_on().values()) == {self.good}:
            return self.good
        self.heal_all()
        digest = self.release(POLICY.format(script=FIX))
        rollout = self.rollout(digest, "100%", "0s")
        wait_for(
            "the baseline rollout",
            lambda: self.rollout_state(rollout) == "completed",
            90,
            AssertionError,
        )
        self.good = digest
        return digest

    def heal_all(self) -> None:
        for host in list(self.faulty):
            self.faulty.discard(host)
            (self.work / host / "var" / "run" / "app.heartbeat").touch()

    def reports(self, host: str, kind: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.ctl_json(
            "reports", "list", "--host", host, "--kind", kind, "--limit", "50"
        )
        return found

    def audit(self, action: str) -> list[Any]:
        db = SqliteStorage(self.work / "cp.db")
        try:
            return db.audit_entries(AuditQuery(action=action, limit=100))
        finally:
            db.close()

    def pauses(self) -> list[Any]:
        db = SqliteStorage(self.work / "cp.db")
        try:
            return db.pauses(time.time())
        finally:
            db.close()


@contextmanager
def forger(target: str, host: str = "127.0.0.1") -> Iterator[str]:
    """Another origin (a different port) serving a page that auto-submits a form to the console:
    the cross-site request forgery an operator's browser could be tricked into. Yields its URL."""
    page = f"""<!doctype html><html><body>
<form id="f" method="post" action="{target}/act">
<input name="action" value="pause"><input name="policy" value="{NAME}">
<input name="ttl" value="1d"><input name="confirmed" value="yes">
</form><script>document.getElementById("f").submit();</script></body></html>""".encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()

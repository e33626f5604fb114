"""The full loop on one machine: ``python -m controlplane.fleet_demo`` (for ``make demo``).

1. start the control plane on SQLite (a real ``stanch-cp`` process), serving mTLS with a fleet CA
   made by ``opsctl pki init``; opsctl uses an admin operator certificate;
2. start several agents as separate processes, each with its own state dir and labels, each
   enrolling with its own single-use token (``opsctl pki token``) and connecting with mTLS;
3. generate an operator key, build and sign a bundle with ``opsctl``, publish it;
4. roll it out in waves and watch them (``opsctl rollout policy --watch``);
5. inject a fault on one host (its heartbeat file goes stale): the agent fixes it, and the
   remediation shows up centrally in ``opsctl reports list``, ``explain`` and ``pareto``;
6. roll out a deliberately bad bundle (its remediation fails everywhere): it is halted at the
   canary by the failure-rate gate and the canary is rolled back, automatically.

The web console is on (``--console-listen``, port ``$STANCH_DEMO_CONSOLE`` or any free one): its
URL and an operator token minted for the demo are printed first, so every step can be watched in
a browser too; ``STANCH_DEMO_KEEP=1`` keeps the fleet running at the end until Ctrl-C.

Every step is an operator command an SRE would type; nothing is faked. Work files go to
``$STANCH_DEMO_DIR`` (default ``demo-state/fleet``).

:class:`Demo` is also the harness of the end-to-end tests (``tests/e2e/fleet_harness.py``), which
run the same processes with more hosts, kill the control plane and restart it on its address.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
HOSTS = [("web-1", "web"), ("web-2", "web"), ("web-3", "web"), ("db-1", "db")]
POLICY = """\
apiVersion: stanch.dev/v1
kind: Policy
metadata:
  name: app-heartbeat
  description: the app stopped touching its heartbeat file
spec:
  manual_minutes: 20
  checks:
    beat: {{type: file, path: /var/run/app.heartbeat, interval: 1s}}
  rule:
    when: {{check: beat, metric: age_seconds, op: ">", value: 30}}
  remediation:
    steps:
      - name: restart-app
        shell: true
        run: '{script}'
  verify: {{settle: 0.2s, timeout: 2s, interval: 0.2s}}
  guardrails: {{cooldown: 1s}}
"""
FIX = 'touch "$HOME/var/run/app.heartbeat"'
"""Each demo host is a directory: the agent runs with ``--root`` (checks see it as ``/``) and
``HOME`` set to it, so one bundle serves every host, as it would in a fleet."""
BREAK = "echo restarting the wrong thing >&2; exit 1"


class Demo:
    Failure: type[BaseException] = SystemExit
    """Raised when a wait runs out or a ``must`` command fails (tests raise AssertionError)."""
    cp_flags: tuple[str, ...] = ("--tick", "200ms", "--presence-interval", "1s")
    agent_log_level = "warning"
    tls = False
    """mTLS with enrollment: a fleet CA (``opsctl pki init``), an admin operator certificate for
    opsctl, and a single-use token per agent. ``main`` turns it on; the e2e harness runs plain."""

    def __init__(self, work: Path, hosts: Sequence[tuple[str, str]] = HOSTS) -> None:
        self.work = work
        self.hosts = list(hosts)
        self.env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.cp: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.addr = ""
        self.enroll_addr = ""
        self.faulty: set[str] = set()
        self.stopped = threading.Event()

    def say(self, text: str) -> None:
        print(f"\n==> {text}", flush=True)

    def opsctl(
        self, *args: str, show: bool = True, must: bool = False, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run an opsctl command; with ``must``, stop the demo when it fails."""
        if show:
            print(f"$ opsctl {' '.join(args)}", flush=True)
        done = subprocess.run(
            [sys.executable, "-m", "controlplane.opsctl", *args],
            env={**self.env, "STANCH_ADDR": self.addr},
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if show:
            sys.stdout.write(done.stdout)
            sys.stdout.write(done.stderr)
        if must and done.returncode != 0:
            raise self.Failure(f"demo: 'opsctl {' '.join(args)}' failed: {done.stderr.strip()}")
        return done

    def start_control_plane(self) -> None:
        self.opsctl("keys", "generate", str(self.work / "cp" / "assign"), show=False, must=True)
        self.opsctl("keys", "generate", str(self.work / "keys" / "release-1"), must=True)
        if self.tls:
            pki = self.work / "pki"
            self.opsctl("pki", "init", "--dir", str(pki), must=True)
            self.opsctl(
                "pki", "issue-operator", "demo-admin", "--role", "admin", "--dir", str(pki),
                must=True,
            )  # fmt: skip
            self.env["STANCH_CA"] = str(pki / "ca.crt")
            self.env["STANCH_CERT"] = str(pki / "demo-admin.crt")
            self.env["STANCH_KEY"] = str(pki / "demo-admin.key")
        print(self.spawn_control_plane())

    def spawn_control_plane(self, listen: str = "127.0.0.1:0") -> str:
        """Start ``stanch-cp`` on ``cp.db`` (again, after a kill: same file, same ``listen``);
        returns its "listening on" line and sets ``addr``."""
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controlplane.server",
                *(
                    ("--pki-dir", str(self.work / "pki"), "--enroll-listen", "127.0.0.1:0")
                    if self.tls
                    else ("--insecure",)
                ),
                "--db",
                str(self.work / "cp.db"),
                "--listen",
                listen,
                "--assignment-key",
                str(self.work / "cp" / "assign.key"),
                "--trust",
                str(self.work / "keys"),
                *self.cp_flags,
                "--log-format",
                "json",
            ],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=(self.work / "cp.log").open("ab"),
        )
        self.procs.append(proc)
        self.cp = proc
        assert proc.stdout is not None
        line = read_line(proc, 30)
        if "listening on" not in line:
            proc.kill()
            raise self.Failure(f"demo: the control plane did not start; see {self.work}/cp.log")
        self.addr = line.split()[-1]
        if self.tls:
            enroll = read_line(proc, 30)
            if "enrollment on" not in enroll:
                raise self.Failure(f"demo: no enrollment port; see {self.work}/cp.log")
            self.enroll_addr = enroll.split()[-1]
            line += enroll
        return line.strip()

    def open_console(self) -> tuple[str, str]:
        """With ``--console-listen`` in ``cp_flags``: the console's URL (``stanch-cp`` prints it
        after "listening on") and an operator token to log in with, minted offline as an operator
        bootstraps one. Tokens end the insecure dev mode, so opsctl gets an admin token too."""
        assert self.cp is not None
        line = read_line(self.cp, 30)
        if "console on" not in line:
            raise self.Failure(f"demo: the console did not start; see {self.work}/cp.log")
        self.env["STANCH_TOKEN"] = self.mint_token("demo-admin", "admin")
        if not self.tls:
            self.env["STANCH_INSECURE"] = "1"  # loopback plaintext is the demo's choice
        return line.split()[-1], self.mint_token("demo-operator", "operator")

    def mint_token(self, name: str, role: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "controlplane.server", "tokens", "create", "--db"]
            + [str(self.work / "cp.db"), "--name", name, "--role", role],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if done.returncode != 0:
            raise self.Failure(f"demo: stanch-cp tokens create: {done.stderr.strip()}")
        return done.stdout.strip()

    def start_agents(self) -> None:
        (self.work / "assignment-keys").mkdir()
        shutil.copy(self.work / "cp" / "assign.pub", self.work / "assignment-keys")
        for host, role in self.hosts:
            self.spawn_agent(host, role)
        wait_for(
            "every agent to connect",
            lambda: self._connected() == len(self.hosts),
            30 + len(self.hosts),
            self.Failure,
        )
        self.opsctl("agents", "list")
        threading.Thread(target=self._apps, daemon=True).start()

    def spawn_agent(self, host: str, role: str) -> None:
        """One host: its directory (the agent's ``--root`` and ``HOME``), config and process."""
        home = self.work / host
        (home / "var" / "run").mkdir(parents=True, exist_ok=True)
        (home / "var" / "run" / "app.heartbeat").touch()
        transport: dict[str, Any] = {"insecure": True}
        if self.tls:  # a single-use token for this host; the agent makes its key and enrolls
            token = self.opsctl("pki", "token", "--host", host, "--valid", "10m", show=False)
            if token.returncode != 0:
                raise self.Failure(f"demo: opsctl pki token: {token.stderr.strip()}")
            (home / "enroll-token").write_text(token.stdout.strip() + "\n")
            transport = {
                "tls": {
                    "ca": self.env["STANCH_CA"],
                    "enroll_token_file": str(home / "enroll-token"),
                    "enroll_address": self.enroll_addr,
                }
            }
        config = {
            "host": {"id": host, "labels": {"env": "demo", "role": role}},
            "policy_source": "bundle",
            "state_dir": str(home / "state"),
            "control_plane": {
                "address": self.addr,
                **transport,
                "assignment_keys": str(self.work / "assignment-keys"),
                "trust": str(self.work / "keys"),
                "heartbeat": "1s",
                "reconnect": {"initial": "200ms", "max": "2s"},
            },
        }
        (home / "agent.yaml").write_text(yaml.safe_dump(config))
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent.cli",
                "--config",
                str(home / "agent.yaml"),
                "run",
                "--root",
                str(home),
                "--log-level",
                self.agent_log_level,
            ],
            env={**self.env, "HOME": str(home)},
            stdout=subprocess.DEVNULL,
            stderr=(home / "agent.log").open("ab"),
        )
        self.procs.append(proc)
        self.agents[host] = proc

    def _apps(self) -> None:
        """Stand-in for the app on each host: touch its heartbeat every few seconds, except on
        hosts where the demo injected a fault (their agent's fix must do it)."""
        while not self.stopped.is_set():
            for host, _role in self.hosts:
                if host not in self.faulty:
                    (self.work / host / "var" / "run" / "app.heartbeat").touch()
            self.stopped.wait(5)

    def break_app(self, host: str) -> None:
        """The fault: the app on ``host`` stops touching its heartbeat, which is now stale."""
        self.faulty.add(host)
        stale = time.time() - 120
        os.utime(self.work / host / "var" / "run" / "app.heartbeat", (stale, stale))

    def _connected(self) -> int:
        out = self.opsctl("agents", "list", "-o", "yaml", show=False).stdout
        return sum(1 for a in yaml.safe_load(out) or [] if a.get("connected"))

    def bundle(self, version: int, script: str) -> str:
        source = self.work / f"policies-v{version}"
        source.mkdir()
        (source / "app-heartbeat.yaml").write_text(POLICY.format(script=script))
        out = self.work / "bundles"
        build = ["bundle", "build", str(source), "-o", str(out), "--name", "demo"]
        built = self.opsctl(*build, "--version", str(version), "--expires", "7d", must=True)
        key = str(self.work / "keys" / "release-1")
        signed = self.opsctl("bundle", "sign", built.stdout.split()[1], "--key", key, must=True)
        return signed.stdout.split()[1]

    def watch(self, bundle: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controlplane.opsctl",
                "rollout",
                "policy",
                bundle,
                "-l",
                "env=demo",
                "--waves",
                "1,50%,100%",
                "--bake",
                "60s",
                "--watch",
            ],
            env={**self.env, "STANCH_ADDR": self.addr},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def running(self, digest: str) -> str:
        """The host that runs bundle ``digest`` (the canary), or ""."""
        out = self.opsctl("agents", "list", "-o", "yaml", show=False).stdout
        hosts = [a["host_id"] for a in yaml.safe_load(out) or [] if a["bundle_digest"] == digest]
        return hosts[0] if hosts else ""

    def stop(self) -> None:
        self.stopped.set()
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The process's next stdout line, or "" after ``timeout`` (a thread reads it: ``select``
    misses a line already in the pipe's read buffer, after an earlier ``readline``)."""
    assert proc.stdout is not None
    stream = proc.stdout
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0].decode() if box else ""


def wait_for(
    what: str,
    predicate: Callable[[], T],
    timeout: float,
    error: type[BaseException] = SystemExit,
) -> T:
    """Poll ``predicate`` until it returns something true (returned); bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise error(f"demo: timed out after {timeout:g}s waiting for {what}")


def main() -> int:
    work = Path(os.environ.get("STANCH_DEMO_DIR", "demo-state/fleet")).absolute()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    demo = Demo(work)
    demo.tls = True
    listen = os.environ.get("STANCH_DEMO_CONSOLE", "127.0.0.1:0")
    demo.cp_flags = (*Demo.cp_flags, "--console-listen", listen)
    try:
        demo.say("1. the control plane (mTLS, a fleet CA), on SQLite, and an operator signing key")
        demo.start_control_plane()
        url, token = demo.open_console()
        print(f"web console: {url}  (log in with this demo operator token: {token})")
        demo.say(
            f"2. {len(HOSTS)} agents, each its own process, state dir and labels; each enrolls "
            "with a single-use token and connects with its own certificate"
        )
        demo.start_agents()
        demo.say("3. build, sign and publish a bundle (the fix: touch the heartbeat)")
        good = demo.bundle(1, FIX)
        demo.opsctl("bundle", "publish", good, must=True)
        demo.say("4. roll it out in waves: 1 canary, then 50%, then everyone")
        demo.opsctl(
            "rollout",
            "policy",
            good,
            "-l",
            "env=demo",
            "--waves",
            "1,50%,100%",
            "--bake",
            "3s",
            "--watch",
        )
        host = HOSTS[0][0]
        demo.say(f"5. inject a fault: {host}'s heartbeat goes stale; its agent fixes it")
        demo.break_app(host)
        wait_for(
            "a fix reported centrally",
            lambda: (
                "fixed" in demo.opsctl("reports", "list", "--kind", "execution", show=False).stdout
            ),
            30,
        )
        demo.opsctl("reports", "list", "--kind", "execution")
        demo.opsctl("explain", host, "app-heartbeat")
        demo.faulty.discard(host)  # the app is healthy again
        demo.opsctl("reports", "pareto", "--since", "1h")
        demo.say("6. a bad bundle whose fix fails: the canary hits a fault, the gate halts it")
        bad = demo.bundle(2, BREAK)
        digest = Path(bad).name.removesuffix(".bundle")
        demo.opsctl("bundle", "publish", bad, must=True)
        print(f"$ opsctl rollout policy {bad} -l env=demo --waves 1,50%,100% --bake 60s --watch")
        watch = demo.watch(bad)
        canary = wait_for("the canary to run the bad bundle", lambda: demo.running(digest), 30)
        print(f"(canary {canary} runs it; its heartbeat goes stale)")
        demo.break_app(canary)
        out, _ = watch.communicate(timeout=90)
        sys.stdout.write(out)
        print(f"(rollout status --watch exited {watch.returncode}: non-zero means halted)")
        demo.opsctl("rollout", "status")
        demo.opsctl("agents", "list")
        demo.opsctl("escalations", "list")
        if os.environ.get("STANCH_DEMO_KEEP"):
            print(f"\nThe fleet keeps running for the console at {url}; Ctrl-C stops it.")
            with contextlib.suppress(KeyboardInterrupt):
                demo.stopped.wait()
        return 0 if watch.returncode == 1 else 1
    finally:
        demo.stop()
        print(f"\nwork files, logs and the SQLite database: {work}")


if __name__ == "__main__":
    sys.exit(main())

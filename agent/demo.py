"""``make demo``: the main job end to end, on one machine, with nothing but python3.

1. start a throwaway service (a daemon with a pidfile) and the agent with a policy for it;
2. kill the service with SIGKILL: the agent sees the death (pidfd), restarts it, verifies it;
3. kill it again at once: the cooldown guardrail holds the agent back, and it escalates to a
   human (a JSON-lines notification file stands in for a pager);
4. print what ``stanch-agent explain``, ``history`` and ``status`` say about it all.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from agent.journal import Journal

SERVICE = '''\
"""A throwaway demo service: daemonizes, writes its pidfile, then idles."""
import os, sys, time
pidfile = sys.argv[1]
if os.fork():
    sys.exit(0)
os.setsid()
if os.fork():
    os._exit(0)
fd = os.open(os.devnull, os.O_RDWR)
for n in (0, 1, 2):
    os.dup2(fd, n)
with open(pidfile + ".tmp", "w") as fh:
    fh.write(str(os.getpid()))
os.replace(pidfile + ".tmp", pidfile)
while True:
    time.sleep(60)
'''

POLICY = """\
apiVersion: stanch.dev/v1
kind: Policy
metadata:
  name: demo-service-down
  labels: {{team: demo}}
  description: the demo service process is gone
spec:
  severity: critical
  runbook: https://runbooks.example.com/demo-service/down
  manual_minutes: 15
  mode: auto
  checks:
    demo:
      type: process
      pidfile: {pidfile}
      interval: 5s
      watch: true
  rule:
    when: {{check: demo, metric: count, op: "<", value: 1}}
  remediation:
    steps:
      - name: start-service
        run: [{python}, {service}, {pidfile}]
        timeout: 10s
  verify: {{settle: 0.3s, timeout: 5s, interval: 0.3s}}
  guardrails:
    cooldown: 3s
    budget: {{max: 1, per: 1h}}
    breaker: {{after: 2}}
"""

CONFIG = """\
apiVersion: stanch.dev/v1
kind: AgentConfig
host: {{id: demo-host, labels: {{role: demo}}}}
sinks:
  pager: {{type: log, path: {notify}}}
escalation: {{default_sinks: [pager]}}
"""


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def wait_for(what: str, predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise SystemExit(f"demo: timed out after {timeout:g}s waiting for {what}")


def alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return 0


def main() -> int:
    work = Path(os.environ.get("STANCH_DEMO_DIR", "demo-state")).absolute()
    shutil.rmtree(work, ignore_errors=True)
    (work / "policies").mkdir(parents=True)
    service, pidfile, notify = work / "service.py", work / "service.pid", work / "pager.jsonl"
    service.write_text(SERVICE)
    (work / "policies" / "demo.yaml").write_text(
        POLICY.format(pidfile=pidfile, python=sys.executable, service=service)
    )
    (work / "agent.yaml").write_text(CONFIG.format(notify=notify))
    cli = [
        sys.executable,
        "-m",
        "agent.cli",
        "--config",
        str(work / "agent.yaml"),
        "--state-dir",
        str(work / "state"),
    ]

    say(f"starting a throwaway service and the agent (policy: policies/demo.yaml in {work})")
    subprocess.run([sys.executable, str(service), str(pidfile)], check=True)
    wait_for("the service pidfile", lambda: alive(read_pid(pidfile)), 5)
    first = read_pid(pidfile)
    log = open(work / "agent.log", "w")  # noqa: SIM115 - lives as long as the agent
    agent = subprocess.Popen(
        [*cli, "run", "--policies", str(work / "policies")], stdout=log, stderr=log
    )
    try:
        journal_path = work / "state" / "state.db"
        wait_for("the agent's first check", lambda: _checked(journal_path), 15)
        journal = Journal(journal_path)
        print(f"    service running as pid {first}; agent pid {agent.pid} is watching it")

        say(f"kill -9 {first}  (the fault)")
        killed_at = time.time()
        os.kill(first, signal.SIGKILL)
        wait_for("the restart", lambda: alive(read_pid(pidfile)) and read_pid(pidfile) != first, 15)
        wait_for("verification", lambda: _finished(journal), 15)
        run = journal.executions("demo-service-down", 1)[0]
        print(
            f"    remediation started {1000 * (run.started_at - killed_at):.0f} ms after the "
            f"kill; service back as pid {read_pid(pidfile)}; verification: {run.status}"
        )

        second = read_pid(pidfile)
        say(
            f"kill -9 {second} again: guardrails (3 s cooldown, then a budget of 1 run per hour) "
            "hold the agent back, and it pages a human"
        )
        os.kill(second, signal.SIGKILL)
        wait_for("the cooldown decision", lambda: _suppressed(journal), 10)
        wait_for("the escalation", lambda: notify.exists() and notify.stat().st_size > 0, 15)
        page = json.loads(notify.read_text().splitlines()[0])
        print(f"    paged a human: {page.get('summary', page)}")

        for command in (["explain", "demo-service-down", "--limit", "4"], ["history"], ["status"]):
            say("stanch-agent " + " ".join(command))
            subprocess.run([*cli, *command], check=False)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=15)
        except subprocess.TimeoutExpired:
            agent.kill()
        log.close()
        pid = read_pid(pidfile)
        if pid and alive(pid):
            os.kill(pid, signal.SIGTERM)
    say(
        textwrap.dedent(f"""\
        done. Agent log (JSON lines): {work / "agent.log"}
            Inspect: stanch-agent {" ".join(cli[3:])} explain demo-service-down""")
    )
    return 0


def _checked(journal_path: Path) -> bool:
    if not journal_path.exists():
        return False
    states = Journal(journal_path).policy_states()
    return bool(states.get("demo-service-down", {}).get("checks"))


def _finished(journal: Journal) -> bool:
    runs = journal.executions("demo-service-down", 1)
    return bool(runs) and runs[0].status != "running"


def _suppressed(journal: Journal) -> bool:
    return any(d.reason == "budget" for d in journal.decisions("demo-service-down", 5))


if __name__ == "__main__":
    sys.exit(main())

"""PostgreSQL restarted under load: the control plane on PostgreSQL regains service by itself and
nothing it acknowledged is lost.

A private PostgreSQL (``pg_private.py``; never the machine's own server), a real ``stanch-cp``
with ``--db postgresql://...`` and four real agents. A thread keeps breaking the hosts' apps, so
the agents keep fixing faults and streaming reports. Twice, mid-traffic, the server is restarted
with ``pg_ctl restart -m fast`` (every session cut). Then:

- the same control-plane process still serves: ``opsctl agents list`` answers, every agent is
  connected, and reports made after the last restart are stored;
- nothing acknowledged is lost, nothing doubled: every execution in every agent's journal is in
  PostgreSQL exactly once, with its final status, and every outbox is empty (an agent deletes a
  report only once the control plane acknowledged it; a report acknowledged but not committed
  would be missing here).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_harness import TunedFleet, wait_for
from pg_private import PrivatePostgres, private_postgres

from controlplane.storage.base import ReportQuery
from controlplane.storage.postgres import PostgresStorage

HOSTS = 4
TERMINAL = {"fixed", "not_fixed", "failed", "interrupted"}
STEP = 'touch "$HOME/var/run/app.heartbeat"'

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]


class PgFleet(TunedFleet):
    # Every host fails over and over on purpose: the fleet storm breaker must not pause them.
    cp_flags = (*TunedFleet.cp_flags, "--storm-min-hosts", "1000")

    def __init__(self, work: Path, pg: PrivatePostgres) -> None:
        super().__init__(work, HOSTS)
        self.pg = pg
        self.cp_db = pg.url
        self.agent_extra = {"limits": {"max_runs_per_hour": 100_000}}
        self.guardrails = "{cooldown: 0s, budget: {max: 10000, per: 1h}, breaker: {after: 10000}}"

    @contextlib.contextmanager
    def pg_storage(self) -> Iterator[PostgresStorage]:
        db = PostgresStorage(self.pg.url)
        try:
            yield db
        finally:
            db.close()

    def stored_executions(self, host: str) -> Counter[str]:
        with self.pg_storage() as db:
            reports = db.reports(ReportQuery(host=host, kind="execution", limit=100_000))
        return Counter(json.loads(r.body_json)["id"] for r in reports)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[PgFleet]:
    with private_postgres() as pg:
        f = PgFleet(tmp_path, pg)
        try:
            f.start()
            yield f
        finally:
            f.stop()


def breaker(fleet: PgFleet, stop: threading.Event) -> None:
    """Load: break every host's app every 1.5 s (their agents fix it each time)."""
    while not stop.is_set():
        for host in fleet.host_ids:
            fleet.break_app(host)
        stop.wait(1.5)


def test_control_plane_on_postgres_survives_pg_restarts_under_load(fleet: PgFleet) -> None:
    digest = fleet.release(STEP)
    rollout = fleet.start_rollout(digest, "100%", "0s")
    watch = fleet.watch_rollout(rollout, 60)
    out, _ = watch.communicate(timeout=90)
    assert watch.returncode == 0, out
    fleet.wait_digest(fleet.host_ids, digest, 30)
    cp_pid = fleet.cp.pid if fleet.cp else 0

    stop = threading.Event()
    load = threading.Thread(target=breaker, args=(fleet, stop), daemon=True)
    load.start()
    restarts: list[float] = []
    try:
        for _ in range(2):
            time.sleep(6)  # traffic flowing
            fleet.pg.restart()
            restarts.append(time.time())
        time.sleep(6)
    finally:
        stop.set()
        load.join(10)
        fleet.heal_all()

    assert fleet.cp is not None and fleet.cp.poll() is None, "the control plane died"
    assert fleet.cp.pid == cp_pid
    wait_for("every agent connected after the restarts", lambda: fleet.connected() == HOSTS, 60)

    def settled() -> bool:
        return all(
            all(e.status in TERMINAL for e in fleet.executions(h)) and not fleet.outbox(h)
            for h in fleet.host_ids
        )

    try:
        wait_for("every report acknowledged", settled, 90)
    except AssertionError as exc:
        log = (fleet.work / "cp.log").read_text(errors="replace")[-3000:]
        raise AssertionError(f"{exc}\ncontrol plane log:\n{log}") from None

    total = 0
    after_last = 0
    for host in fleet.host_ids:
        executions = fleet.executions(host)
        stored = fleet.stored_executions(host)
        missing = [e.id for e in executions if stored[e.id] == 0]
        doubled = {i: n for i, n in stored.items() if n > 1}
        assert not missing, f"{host}: acknowledged reports missing from PostgreSQL: {missing}"
        assert not doubled, f"{host}: stored twice: {doubled}"
        assert set(stored) == {e.id for e in executions}, host
        total += len(executions)
        after_last += sum(1 for e in executions if e.started_at > restarts[-1])
    assert total >= 10, total
    assert after_last >= HOSTS, "no traffic stored after the last restart"
    print(f"pg restarts: {len(restarts)}; {total} executions, each stored once "
          f"({after_last} after the last restart)")  # fmt: skip

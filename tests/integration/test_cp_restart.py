"""A control plane killed mid-rollout (SIGKILL) and started again resumes from storage:
same waves, no host assigned twice, reports sent while it was down stored exactly once."""

from __future__ import annotations

from pathlib import Path

from cp_harness import execution, run, until
from cp_process import ServerProcess

from controlplane.storage.base import ReportQuery
from controlplane.storage.sqlite import SqliteStorage


def test_killed_mid_rollout_and_restarted_the_rollout_resumes(tmp_path: Path) -> None:
    async def scenario() -> None:
        cp = ServerProcess.create(tmp_path)
        cp.start()
        try:
            v1 = await cp.publish(cp.bundle(1))
            v2 = await cp.publish(cp.bundle(2))
            sims = [await cp.agent(f"web-{i}", digest=v1.digest, version=1) for i in range(8)]
            started = await cp.rollout(v2.digest, waves=("1", "50%", "100%"), bake=1.5)

            async def in_wave_two() -> bool:
                status = await cp.status(started.id)
                return status.wave == 1 and status.waves[1].applied == status.waves[1].assigned > 0

            await until(in_wave_two, 10, "wave 2 applied")
            updated_before = {s.host_id for s in sims if s.on == v2.digest}
            assert len(updated_before) == 4  # 50% of 8, cumulative
            cp.kill()
            await until(lambda: all(s.ended is not None for s in sims), 5, "streams to drop")
            # agents keep working while it is down: their reports wait in the outbox
            for s in sims:
                await s.close()
            cp.start()  # same database, same port
            for n, s in enumerate(sims):
                await s.connect()
                await s.report(execution(100 + n, "heartbeat", "fixed"))
                await s.report(execution(100 + n, "heartbeat", "fixed"))  # resent: no ack yet

            async def completed() -> bool:
                return (await cp.status(started.id)).state == "completed"

            await until(completed, 15, "the rollout to complete after the restart")
            await until(lambda: all(s.on == v2.digest for s in sims), 5, "v2 everywhere")
            for s in sims:
                v2_assignments = [a for a in s.accepted if a.bundle_digest == v2.digest]
                assert len(v2_assignments) == 1, f"{s.host_id} was assigned twice"
                assert not s.refused
            status = await cp.status(started.id)
            assert [w.state for w in status.waves] == ["passed"] * 3
            assert [w.assigned for w in status.waves] == [1, 3, 4]
        finally:
            await cp.close()
        db = SqliteStorage(tmp_path / "cp.db")
        reports = db.reports(ReportQuery(kind="execution"))
        assert sorted(r.id for r in reports) == list(range(100, 108))  # each exactly once
        assert not any(a.connected for a in db.agents())  # a clean stop marks them all
        db.close()

    run(scenario())

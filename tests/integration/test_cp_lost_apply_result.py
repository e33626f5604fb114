"""An apply result lost with the stream (the control plane died between the agent installing
the bundle and receiving its ApplyResult): the next Hello says what the host runs and the highest
sequence it accepted, and the control plane must count that as the apply."""

from __future__ import annotations

from pathlib import Path

from cp_harness import run, until
from cp_process import ServerProcess

from stanch.v1 import fleet_pb2


def test_an_apply_result_lost_in_a_crash_is_taken_from_the_next_hello(tmp_path: Path) -> None:
    async def scenario() -> None:
        cp = ServerProcess.create(tmp_path)
        cp.start()
        try:
            v1 = await cp.publish(cp.bundle(1))
            v2 = await cp.publish(cp.bundle(2))
            sims = [await cp.agent(f"web-{i}", digest=v1.digest, version=1) for i in range(3)]
            canary = sims[0]
            send = canary.send

            async def lose_results(message: fleet_pb2.AgentMessage) -> None:
                if message.WhichOneof("body") != "apply_result":
                    await send(message)

            canary.send = lose_results  # type: ignore[method-assign]
            started = await cp.rollout(v2.digest, waves=("1", "100%"), bake=0.5)
            # the canary installs v2 (its digest and seq move) but the result never arrives
            await until(lambda: canary.on == v2.digest, 10, "the canary to take v2")
            cp.kill()
            await until(lambda: all(s.ended is not None for s in sims), 5, "streams to drop")
            for s in sims:
                await s.close()
            canary.send = send  # type: ignore[method-assign]
            cp.start()
            for s in sims:
                await s.connect()  # Hello: bundle v2, last_assignment_seq = the v2 assignment

            async def done() -> str:
                state = (await cp.status(started.id)).state
                return state if state != "running" else ""

            assert await until(done, 20, "the rollout to end") == "completed"
            assert all(s.on == v2.digest for s in sims)
        finally:
            await cp.close()

    run(scenario())

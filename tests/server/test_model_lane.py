"""The model's lane: calls waiting for the local model hold no thread of the pool every route shares."""
from __future__ import annotations

import threading
import time

import anyio
import anyio.to_thread

from agentmem.server.model_lane import ModelLane


def test_calls_waiting_on_the_lane_leave_the_shared_pool_to_other_routes():
    lane, model, finished = ModelLane(), threading.Lock(), []

    def answer(i: int) -> int:   # uses the model: one at a time
        with model:
            time.sleep(0.05)
        finished.append(i)
        return i

    async def answers_and_another_route() -> tuple[int, list[int]]:
        results: list[int] = []

        async def ask(i: int) -> None:
            results.append(await lane.run(answer, i))

        async with anyio.create_task_group() as answers:
            for i in range(60):
                answers.start_soon(ask, i)
            await anyio.sleep(0.02)
            await anyio.to_thread.run_sync(lambda: None)   # another route's work, in the shared pool
            done_by_then = len(finished)
        return done_by_then, results

    done_by_then, results = anyio.run(answers_and_another_route)
    assert done_by_then < 10   # it did not wait behind the answers queued before it
    assert sorted(results) == list(range(60))

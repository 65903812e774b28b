"""The one lane for calls that use the local model: they run one at a time, off the event loop.

The model, its editor's hooks and the consolidation job are one per memory, so such calls take
turns anyway (`Memory.generating`, the job's lock). Waiting for a turn inside the thread pool
that every route shares would let forty waiting answers stall the whole server; here they wait
on the lane's limiter, without a thread, and only the call whose turn it is holds one.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


class ModelLane:
    def __init__(self) -> None:
        self._limiter: anyio.CapacityLimiter | None = None  # made on the event loop, at the first call

    async def run(self, call: Callable[..., T], *args: object) -> T:
        """`call(*args)` on a worker thread once the calls before it on the lane are done."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(call, *args, limiter=self._limiter)

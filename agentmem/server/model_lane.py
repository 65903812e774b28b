"""The one lane for calls that use the local model: they run one at a time, off the event loop.

The model, its editor's hooks and the consolidation job are one per memory, so such calls take
turns anyway (`Memory.generating`, the job's lock). Waiting for a turn inside the thread pool
that every route shares would let forty waiting answers stall the whole server; here they wait
on the lane's lock, without a thread, and only the call whose turn it is holds one.

A turn costs every call queued behind it seconds, so the lane admits a bounded queue and spends
no turn on a request nobody waits for: uvicorn does not cancel a handler whose client has gone, so
a waiting call watches its client and leaves the queue (freeing its user's place) once it has gone.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread
from starlette.requests import Request

from .errors import ClientGoneError, LaneFullError
from .limits import LANE_PER_USER, LANE_TOTAL

T = TypeVar("T")
GONE_POLL_S = 0.5  # how often a waiting call asks whether its client is still there
TURN_WEIGHT = 0.2  # the weight of the latest turn in the running mean of a turn's seconds


class ModelLane:
    """Calls take the lane in the order they came (the lock is fair).

    At most `total` calls wait or run at once, and at most `per_user` of them act for one user:
    the user a key is bound to, or the user an unbound caller (an admin key, an open server) names.
    Calls for no user (whole-store operations) count towards `total` only.
    """

    def __init__(self, per_user: int = LANE_PER_USER, total: int = LANE_TOTAL) -> None:
        self.per_user, self.total = per_user, total
        self._turn = anyio.Lock()
        self._queued: Counter[str | None] = Counter()  # calls waiting or running, by the user they act for
        self.mean_turn_s = 1.0  # a running mean of how long a turn holds the lane: a refusal's `Retry-After`

    async def run(self, call: Callable[..., T], *args: object, user: str | None = None,
                  client: Request | None = None) -> T:
        """`call(*args)` on a worker thread once the calls before it on the lane are done.

        Raises `LaneFullError` at once if the queue is full for `user` or for everyone, and
        `ClientGoneError`, without calling, if `client`'s connection is closed when the turn comes.
        """
        retry_after_s = max(1, math.ceil(self.mean_turn_s))
        if self._queued.total() >= self.total:
            raise LaneFullError(f"{self.total} requests already wait for the model; try again later", retry_after_s)
        if user is not None and self._queued[user] >= self.per_user:
            raise LaneFullError(f"{self.per_user} requests for user {user!r} already wait for the model; "
                                "try again once one is answered", retry_after_s)
        self._queued[user] += 1
        try:
            if not await self._turn_unless_gone(client):
                raise ClientGoneError("the client closed the connection while it waited for the model")
            try:
                if client is not None and await client.is_disconnected():
                    raise ClientGoneError("the client closed the connection before its turn on the model")
                started = time.monotonic()
                try:
                    return await anyio.to_thread.run_sync(call, *args)
                finally:
                    turn_s = time.monotonic() - started
                    self.mean_turn_s += TURN_WEIGHT * (turn_s - self.mean_turn_s)
            finally:
                self._turn.release()
        finally:
            self._queued[user] -= 1
            if not self._queued[user]:
                del self._queued[user]

    async def _turn_unless_gone(self, client: Request | None) -> bool:
        """Take the lane in turn (True), or leave the queue as soon as `client` has gone (False). A cancelled
        wait never holds the lock, and the watch does not cost the call its place in the queue."""
        if client is None:
            await self._turn.acquire()
            return True
        taken = False
        async with anyio.create_task_group() as waiting:
            async def watch() -> None:
                while not await client.is_disconnected():
                    await anyio.sleep(GONE_POLL_S)
                waiting.cancel_scope.cancel()

            waiting.start_soon(watch)
            await self._turn.acquire()
            taken = True
            waiting.cancel_scope.cancel()
        return taken

"""The one lane for calls that use the local model: they run one at a time, off the event loop.

The model, its editor's hooks and the consolidation job are one per memory, so such calls take
turns anyway (`Memory.generating`, the job's lock). Waiting for a turn inside the thread pool
that every route shares would let forty waiting answers stall the whole server; here they wait
on the lane's lock, without a thread, and only the call whose turn it is holds one.

A turn costs every call queued behind it seconds, so the lane admits a bounded queue and spends
no turn on a request nobody waits for: uvicorn does not cancel a handler whose client has gone.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread
from starlette.requests import Request

from .errors import ClientGoneError, LaneFullError
from .limits import LANE_PER_USER, LANE_TOTAL

T = TypeVar("T")


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

    async def run(self, call: Callable[..., T], *args: object, user: str | None = None,
                  client: Request | None = None) -> T:
        """`call(*args)` on a worker thread once the calls before it on the lane are done.

        Raises `LaneFullError` at once if the queue is full for `user` or for everyone, and
        `ClientGoneError`, without calling, if `client`'s connection is closed when the turn comes.
        """
        if self._queued.total() >= self.total:
            raise LaneFullError(f"{self.total} requests already wait for the model; try again later")
        if user is not None and self._queued[user] >= self.per_user:
            raise LaneFullError(f"{self.per_user} requests for user {user!r} already wait for the model; "
                                "try again once one is answered")
        self._queued[user] += 1
        try:
            async with self._turn:
                if client is not None and await client.is_disconnected():
                    raise ClientGoneError("the client closed the connection before its turn on the model")
                return await anyio.to_thread.run_sync(call, *args)
        finally:
            self._queued[user] -= 1
            if not self._queued[user]:
                del self._queued[user]

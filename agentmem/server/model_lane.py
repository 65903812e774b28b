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

import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TypeVar

import anyio
import anyio.to_thread
from starlette.requests import Request

from .errors import ClientGoneError, LaneFullError
from .limits import LANE_PER_USER, LANE_TOTAL

T = TypeVar("T")
GONE_POLL_S = 0.5  # how often a waiting call asks whether its client is still there
TURN_WEIGHT = 0.2  # the weight of the latest turn in the running mean of a turn's seconds
# A turn's seconds before one was timed: a local SmolLM2 reply of 96 tokens takes 5-20 s on 2 CPU cores, so a
# `Retry-After: 1` on a fresh server sent clients back long before a place could free up
FIRST_TURN_GUESS_S = 10.0


class Admission:
    """A bounded queue's places: at most `total` calls at once, at most `per_user` of them for one user.

    The user a call acts for is the user a key is bound to, or the user an unbound caller (an admin key,
    an open server) names; calls for no user (whole-store operations) count towards `total` only.
    `what` names what the calls wait for, in a refusal's message.
    """

    def __init__(self, what: str, per_user: int = LANE_PER_USER, total: int = LANE_TOTAL) -> None:
        self.what, self.per_user, self.total = what, per_user, total
        self._queued: Counter[str | None] = Counter()  # calls waiting or running, by the user they act for
        self.mean_turn_s = FIRST_TURN_GUESS_S  # a running mean of how long a turn takes: a refusal's `Retry-After`
        self._timed = False

    @contextlib.contextmanager
    def place(self, user: str | None) -> Iterator[None]:
        """A place for a call acting for `user`, held while the block runs; raises `LaneFullError` at once
        if the queue is full for `user` or for everyone."""
        retry_after_s = max(1, math.ceil(self.mean_turn_s))
        if self._queued.total() >= self.total:
            raise LaneFullError(f"{self.total} requests already wait for {self.what}; try again later", retry_after_s)
        if user is not None and self._queued[user] >= self.per_user:
            raise LaneFullError(f"{self.per_user} requests for user {user!r} already wait for {self.what}; "
                                "try again once one is answered", retry_after_s)
        self._queued[user] += 1
        try:
            yield
        finally:
            self._queued[user] -= 1
            if not self._queued[user]:
                del self._queued[user]

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        """Counts the block's seconds into the mean turn."""
        started = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - started
            # the first turn timed replaces the guess; later ones move the mean
            self.mean_turn_s = self.mean_turn_s + TURN_WEIGHT * (took - self.mean_turn_s) if self._timed else took
            self._timed = True


class ModelLane:
    """Calls take the lane in the order they came (the lock is fair).

    At most `total` calls wait or run at once, and at most `per_user` of them act for one user
    (`Admission`).
    """

    def __init__(self, per_user: int = LANE_PER_USER, total: int = LANE_TOTAL) -> None:
        self.admission = Admission("the model", per_user, total)
        self._turn = anyio.Lock()

    async def run(self, call: Callable[..., T], *args: object, user: str | None = None,
                  client: Request | None = None) -> T:
        """`call(*args)` on a worker thread once the calls before it on the lane are done.

        Raises `LaneFullError` at once if the queue is full for `user` or for everyone, and
        `ClientGoneError`, without calling, if `client`'s connection is closed when the turn comes.
        """
        with self.admission.place(user):
            if not await self._turn_unless_gone(client):
                raise ClientGoneError("the client closed the connection while it waited for the model")
            try:
                if client is not None and await client.is_disconnected():
                    raise ClientGoneError("the client closed the connection before its turn on the model")
                with self.admission.timed():
                    return await anyio.to_thread.run_sync(call, *args)
            finally:
                self._turn.release()

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


class UpstreamLane:
    """Where chat turns answered by an upstream server run: each on a thread of its own pool, so turns that
    wait many seconds for the upstream never hold the threads the other routes share (anyio's default 40).
    They run side by side (the upstream is another server), admitted as the model's lane admits its calls:
    at most `per_user` for one user and `total` in all, and the pool has `total` threads, so no admitted turn
    waits for one.
    """

    def __init__(self, per_user: int = LANE_PER_USER, total: int = LANE_TOTAL) -> None:
        self.admission = Admission("the upstream server", per_user, total)
        self.threads = anyio.CapacityLimiter(total)

    async def run(self, call: Callable[..., T], *args: object, user: str | None = None) -> T:
        """`call(*args)` on one of the lane's threads; raises `LaneFullError` at once if the queue is full
        for `user` or for everyone."""
        with self.admission.place(user), self.admission.timed():
            return await anyio.to_thread.run_sync(call, *args, limiter=self.threads)

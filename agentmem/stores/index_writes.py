"""Index writes that finish after `remember` returns.

A remember is durable once its note and outbox rows are committed to the note store; an
index write that follows (with a Chroma server, where replicas write the index after the
lock; elsewhere what `early_index` did not write) can then run in one background thread
while the caller goes on, typically to encode its next text. Every other call of the memory
first waits for the writes in flight (`wait`), so it sees the index as the last remember left
it. A write that fails, or never runs because the process ends, leaves its rows in the outbox,
which the next call or replica replays.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger(__name__)


class IndexWrites:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentmem-index")
        self._last: Future[None] | None = None
        self._submitting = threading.Lock()
        self._in_worker = threading.local()

    def submit(self, write: Callable[[], None]) -> None:
        """Run `write` after the writes submitted before it, in submission order."""
        with self._submitting:
            self._last = self._executor.submit(self._run, write)

    def _run(self, write: Callable[[], None]) -> None:
        self._in_worker.active = True
        try:
            write()
        except Exception:  # the rows stay in the outbox, and are replayed
            log.warning("a background index write failed; its changes stay in the outbox", exc_info=True)

    def wait(self) -> None:
        """Return once every write submitted so far has finished (at once in the writing thread itself)."""
        if getattr(self._in_worker, "active", False):
            return
        last = self._last
        if last is not None:
            last.result()

    def close(self) -> None:
        """Accept no more writes; those already submitted still run (a late one finds the store
        closed and leaves its rows to the outbox)."""
        self._executor.shutdown(wait=False)

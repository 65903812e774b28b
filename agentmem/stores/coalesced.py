"""Work that one background thread runs after it is asked, once for every burst of asks.

A forget on PostgreSQL asks for the planner's statistics to be taken again (`ANALYZE`, 0.75 s at
120k notes): run in the forget's write section, it held every replica's writes that long, and a
user erasing a thousand notes would have paid it a thousand times. Asks made while a run waits
to start join it; an ask made while one runs gets one more run after it, so the last ask is
always followed by a whole run.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger(__name__)


class CoalescedWork:
    def __init__(self, work: Callable[[], None], name: str) -> None:
        self._work, self._name = work, name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"agentmem-{name}")
        self._lock = threading.Lock()
        self._queued: Future[None] | None = None  # a run asked for and not started yet
        self._last: Future[None] | None = None

    def ask(self) -> None:
        """Have the work run soon, in the background (joining a run that has not started yet)."""
        with self._lock:
            if self._queued is None:
                self._queued = self._last = self._executor.submit(self._run)

    def _run(self) -> None:
        with self._lock:
            self._queued = None
        try:
            self._work()
        except Exception:  # its effect is bookkeeping: the next ask runs it again
            log.warning("%s failed; it runs again at the next request", self._name, exc_info=True)

    def close(self) -> None:
        """Wait for the runs asked for so far, then take no more."""
        last = self._last
        if last is not None:
            last.result()
        self._executor.shutdown(wait=True)

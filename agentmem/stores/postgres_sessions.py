"""Each thread's session on a PostgreSQL note store: a pooled connection pinned for as long as it runs a
block, and the statements it has waiting for its next round trip.

A thread inside the store's `lock()` or `transaction()` keeps one connection, so its statements share
the transaction and the session lock. Inside a transaction, statements whose results nobody reads wait
in the thread's queue, and go as one pipeline before its next read or with the commit; outside one,
bookkeeping a write section deferred goes with its next round trip. The store (`postgres`) holds one
`PinnedSessions`, and decides what is queued; psycopg's and the pool's failures leave here as
agentmem's typed errors.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg_pool

from .postgres_connection import typed_error

Statement = tuple[str, list[Sequence[Any]]]  # in psycopg's placeholders, with the parameters of each of its rows


class PinnedSessions:
    """Each thread's pinned connection and its queued and deferred statements."""

    def __init__(self, pool: psycopg_pool.ConnectionPool, store_path: str) -> None:
        """`store_path` names the store in errors (`typed_error`)."""
        self._pool, self._store_path = pool, store_path
        self._local = threading.local()

    @contextmanager
    def session(self) -> Iterator[psycopg.Connection]:
        """This thread's pinned connection, or one from the pool for as long as the block runs;
        psycopg's failures leave as agentmem's typed errors (the pinned one's too)."""
        pinned = getattr(self._local, "conn", None)
        if pinned is not None:
            with self.typed_errors():  # a caller's `except StoreUnavailableError` inside a section sees them
                self.send_queued(pinned)
                yield pinned
            return
        with self.typed_errors(), self._pool.connection(timeout=60) as conn:
            self._local.conn = conn
            try:
                yield conn
            finally:
                self._local.conn = None

    @contextmanager
    def typed_errors(self) -> Iterator[None]:
        """psycopg's and the pool's failures as agentmem's typed errors."""
        try:
            yield
        except (psycopg.Error, psycopg_pool.PoolClosed, psycopg_pool.PoolTimeout) as exc:
            raise typed_error(exc, self._store_path) from exc

    def queued(self) -> list[Statement] | None:
        """This thread's open transaction's statements waiting to be sent; None outside a transaction."""
        return getattr(self._local, "queued", None)

    def start_queue(self, statements: list[Statement]) -> None:
        """Queue this thread's statements from now on, these first (a transaction's BEGIN)."""
        self._local.queued = statements

    def end_queue(self) -> None:
        """Queue no more of this thread's statements (its transaction has ended)."""
        self._local.queued = None

    def discard(self) -> None:
        """Drop this thread's queued and deferred statements unsent (its transaction failed)."""
        self._local.queued = self._local.deferred = None

    def defer(self, statements: list[Statement]) -> None:
        """Send these statements, a bookkeeping transaction to its COMMIT, with this write section's
        next round trip (`send_queued` outside a transaction: its next read or transaction), or
        with its lock's release. Like any bookkeeping, they are lost if that round trip fails
        (logged at the release). (A recall's counts deferred so took as long in the release as in
        a round trip of their own, 0.6 ms at 1k notes: the server's work, not the trip.)"""
        self._local.deferred = [*(getattr(self._local, "deferred", None) or []), *statements]

    def _take_deferred(self) -> list[Statement]:
        deferred, self._local.deferred = getattr(self._local, "deferred", None), None
        return deferred or []

    def send_queued(
        self, conn: psycopg.Connection, then: Sequence[tuple[str, Sequence[Any]]] = (),
        meanwhile: Callable[[], None] | None = None,
    ) -> list[psycopg.Cursor]:
        """Send the queued statements, and `then`'s (statement, parameters) after them, in one
        pipeline; returns `then`'s cursors. `meanwhile` runs once all are sent, before the replies
        are read (the pipeline sends each statement as it is added, and the server runs it)."""
        queued = getattr(self._local, "queued", None)
        if queued is None:  # outside a transaction: what the section deferred goes first
            queued = self._take_deferred()
        statements = [*queued, *((sql, [params]) for sql, params in then)]
        queued.clear()
        if not statements:
            return []
        cursors = []
        with conn.pipeline():
            for sql, rows in statements:
                if len(rows) == 1:
                    cursors.append(conn.execute(sql, rows[0]))
                else:
                    conn.cursor().executemany(sql, rows)
            if meanwhile is not None:
                self._local.queued = None  # what it writes cannot join the statements sent
                meanwhile()
        return cursors[len(cursors) - len(then):]

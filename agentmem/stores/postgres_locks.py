"""The advisory locks a PostgreSQL note store takes in its database: their keys, and how one is held on
a session, its release left to the store.

Session-level advisory locks serialize replicas on several hosts (the SQLite store locks a file), and a
process that dies releases them with its session. The write lock's wait is bounded, and its holder reads
what a write section checks first in the round trip that takes it.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.rows

from . import store

log = logging.getLogger(__name__)

SCHEMA_LOCK = 0x61676D0  # advisory lock keys (per database): creating the schema,
WRITE_LOCK = 0x61676D1  # the write sections of every replica,
JOB_LOCK = 0x61676D2  # and one consolidation job at a time


@contextmanager
def advisory_lock(
    conn: psycopg.Connection, key: int, store_path: str, release: Callable[[psycopg.Connection, int], None],
    wait: bool = True, then: Sequence[tuple[str, Sequence[Any]]] = (),
) -> Iterator[Any]:
    """Hold an advisory lock on `conn`'s session; yields whether it is held, or the rows of each statement
    of `then` (a statement and its parameters), run once it is, by name (as `PostgresNoteGraph._read_notes`
    reads them). `release(conn, key)` unlocks it; `store_path` names the store in a timeout's message."""
    held: Any = wait  # from the request on: a failure after the server granted it must release it
    try:
        if then:  # the write lock: `then` reads after the wait, which is bounded
            try:
                with conn.pipeline():
                    conn.execute(f"SET lock_timeout = '{store.WRITE_LOCK_WAIT_S}s'")
                    conn.execute("SELECT pg_advisory_lock(%s)", (key,))
                    conn.execute("RESET lock_timeout")
                    after = [conn.cursor(row_factory=psycopg.rows.dict_row, binary=True).execute(sql, params)
                             for sql, params in then]
            except psycopg.errors.LockNotAvailable:
                held = False
                conn.execute("RESET lock_timeout")
                raise store.write_lock_timeout(store_path) from None
            held = [cursor.fetchall() for cursor in after]
        elif wait:
            conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        else:
            held = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
        yield held
    finally:
        if held and not conn.closed:  # unlocking a lock not granted only warns
            try:
                release(conn, key)
            except psycopg.OperationalError:
                if not conn.closed:
                    raise
                # the session is gone, and its locks with it: a write committed before is not undone
                log.warning("the connection holding the store's lock was lost; its session released it")

"""The outbox of a PostgreSQL note store shared by replicas: which rows a live writer holds, and a claim
on the others for as long as an index write runs.

A replica writes the index after releasing the write lock, so its outbox rows must stay its own until
then without the lock: a claim row-locks them (`FOR UPDATE SKIP LOCKED`) in a transaction of its own
connection. Another replica's replay skips the rows while their writer lives, and takes them when it
dies (its session ends, and its transaction with it). A write to a held row (a replica changing the
same note) waits for the claim to end, so index writes of one note land in the order of its commits.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from .postgres_connection import rollback
from .rows import OutboxClaim

log = logging.getLogger(__name__)

UNCLAIMED = "FOR KEY SHARE SKIP LOCKED"  # outbox rows no live writer holds (`claimed`)


@contextmanager
def claimed(conn: psycopg.Connection, note_ids: list[str] | None) -> Iterator[OutboxClaim]:
    """The outbox rows of these notes (None: all) that no live writer holds, row-locked in a transaction
    on `conn` (a connection of the claim's own) for the block, and deleted with its commit when the
    claim is `done`."""
    chosen, params = ("", ()) if note_ids is None else ("WHERE note_id = ANY(%s)", (list(note_ids),))
    try:
        with conn.pipeline():  # one round trip
            conn.execute("BEGIN")
            conn.execute("SET LOCAL synchronous_commit TO OFF")  # bookkeeping, see `PostgresNoteGraph.transaction`
            found = conn.execute(f"SELECT note_id, op FROM outbox {chosen} FOR UPDATE SKIP LOCKED", params)
        claim = OutboxClaim([(r[0], r[1]) for r in found])
        yield claim
    except BaseException:
        rollback(conn)
        raise
    try:  # if lost, the index writes are replayed: they are idempotent
        with conn.pipeline():
            if claim.done and claim.rows:
                conn.execute("DELETE FROM outbox WHERE note_id = ANY(%s)", ([i for i, _ in claim.rows],))
            conn.execute("COMMIT")
    except psycopg.OperationalError as exc:
        rollback(conn)
        log.warning("%d index change(s) stay in the outbox: %s", len(claim.rows), exc)

"""The note store on PostgreSQL: the same surface as `NoteGraph`, shared by processes on several machines.

Tables mirror the SQLite store's (notes with their embeddings as bytea, links, history,
recalls, outbox, meta, absorbed keywords, quarantine), created on first open; a store whose tables
this release made (`postgres_schema.schema_mark`, the comment on `notes`) is opened without DDL, so
a role with only SELECT, INSERT, UPDATE and DELETE on them opens it. What differs:

- Locking: `lock()` holds a session-level `pg_advisory_lock` on the store, so replicas on
  several hosts serialize their write sections (the SQLite store uses a file lock);
  `job_lock()` is a second advisory lock, one consolidation job at a time. A process that
  dies releases both with its session.
- Outbox: an index write claims its outbox rows with row locks held until it ends
  (`outbox_claim`), so a replica can write the index after releasing the write lock and
  another replica replays only rows whose writer is gone.
- Freshness: every write transaction bumps `store_version` (SQLite's `PRAGMA data_version`)
  and logs the notes it wrote, linked or re-embedded; `refresh_if_changed` reads those notes'
  links again when the counter moved (`link_changes`), and `changed_since` names them to a
  remember or recall that searched the index before its write section.
- Full text: a generated tsvector, its lexemes with their ranks kept in `postings` by a trigger,
  scored in BM25's shape (`full_text`) in place of FTS5's BM25.
- Round trips: connections come from a psycopg_pool pool; a thread inside `lock()` or
  `transaction()` keeps one connection pinned, so its statements share the transaction and the
  session lock. Inside a transaction, statements whose results nobody reads are queued and sent
  as one pipeline before the next read or with the commit; BEGIN is queued too, so a
  transaction without reads is one round trip; a transaction's `meanwhile` (a remember's index
  write) runs while its COMMIT is on its way, and the outbox rows it clears go with the
  section's next round trip (`PinnedSessions.defer`). `lock()` reads the store version, the outbox state,
  the latest vector of an expected session (`expect_session`), a recall's index entries and
  candidates (`expect_loads`) and a remember's candidates, the notes behind the index entries its
  search made ahead found (`expect_neighbours`), in its own round trip, for what a write section
  reads first. An outbox found empty there spares a remember the read of the notes waiting in it
  (`neighbours`), and its candidates are answered from those rows.
- `backup` copies every table into a SQLite file in the SQLite store's layout, so a backup
  restores with the existing `restore_backup`; `purge_freed` runs VACUUM on the note tables, and
  the planner's statistics are taken again from the live rows (ANALYZE) in the background.

The parts of it that stand alone have modules of their own: `postgres_connection` (URLs, connection
bounds, typed errors), `postgres_sessions` (each thread's pinned connection and its queued
statements), `postgres_schema` (the tables and their preparation), `postgres_locks` (the
advisory locks), `postgres_outbox` (claims on the outbox), `postgres_read_ahead` (what a write section
read ahead, per thread), `postgres_upkeep` (VACUUM and ANALYZE after forgets and growth: what Postgres
still keeps of a forgotten note is said there) and `postgres_copy` (backups and bulk loads).
"""
from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import psycopg
import psycopg.rows
import psycopg_pool

from ..notes import Note
from . import full_text, link_changes
from .filters import NoteFilter
from .ledger_connection import LedgerConnection, Row, row_factory
from .postgres_connection import alive, connection_options, direct_connection, redacted, rollback
from .postgres_copy import bulk_copy, copied_tables, copy_to_sqlite
from .postgres_locks import JOB_LOCK, SCHEMA_LOCK, WRITE_LOCK, advisory_lock
from .postgres_outbox import UNCLAIMED, claimed
from .postgres_read_ahead import ReadAhead
from .postgres_schema import prepare_schema, select_list
from .postgres_sessions import PinnedSessions
from .postgres_upkeep import Upkeep
from .rows import KEPT_IN_QUARANTINE, SEARCHED_VECTOR_OF, IndexEntry, Neighbours, OutboxClaim, readable_notes
from .shared_folders import SharedFolders
from .sql import SqlNoteStore

log = logging.getLogger(__name__)

MARKED_WAITING = 1000  # outbox rows a search mark names at most (`search_mark`)


@functools.lru_cache(maxsize=512)
def psycopg_sql(sql: str) -> str:
    """A statement in `?` placeholders as psycopg takes it (`%s`, a literal % doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresNoteGraph(SqlNoteStore):
    """Notes and links in a PostgreSQL database, with the link structure mirrored in a networkx graph."""

    ORDER, NO_LIMIT = "seq", None
    # `notes_session_order` holds -seq, an order no other index gives: ordered by seq, the planner
    # sorted a session's notes with their vectors (`agent_id IS NULL` is no equality to it) or walked
    # back through every newer note of the store by `seq`'s own index
    LATEST_FIRST = "user_id, agent_id, session_id, (-seq)"
    BEFORE_NOTE = "-seq > -(SELECT seq FROM notes WHERE id = ?)"

    def __init__(self, url: str, pool_size: int = 4) -> None:
        self.url = url
        self.path = redacted(url)  # what messages name the store by
        self.unreadable: dict[str, str] = {}
        self.graph = nx.Graph()
        self._data_version = -1
        self._pinned = threading.local()
        self._ahead = ReadAhead()  # what this thread's write section read ahead
        direct_connection(url).close()  # first: its error says what is wrong, where a pool would only time out
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=pool_size, open=True, name="agentmem", check=alive,
            kwargs={"autocommit": True, "row_factory": row_factory, **connection_options(url)},
        )
        self._sessions = PinnedSessions(self._pool, self.path)
        try:
            with self._session() as conn:  # the meta rows `prepare_schema` reads and writes go on `conn`
                prepare_schema(conn, url, self)
            self.migrated_from = self.get_meta("schema_version")
            self.index_key = bytes.fromhex(self.get_meta("index_key"))
            self.store_id = self.get_meta("store_id")
            self.shared_folders = SharedFolders(self._session)  # versioned folders, e.g. the editor's state
            self.refresh_if_changed()
            self._upkeep = Upkeep(self._run, self._write, self.transaction)  # after a forget, and as the store grows
        except BaseException:
            self._pool.close()
            raise

    def _session(self) -> AbstractContextManager[psycopg.Connection]:
        """This thread's pinned connection, or one from the pool for the block (`PinnedSessions.session`)."""
        return self._sessions.session()

    # ---- statements: SqlNoteStore's (in `?` placeholders) are run here -------------------

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._session() as conn:
            cursor = conn.execute(psycopg_sql(sql), params)
            return cursor.fetchall() if cursor.description else []

    def _write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """A statement whose result nobody reads: inside `transaction()` it waits in this thread's
        queue, which goes to the server in one round trip (a pipeline) before the next statement
        that is not queued, or at the commit."""
        self._ahead.drop()
        queued = self._sessions.queued()
        if queued is None:
            self._run(sql, params)
        else:
            queued.append((psycopg_sql(sql), [params]))

    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """One statement for many rows; queued as one inside `transaction()` (psycopg's `executemany`
        converts the statement once: a batch of 200 remembers sent 2,700 rows)."""
        rows = list(rows)
        queued = self._sessions.queued()
        if not rows:
            return
        self._ahead.drop()
        if queued is not None:
            queued.append((psycopg_sql(sql), rows))
        else:
            with self._session() as conn, conn.cursor() as cursor:
                cursor.executemany(psycopg_sql(sql), rows)

    def _where(self, where: NoteFilter, table: str = "notes") -> tuple[str, list[Any]]:
        return where.sql(table, "postgres")

    def _among(self, column: str, values: list[Any]) -> tuple[str, list[Any]]:
        """One array parameter, so the statement's text does not vary with the number of values
        (psycopg prepares it once; a recall's 77 candidates at 100k notes: 1.07 against 1.55 ms)."""
        return f"{column} = ANY(?)", [list(values)]

    def has_pending(self) -> bool:
        """Whether the outbox holds a row no live writer holds (one to replay)."""
        seen = getattr(self._pinned, "seen_pending", None)
        self._pinned.seen_pending = None
        return bool(self._run(f"SELECT 1 FROM outbox {UNCLAIMED} LIMIT 1")) if seen is None else seen

    def clear_pending(self, note_ids: Iterable[str]) -> None:
        """`SqlNoteStore.clear_pending`; in a write section but outside a transaction (an index write
        made while its commit was on its way), the delete is bookkeeping that goes with the
        section's next round trip (`PinnedSessions.defer`). Until then the rows are a replay that
        would write the same vectors again; they are deleted under the lock, so never after another
        writer has queued the same note again."""
        if self._sessions.queued() is not None or not getattr(self._pinned, "locked", 0):
            super().clear_pending(note_ids)
        else:
            self._sessions.defer([
                ("BEGIN", [()]), ("SET LOCAL synchronous_commit TO OFF", [()]),
                ("DELETE FROM outbox WHERE note_id = ANY(%s)", [(list(note_ids),)]), ("COMMIT", [()]),
            ])

    def neighbours(self, note_ids: Iterable[str], user_id: str | None) -> Neighbours:
        """`SqlNoteStore.neighbours`, without a round trip when this write section has them (`ReadAhead.neighbours`)."""
        note_ids = list(note_ids)
        rows = self._ahead.neighbours(note_ids)
        if rows is None:
            return super().neighbours(note_ids, user_id)
        return Neighbours(rows, user_id, self.unreadable, self.dimension)

    def index_entries(self, tokens: Iterable[str]) -> dict[str, IndexEntry]:
        """`SqlNoteStore.index_entries`, as the lock read them (`expect_loads`, `expect_neighbours`), or with
        the whole notes in the same round trip after a remember's first `neighbours` call
        (`ReadAhead.reads_whole_notes`)."""
        tokens = list(tokens)
        entries = self._ahead.entries(tokens)
        if entries is not None:
            return entries
        if not tokens or not self._ahead.reads_whole_notes():
            return super().index_entries(tokens)
        rows = self._read_notes(*self._whole_notes_statement(tokens))
        self._ahead.keep(rows)
        return {row["index_id"]: IndexEntry.of(row) for row in rows}

    def _whole_notes_statement(self, tokens: list[str]) -> tuple[str, list[Any]]:
        """The notes behind these index tokens as a remember's candidates: whole, with their own embeddings
        (`Neighbours` rows), in `?` placeholders."""
        among, params = self._among("index_id", tokens)
        return (f"SELECT index_id, {self._columns(KEPT_IN_QUARANTINE)}, embedding AS vector, 0 AS waiting"
                f" FROM notes WHERE {among}"), params

    def expect_neighbours(self, tokens: Collection[str]) -> None:
        """`SqlNoteStore.expect_neighbours`: the next `lock()` reads them in its round trip
        (`ReadAhead.expect_neighbours`)."""
        self._ahead.expect_neighbours(tokens)

    def expect_loads(self, note_ids: Collection[str], tokens: Collection[str]) -> None:
        """`SqlNoteStore.expect_loads`: the next `lock()` reads them in its round trip (`ReadAhead.expect_loads`)."""
        self._ahead.expect_loads(note_ids, tokens)

    def read_current(self, note_ids: Collection[str]) -> dict[str, Note] | None:
        """`NoteStore.read_current` in one round trip, without the write lock (which a section takes and
        releases in two): the store's version and the rows in one statement, so one snapshot. None when the link
        view is behind that version: a write section catches it up, and the vector index with it."""
        among, params = self._among("n.id", list(note_ids))
        rows = self._read_notes(f"SELECT v.n AS version, {self._columns(KEPT_IN_QUARANTINE, 'n.')}, NULL AS vector"
                                f" FROM store_version v LEFT JOIN notes n ON {among}", params)
        if rows[0]["version"] != self._data_version:
            return None
        present = [row for row in rows if row["id"] is not None]
        notes = {note.id: note for note, _ in readable_notes(present, self.graph, self.unreadable)}
        return notes if len(notes) == len(present) else None  # a row set aside: a write section quarantines it

    def _loads_statement(self, note_ids: list[str], tokens: list[str]) -> tuple[str, list[Any]]:
        by_token, token_params = self._among("index_id", tokens)
        by_id, id_params = self._among("id", note_ids)
        return psycopg_sql(
            f"SELECT index_id, {self._columns(KEPT_IN_QUARANTINE)}, CASE WHEN {by_id} THEN {SEARCHED_VECTOR_OF} END"
            f" AS vector FROM notes WHERE {by_token} OR {by_id} ORDER BY {self.ORDER}"
        ), [*id_params, *token_params, *id_params]

    def _rows_of(self, note_ids: Iterable[str], vectors_of: Collection[str] | None) -> Sequence[Mapping[str, Any]]:
        """`SqlNoteStore._rows_of`, answered from what the lock read (`expect_loads`) when that holds them."""
        note_ids = list(note_ids)
        rows = self._ahead.loaded_rows(note_ids, vectors_of)
        return super()._rows_of(note_ids, vectors_of) if rows is None else rows

    def expect_session(self, scope: tuple[str | None, str | None, str]) -> None:
        """`SqlNoteStore.expect_session`: the next `lock()` reads that vector in its round trip."""
        self._ahead.expect_session(scope)

    def session_vector(self, scope: tuple[str | None, str | None, str], before: str | None = None) -> np.ndarray | None:
        """`SqlNoteStore.session_vector`, answered from the lock's round trip when this write
        section expected the session (`expect_session`) and has not written since."""
        ahead = None if before is not None else self._ahead.session_read(scope)
        if ahead is None:
            return super().session_vector(scope, before)
        return None if ahead[1] is None else np.frombuffer(ahead[1], dtype=np.float32)

    claims_across_processes = True
    concurrent_reads = True  # each thread reads on a pooled connection of its own (`_session`)

    @contextmanager
    def outbox_claim(self, note_ids: list[str] | None) -> Iterator[OutboxClaim]:
        """The outbox rows of these notes (None: all) that no live writer holds, claimed on a pooled
        connection of their own (`postgres_outbox.claimed`), so a replica can write the index after
        releasing the write lock."""
        if note_ids is not None and not note_ids:
            yield OutboxClaim()
            return
        with self._sessions.typed_errors(), self._pool.connection(timeout=60) as conn:  # not this thread's pinned one
            with claimed(conn, note_ids) as claim:
                yield claim

    def _columns(self, columns: Sequence[str], table: str = "") -> str:
        return select_list(tuple(columns), table)

    def _read_notes(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """Note rows as dicts, in binary (vectors as their bytes): a recall reads 40-80 notes of
        20 columns by name, and `Row`'s lookups in Python took 0.45 ms of it."""
        with self._session() as conn, conn.cursor(row_factory=psycopg.rows.dict_row, binary=True) as cursor:
            return cursor.execute(psycopg_sql(sql), params).fetchall()

    @contextmanager
    def lock(self) -> Iterator[None]:
        """The store's write lock across processes and hosts (reentrant within a thread).

        In the same round trip, once the lock is held, it reads what a write section checks
        first (`refresh_if_changed`, `has_pending`): each answers from that once, until a write;
        whether the outbox is empty (`neighbours`); the latest vector of the session that
        `expect_session` named (`session_vector`); the notes `expect_loads` named; and those behind the
        index tokens `expect_neighbours` named (`index_entries`, `neighbours`)."""
        expected = self._ahead.take_expected()
        session = expected.session
        latest, params = self._latest_in_session(session) if session is not None else ("SELECT NULL", [])
        checks = (f"SELECT n AS version, EXISTS (SELECT 1 FROM outbox {UNCLAIMED}) AS pending,"
                  f" NOT EXISTS (SELECT 1 FROM outbox) AS outbox_empty, ({psycopg_sql(latest)}) AS vector"
                  " FROM store_version")
        statements = [(checks, params)]
        if expected.loads is not None:
            statements.append(self._loads_statement(*expected.loads))
        if expected.neighbours is not None:
            whole, whole_params = self._whole_notes_statement(expected.neighbours)
            statements.append((psycopg_sql(whole), whole_params))
        with self._advisory(WRITE_LOCK, then=statements) as read:
            seen = read[0][0]
            self._pinned.seen_version, self._pinned.seen_pending = seen["version"], seen["pending"]
            loaded = read[1] if expected.loads is not None else None
            whole_rows = read[-1] if expected.neighbours is not None else None
            self._ahead.locked(seen["outbox_empty"], expected, seen["vector"], loaded, whole_rows)
            depth = getattr(self._pinned, "locked", 0)
            self._pinned.locked = depth + 1  # an outbox clear may wait for the release (`clear_pending`)
            try:
                yield
            finally:
                self._pinned.locked = depth
                self._pinned.seen_version = self._pinned.seen_pending = None
                self._ahead.drop()

    @contextmanager
    def job_lock(self, wait: bool = True) -> Iterator[bool]:
        """One consolidation job at a time on this store; yields False (not held) when `wait`
        is False and another process runs one."""
        with self._advisory(JOB_LOCK, wait) as held:
            yield held

    @contextmanager
    def _advisory(
        self, key: int, wait: bool = True, then: Sequence[tuple[str, Sequence[Any]]] = ()
    ) -> Iterator[Any]:
        """Hold an advisory lock on this thread's session (`postgres_locks.advisory_lock`), released with the
        bookkeeping the section deferred (`_unlock`)."""
        with self._session() as conn, advisory_lock(conn, key, self.path, self._unlock, wait, then) as held:
            yield held

    def _unlock(self, conn: psycopg.Connection, key: int) -> None:
        """Release an advisory lock, with the bookkeeping the section deferred (`PinnedSessions.defer`)
        sent first in the same round trip. Should that fail, it is lost (logged), and the lock is
        released on its own."""
        unlock = "SELECT pg_advisory_unlock(%s)"
        try:
            self._sessions.send_queued(conn, [(unlock, (key,))])
        except psycopg.Error as exc:
            if conn.closed:
                raise
            rollback(conn)
            log.warning("a write section's bookkeeping (its outbox rows to clear) was lost: %s", exc)
            conn.execute(unlock, (key,))

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Kept for symmetry with the SQLite store: every statement here already raises typed errors."""
        yield

    def close(self) -> None:
        self._upkeep.close()
        self._pool.close()

    @property
    def connection(self) -> LedgerConnection:
        """SQLite-style access for tables kept beside the notes in the same transactions (the ledger)."""
        return LedgerConnection(self._session, SCHEMA_LOCK)

    def backup(self, target: Path) -> None:
        """A consistent copy of the whole store (one snapshot) as a SQLite file in `NoteGraph`'s layout
        (`postgres_copy.copy_to_sqlite`)."""
        copy_to_sqlite(copied_tables(self), self._session, target)

    def bulk_load(self, tables: dict[str, tuple[Sequence[str], Iterable[Sequence[Any]]]]) -> dict[str, int]:
        """Append rows to tables (name: (columns, rows)) with COPY (`postgres_copy.bulk_copy`), in one
        transaction (a savepoint in an open one); returns the rows copied per table."""
        with self.transaction(), self._session() as conn:
            self._touched([None])  # every replica reloads its view
            counts = bulk_copy(conn, tables)
        return counts

    def refresh_if_changed(self) -> bool:
        """Bring the networkx view up to date when another process committed since we last looked."""
        version = getattr(self._pinned, "seen_version", None)
        self._pinned.seen_version = None
        if version is None:
            version = self._run("SELECT n FROM store_version")[0][0]
        if version == self._data_version:
            return False
        self.graph = link_changes.catch_up(self.graph, self._data_version, version, self._run)
        self._data_version = version
        return True

    # ---- what a commit logs in `link_changes`: the notes it wrote, linked or re-embedded --------

    def insert_many(self, notes: Sequence[tuple[Note, np.ndarray, np.ndarray | None]]) -> None:
        super().insert_many(notes)
        self._touched(note.id for note, _, _ in notes)

    def link_many(self, links: Sequence[tuple[str, str, float, datetime]]) -> None:
        super().link_many(links)
        self._touched(end for a, b, _, _ in links for end in (a, b))

    def replace(self, note: Note, embedding: np.ndarray, in_context: np.ndarray | None, change: str,
                before: Note) -> None:
        super().replace(note, embedding, in_context, change, before)
        self._touched([note.id])  # its vectors may have changed (`changed_since`)

    def set_searched_vectors(self, vectors: dict[str, np.ndarray | None]) -> None:
        super().set_searched_vectors(vectors)
        self._touched(vectors)

    def delete(self, note_id: str) -> list[str]:
        """`SqlNoteStore.delete`; the log keeps no trace of the note either (forget leaves none). It
        names the notes linked to it in the store, so other replicas drop those links, and the note
        with them where their view had it linked (`link_changes.without_forgotten`); elsewhere it stays
        in the view, unreachable from any stored note, until the view is reloaded."""
        linked = [row[0] for row in self._run("SELECT b FROM links WHERE a = ? UNION SELECT a FROM links WHERE b = ?",
                                              (note_id, note_id))]
        neighbours = super().delete(note_id)
        self._write("DELETE FROM link_changes WHERE note_id = ?", (note_id,))
        self._touched(linked, untouched=note_id)
        return neighbours

    def index_rebuilt(self) -> None:
        """`SqlNoteStore.index_rebuilt`, logged as `link_changes.INDEX_REBUILT`: other replicas' searches made
        ahead of it are made again, and their views are not reloaded for it."""
        with self.transaction():
            self._touched([link_changes.INDEX_REBUILT])
            self.stamp_index_rebuilt()

    def index_written(self, note_ids: Iterable[str]) -> None:
        """`NoteStore.index_written`, as a counted commit that logs these notes (`changed_since` names them
        to a search made ahead on an index not reopened yet): clearing the outbox is bookkeeping, which moves
        no store version."""
        with self.transaction():
            self._touched(note_ids)

    def _touched(self, note_ids: Iterable[str | None], untouched: str | None = None) -> None:
        """Log these notes with the open transaction's commit; `untouched`: a note forgotten in it,
        which the log must not name even if the transaction made or linked it earlier."""
        touched = getattr(self._pinned, "touched", None)
        if touched is not None:  # outside a transaction a write is not counted, so nothing is logged
            touched.update(note_ids)
            if untouched is not None:
                touched.discard(untouched)

    def search_mark(self, since_view: bool = False) -> tuple[int, frozenset[str]] | None:
        """`store_version` (`since_view`: the view's, if older), which every write transaction but
        bookkeeping moves (bookkeeping changes no note and no link), and the notes waiting in the
        outbox for their index write; None when more than `MARKED_WAITING` wait (an index that is
        down: search in the section)."""
        version, waiting = self._run(
            f"SELECT n, ARRAY(SELECT note_id FROM outbox LIMIT {MARKED_WAITING + 1}) FROM store_version")[0]
        if len(waiting) > MARKED_WAITING:
            return None
        return min(version, self._data_version) if since_view else version, frozenset(waiting)

    def changed_since(self, mark: Hashable) -> set[str] | None:
        """The notes waiting at the mark, and those the commits since logged (`link_changes`: every
        note a commit wrote, linked or re-embedded). Call in the write section, where the view is
        caught up with the store's version (`refresh_if_changed`)."""
        version, waiting = mark
        touched = link_changes.touched_since(version, self._data_version, self._run)
        return None if touched is None else touched | waiting

    @contextmanager
    def transaction(self, bookkeeping: bool = False, meanwhile: Callable[[], None] | None = None) -> Iterator[None]:
        """One atomic write, counted in `store_version`; the networkx view is rolled back with it on failure.

        `bookkeeping`: a write that changes no note's content and no link (a recall's counts, the
        outbox entries cleared once the index has the notes) is not counted (other replicas need
        not reload their view for it) and commits without waiting for the disk (synchronous_commit
        off): a crash of the server may lose the last such writes, as a power loss may lose
        SQLite's last commits; it never leaves the store inconsistent.

        `meanwhile` runs once the COMMIT is sent, while the server writes it to disk (a remember's
        index write: at 1k notes its commit took 1.6 ms, most of it the wait for the disk).
        """
        version = None
        self._pinned.seen_version = self._pinned.seen_pending = None
        self._ahead.drop()
        try:
            with self._session() as conn:
                queued = self._sessions.queued()
                if queued is not None:  # nested: a savepoint in the open one, with its queued writes inside it
                    with conn.transaction():
                        try:
                            yield
                            if meanwhile is not None:
                                meanwhile()
                        except BaseException:
                            queued.clear()  # unsent, they go with the savepoint's rollback
                            raise
                        self._sessions.send_queued(conn)
                    return
                # BEGIN waits in the queue too: a transaction without reads is one round trip
                self._sessions.start_queue([("BEGIN", [()])])
                self._pinned.touched = set()
                if bookkeeping:
                    self._write("SET LOCAL synchronous_commit TO OFF")
                try:
                    yield
                    touched = list(self._pinned.touched)
                    count = [] if bookkeeping else [
                        (psycopg_sql(link_changes.COUNT_COMMIT), (touched, link_changes.KEPT_VERSIONS))
                    ]
                    last = self._sessions.send_queued(conn, [*count, ("COMMIT", ())], meanwhile)
                    if not bookkeeping:
                        version = last[0].fetchone()[0]
                except BaseException:
                    self._sessions.discard()  # `meanwhile`'s deferred too: for notes not stored
                    rollback(conn)
                    raise
                finally:
                    self._sessions.end_queue()
                    self._pinned.touched = None
        except BaseException:
            self._data_version = -1
            self.refresh_if_changed()
            raise
        if version == self._data_version + 1:  # nobody else committed since we looked: the view is current
            self._data_version = version
        if version is not None:
            self._upkeep.analyze_if_grown(self.graph.number_of_nodes())

    def merge_full_text(self) -> None:
        """Nothing to merge: the trigger deletes a deleted note's postings itself (VACUUM reclaims them)."""

    def purge_freed(self) -> None:
        """After a forget: its dead rows vacuumed, and the planner's statistics taken again in the background
        (`Upkeep.purge_freed`)."""
        self._upkeep.purge_freed()

    def lexical_search(self, terms: list[str], n: int, where: NoteFilter) -> list[tuple[str, float]]:
        """The n best full-text matches of any of `terms` among the notes `where` admits, as
        (id, score > 0), in one statement (`full_text.SEARCH`)."""
        if not terms or n < 1:
            return []
        clause, params = self._where(where.model_copy(update={"metadata": {}}), "p")
        join = ""
        if where.metadata:
            matching, more = self._where(NoteFilter(include_archived=True, metadata=where.metadata), "m")
            clause, params, join = f"{clause} AND {matching}", [*params, *more], full_text.METADATA_JOIN
        rows = self._run(full_text.SEARCH.format(where=clause, join=join), (" ".join(terms), *params, n))
        return [(note_id, float(score)) for note_id, score in rows if score > 0]

"""The note store on PostgreSQL: the same surface as `NoteGraph`, shared by processes on several machines.

Tables mirror the SQLite store's (notes with their embeddings as bytea, links, history,
recalls, outbox, meta, absorbed keywords, quarantine), created on first open; a store whose tables
this release made (`schema_mark`, the comment on `notes`) is opened without DDL, so a role with only
SELECT, INSERT, UPDATE and DELETE on them opens it. What differs:

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
  section's next round trip (`_defer`). `lock()` reads the store version, the outbox state,
  the latest vector of an expected session (`expect_session`) and a recall's index entries and
  candidates (`expect_loads`) in its own round trip, for what a write section reads first. An
  outbox found empty there spares a remember two reads (`neighbours`): of the notes waiting in
  it, and of its candidates, then read with their index entries (`index_entries`).
- `backup` copies every table into a SQLite file in the SQLite store's layout, so a backup
  restores with the existing `restore_backup`; `purge_freed` runs VACUUM on the note tables:
  Postgres then reuses the dead rows' space, but does not zero it on disk, and the WAL keeps old
  row images until its segments are recycled (SQLite with secure_delete zeroes pages); the
  planner's statistics are taken again from the live rows (ANALYZE) in the background.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import selectors
import threading
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import networkx as nx
import numpy as np
import psycopg
import psycopg.rows
import psycopg.sql
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict

from ..errors import AgentMemError, InvalidInputError, StoreClosedError, StoreCorruptedError, StoreUnavailableError
from ..notes import Note
from . import full_text, link_changes, shared_folders, store
from .coalesced import CoalescedWork
from .filters import NoteFilter
from .graph import NoteGraph
from .ledger_connection import LedgerConnection, Row, row_factory, to_postgres
from .loaded_ahead import LoadedAhead
from .rows import (
    KEPT_IN_QUARANTINE, NOTE_COLUMNS, SEARCHED_VECTOR_OF, IndexEntry, Neighbours, OutboxClaim, readable_notes,
)
from .shared_folders import SharedFolders
from .sql import SqlNoteStore

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS notes (
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    keywords TEXT NOT NULL,
    tags TEXT NOT NULL,
    context TEXT NOT NULL,
    user_id TEXT, agent_id TEXT, session_id TEXT,
    created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
    last_recalled DOUBLE PRECISION NOT NULL,
    recall_count INTEGER NOT NULL, strength DOUBLE PRECISION NOT NULL, archived INTEGER NOT NULL,
    metadata JSONB NOT NULL, fact TEXT,  -- jsonb keeps a number's value, not its form (see rows.stored_int)
    embedding BYTEA NOT NULL,
    context_embedding BYTEA,
    index_id TEXT,
    search TSVECTOR GENERATED ALWAYS AS (
        setweight(to_tsvector('english', text), 'A')
        || setweight(to_tsvector('english', keywords), 'B')
        || setweight(to_tsvector('english', tags), 'B')
    ) STORED
) WITH (fillfactor = 85);  -- room on each page, so a recall's counters update in place (HOT), not in every index
CREATE INDEX IF NOT EXISTS notes_session_order ON notes(user_id, agent_id, session_id, (-seq));
DROP INDEX IF EXISTS notes_scope;  -- before 2026-11-29: the scope alone (`LATEST_FIRST`)
CREATE INDEX IF NOT EXISTS notes_index_id ON notes(index_id);
CREATE TABLE IF NOT EXISTS links (
    a TEXT NOT NULL, b TEXT NOT NULL, weight DOUBLE PRECISION NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (a, b)
);
CREATE INDEX IF NOT EXISTS links_b ON links(b);
CREATE TABLE IF NOT EXISTS history (
    seq BIGINT GENERATED ALWAYS AS IDENTITY, note_id TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,
    change TEXT NOT NULL, before TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_note ON history(note_id);
CREATE TABLE IF NOT EXISTS recalls (note_id TEXT NOT NULL, at DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS recalls_note ON recalls(note_id);
CREATE TABLE IF NOT EXISTS outbox (note_id TEXT PRIMARY KEY, op TEXT NOT NULL CHECK (op IN ('upsert', 'delete')));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS absorbed (
    note_id TEXT NOT NULL, keyword TEXT NOT NULL, origin TEXT NOT NULL, PRIMARY KEY (note_id, keyword)
);
CREATE INDEX IF NOT EXISTS absorbed_origin ON absorbed(origin);
CREATE TABLE IF NOT EXISTS quarantine (
    seq BIGINT GENERATED ALWAYS AS IDENTITY, id TEXT, reason TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,
    row TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS store_version (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), n BIGINT NOT NULL);
INSERT INTO store_version(one, n) VALUES (TRUE, 0) ON CONFLICT DO NOTHING;
"""

# The records of the consolidation jobs the store's servers accepted (`server.job_log`), in SQLite's dialect: a
# folder store's servers keep the same table in a file of their own, a PostgreSQL store's in its database.
JOBS_SCHEMA = """
CREATE TABLE IF NOT EXISTS consolidation_jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    job TEXT NOT NULL,
    request TEXT NOT NULL,
    interrupted INTEGER NOT NULL DEFAULT 0
)
"""

MARKED_WAITING = 1000  # outbox rows a search mark names at most (`search_mark`)
STATISTICS_LOCK_WAIT_MS = 100  # how long dropping an emptied table's statistics may wait for its lock
ANALYZE_AT_LEAST = 500  # notes a store gains before its first statistics are refreshed
SCHEMA_LOCK = 0x61676D0  # advisory lock keys (per database): creating the schema,
WRITE_LOCK = 0x61676D1  # the write sections of every replica,
JOB_LOCK = 0x61676D2  # and one consolidation job at a time
TABLES: dict[str, tuple[str, ...]] = {
    "notes": NOTE_COLUMNS,
    "links": ("a", "b", "weight", "created_at"),
    "history": ("note_id", "at", "change", "before"),
    "recalls": ("note_id", "at"),
    "outbox": ("note_id", "op"),
    "meta": ("key", "value"),
    "absorbed": ("note_id", "keyword", "origin"),
    "quarantine": ("id", "reason", "at", "row"),
}
# every table the store makes (the notes' tables, the version log, the full text's lexicon and postings, shared
# folders, the ledger, the records of its servers' consolidation jobs)
STORE_TABLES = (
    *TABLES, "store_version", "link_changes", "lexicon", "postings", "shared_folders", "consolidation_ledger",
    "consolidation_jobs",
)
LEDGER_COLUMNS = (
    "id", "note_id", "edit_id", "prompt", "prompt_key", "target", "editor", "status", "created_at", "updated_at",
    "verification", "detail", "scope",
)
# what a forget VACUUMs: every table a note's text, words, fact or id was in (the ledger, the editor's
# archive in shared_folders and the outbox too: autovacuum left their dead rows for want of 50 of them)
FORGET_VACUUMS = (
    "notes", "links", "history", "recalls", "absorbed", "lexicon", "postings", "link_changes", "outbox", "quarantine",
    "consolidation_ledger", "shared_folders",
)
UNCLAIMED = "FOR KEY SHARE SKIP LOCKED"  # outbox rows no live writer holds (`outbox_claim`)
SEQUENCED = ("notes", "history", "quarantine")  # tables whose insertion order matters (SQLite's rowid)


def select_list(columns: tuple[str, ...], table: str = "") -> str:
    """Columns (of `table`, as "n.") as `rows` and a SQLite-layout copy read them (jsonb metadata as its text)."""
    return ", ".join(f"{table}metadata::text AS metadata" if c == "metadata" else table + c for c in columns)


@functools.lru_cache(maxsize=512)
def psycopg_sql(sql: str) -> str:
    """A statement in `?` placeholders as psycopg takes it (`%s`, a literal % doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


SECRET_PARAMETERS = ("password", "sslpassword")  # what a message never shows of a URL
MALFORMED = (
    "malformed PostgreSQL URL: percent-encode special characters in the password (@ as %40, / as %2F, : as %3A,"
    " ? as %3F, # as %23, % as %25) and give the port as a number; the URL is not shown, it may hold a password"
)
# Every connection's bounds, unless the URL sets its own: connecting waits at most 10 s, and a
# connection whose peer stops acknowledging (a host down, a network path that drops packets)
# fails its call after 30 s of unacknowledged data (tcp_user_timeout, in ms) or after 25 s of
# silence on an idle or waiting connection (keepalives: 10 s idle, then 3 probes 5 s apart).
# A server process that is stopped while its host's kernel still acknowledges is not covered.
CONNECTION_BOUNDS = {
    "connect_timeout": "10", "keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5",
    "keepalives_count": "3", "tcp_user_timeout": "30000",
}


def url_parameters(url: str) -> dict[str, Any]:
    """The URL's connection parameters as libpq reads them. A URL that libpq would misread is refused
    (InvalidInputError, naming none of it): an unencoded `@` or `/` in the password makes part of it
    the host, port or database name, which every message would then show."""
    scheme, _, rest = url.partition("://")
    before_query = rest.partition("?")[0]
    authority, _, path = before_query.partition("/")
    if authority.count("@") > 1 or "@" in path:
        raise InvalidInputError(MALFORMED)
    try:
        parameters = conninfo_to_dict(url)
    except psycopg.Error:
        raise InvalidInputError(MALFORMED) from None  # libpq's message may quote the URL
    for port in str(parameters.get("port") or "").split(","):
        if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise InvalidInputError(MALFORMED)
    return parameters


def redacted(url: str) -> str:
    """The URL without its secrets, for messages: a password in the user part (up to the last `@`)
    or given as a query parameter (`?password=`, `sslpassword=`) shows as ***; a URL that
    `url_parameters` refuses shows as its scheme only."""
    try:
        url_parameters(url)
    except InvalidInputError:
        return f"{url.partition('://')[0]}://(a malformed URL, not shown)"
    head, question, query = url.partition("?")
    scheme, _, rest = head.partition("://")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        user_part, _, host = authority.rpartition("@")
        user, colon, _ = user_part.partition(":")
        authority = f"{user}{':***' if colon else ''}@{host}"
    pairs = []
    for pair in query.split("&") if question else ():
        key, equals, value = pair.partition("=")
        pairs.append(f"{key}=***" if unquote(key).strip().lower() in SECRET_PARAMETERS else pair)
    return f"{scheme}://{authority}{slash}{path}{question}{'&'.join(pairs)}"


def connection_options(url: str) -> dict[str, str]:
    """`CONNECTION_BOUNDS` but those the URL sets itself."""
    given = url_parameters(url)
    return {key: value for key, value in CONNECTION_BOUNDS.items() if key not in given}


def direct_connection(url: str) -> psycopg.Connection:
    """One connection outside any pool; a server that refuses it is a typed error naming what to check."""
    options = connection_options(url)
    try:
        return psycopg.connect(url, autocommit=True, **options)
    except psycopg.Error as exc:
        raise StoreUnavailableError(
            f"cannot connect to the note store at {redacted(url)} ({str(exc).strip()}): check the server is running"
            " and the URL (user, host, port, database) is right"
        ) from exc


def holds_store(url: str) -> bool:
    """Whether the database holds an agentmem store, found without creating one (opening a store does)."""
    with direct_connection(url) as conn:
        try:
            if conn.execute("SELECT to_regclass('meta')").fetchone()[0] is None:
                return False
            return conn.execute("SELECT 1 FROM meta WHERE key = 'store_id'").fetchone() is not None
        except psycopg.Error as exc:  # e.g. a role that may connect but not read the store's tables
            raise StoreUnavailableError(f"cannot read the note store at {redacted(url)}: {str(exc).strip()}") from exc


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
        self._statistics = CoalescedWork(self._analyze_forgotten, "analyze")
        direct_connection(url).close()  # first: its error says what is wrong, where a pool would only time out
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=pool_size, open=True, name="agentmem", check=alive,
            kwargs={"autocommit": True, "row_factory": row_factory, **connection_options(url)},
        )
        try:
            self._prepare_schema()
            self.migrated_from = self.get_meta("schema_version")
            self.index_key = bytes.fromhex(self.get_meta("index_key"))
            self.store_id = self.get_meta("store_id")
            self.shared_folders = SharedFolders(self._session)  # versioned folders, e.g. the editor's state
            self.refresh_if_changed()
            self._analyzed_notes = max(0.0, self._run("SELECT reltuples FROM pg_class WHERE oid = 'notes'::regclass")[0][0])
        except BaseException:
            self._pool.close()
            raise

    def _prepare_schema(self) -> None:
        """Create the store's tables in a new database, or bring those of an earlier release up to date;
        a store made by this release is only read (`schema_state`), so a role with no more than
        SELECT, INSERT, UPDATE and DELETE on its tables opens it. A database whose tables of the
        store's names are not a store's is refused, and left as it was."""
        with self._session() as conn:
            if schema_state(conn, self.url) == "current":
                return
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                state = schema_state(conn, self.url)  # again, now that no other replica is making it
                if state == "current":
                    return
                missing = [table for (table,) in conn.execute(
                    "SELECT t FROM unnest(%s::text[]) t"
                    " WHERE to_regclass(format('%%I.%%I', current_schema(), t)) IS NULL", (list(STORE_TABLES),))]
                try:
                    conn.execute(SCHEMA)
                    conn.execute(link_changes.SCHEMA)
                    full_text.prepare(conn)
                    conn.execute(shared_folders.SCHEMA)
                    conn.execute(ledger_schema())
                    conn.execute(to_postgres(JOBS_SCHEMA, placeholders=False))
                    grant_as_on_notes(conn, missing)
                    conn.execute(f"COMMENT ON TABLE notes IS '{schema_mark()}'")  # needs the tables' owner
                except psycopg.errors.InsufficientPrivilege as exc:
                    if state == "new":
                        needed = ("make a new store", "it needs CREATE on the schema (GRANT CREATE ON SCHEMA ... TO the"
                                  " role), or have the store made once by a role that has it")
                    else:
                        needed = ("bring this store, made by an earlier release, up to date", "open it once as the"
                                  " role that owns its tables; then a role with SELECT, INSERT, UPDATE and DELETE on"
                                  " them opens it")
                    raise StoreUnavailableError(
                        f"the role may not {needed[0]} at {self.path} ({exc.diag.message_primary}): {needed[1]}"
                    ) from exc
                if self.get_meta("index_key") is None:
                    self.set_meta("index_key", os.urandom(32).hex())
                    self.set_meta("schema_version", "2")

    @contextmanager
    def _session(self) -> Iterator[psycopg.Connection]:
        """This thread's pinned connection, or one from the pool for as long as the block runs;
        psycopg's failures leave as agentmem's typed errors (the pinned one's too)."""
        pinned = getattr(self._pinned, "conn", None)
        if pinned is not None:
            with self._typed_errors():  # a caller's `except StoreUnavailableError` inside a section sees them
                self._send_queued(pinned)
                yield pinned
            return
        with self._typed_errors(), self._pool.connection(timeout=60) as conn:
            self._pinned.conn = conn
            try:
                yield conn
            finally:
                self._pinned.conn = None

    @contextmanager
    def _typed_errors(self) -> Iterator[None]:
        """psycopg's and the pool's failures as agentmem's typed errors."""
        try:
            yield
        except (psycopg.Error, psycopg_pool.PoolClosed, psycopg_pool.PoolTimeout) as exc:
            raise typed_error(exc, self.path) from exc

    # ---- statements: SqlNoteStore's (in `?` placeholders) are run here -------------------

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._session() as conn:
            cursor = conn.execute(psycopg_sql(sql), params)
            return cursor.fetchall() if cursor.description else []

    def _write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """A statement whose result nobody reads: inside `transaction()` it waits in this thread's
        queue, which goes to the server in one round trip (a pipeline) before the next statement
        that is not queued, or at the commit."""
        self._drop_read_ahead()
        queued = getattr(self._pinned, "queued", None)
        if queued is None:
            self._run(sql, params)
        else:
            queued.append((psycopg_sql(sql), [params]))

    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """One statement for many rows; queued as one inside `transaction()` (psycopg's `executemany`
        converts the statement once: a batch of 200 remembers sent 2,700 rows)."""
        rows = list(rows)
        queued = getattr(self._pinned, "queued", None)
        if not rows:
            return
        self._drop_read_ahead()
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
        section's next round trip (`_defer`). Until then the rows are a replay that would write the
        same vectors again; they are deleted under the lock, so never after another writer has
        queued the same note again."""
        if getattr(self._pinned, "queued", None) is not None or not getattr(self._pinned, "locked", 0):
            super().clear_pending(note_ids)
        else:
            self._defer([("BEGIN", [()]), ("SET LOCAL synchronous_commit TO OFF", [()]),
                         ("DELETE FROM outbox WHERE note_id = ANY(%s)", [(list(note_ids),)]), ("COMMIT", [()])])

    def _defer(self, statements: list[tuple[str, list[Sequence[Any]]]]) -> None:
        """Send these statements, a bookkeeping transaction to its COMMIT, with this write section's
        next round trip (`_send_queued` outside a transaction: its next read or transaction), or
        with its lock's release. Like any bookkeeping, they are lost if that round trip fails
        (logged at the release). (A recall's counts deferred so took as long in the release as in
        a round trip of their own, 0.6 ms at 1k notes: the server's work, not the trip.)"""
        self._pinned.deferred = [*(getattr(self._pinned, "deferred", None) or []), *statements]

    def _take_deferred(self) -> list[tuple[str, list[Sequence[Any]]]]:
        deferred, self._pinned.deferred = getattr(self._pinned, "deferred", None), None
        return deferred or []

    def neighbours(self, note_ids: Iterable[str], user_id: str | None) -> Neighbours:
        """`SqlNoteStore.neighbours`, without a round trip in a write section whose lock found the
        outbox empty, while this thread writes nothing: none waits in it (only a lock holder adds
        to it; a claim ending takes rows out). The write path asks for those first, then searches
        the index, then reads the notes found: that first call has `index_entries` read them."""
        note_ids = list(note_ids)
        if getattr(self._pinned, "outbox_empty", False):
            if not note_ids:
                self._pinned.read_ahead = self._pinned.read_ahead or {}
                return Neighbours([], user_id, self.unreadable, self.dimension)
            ahead = self._pinned.read_ahead or {}
            if all(note_id in ahead for note_id in note_ids):
                rows = [ahead[i] for i in dict.fromkeys(note_ids)]
                return Neighbours(rows, user_id, self.unreadable, self.dimension)
        return super().neighbours(note_ids, user_id)

    def index_entries(self, tokens: Iterable[str]) -> dict[str, IndexEntry]:
        """`SqlNoteStore.index_entries`; after a remember's first `neighbours` call, the whole notes,
        as it reads them, in the same round trip (one round trip fewer, for 15 notes more read): its
        candidates are the notes its search found. A recall's were read with its lock (`expect_loads`)."""
        tokens = list(tokens)
        ahead = getattr(self._pinned, "loaded_ahead", None)
        entries = None if ahead is None else ahead.entries_for(tokens)
        if entries is not None:
            return entries
        if not tokens or getattr(self._pinned, "read_ahead", None) is None:
            return super().index_entries(tokens)
        among, params = self._among("index_id", tokens)
        rows = self._read_notes(
            f"SELECT index_id, {self._columns(KEPT_IN_QUARANTINE)}, embedding AS vector, 0 AS waiting"
            f" FROM notes WHERE {among}", params,
        )
        self._pinned.read_ahead.update((row["id"], row) for row in rows)
        return {row["index_id"]: IndexEntry.of(row) for row in rows}

    def expect_loads(self, note_ids: Collection[str], tokens: Collection[str]) -> None:
        """`SqlNoteStore.expect_loads`: the next `lock()` reads, in its round trip, the notes behind
        these index tokens (without their vectors) and these notes (with them), for `index_entries`
        and `load` to answer from (`LoadedAhead`): at 100k notes, a recall read its 40 entries in
        0.7 ms, then its 70 candidates in 1.2 ms, each a round trip right after a computation (the
        index's search, the query's encoding), which took longer than one back to back (BENCHMARKS.md)."""
        self._pinned.loads_expected = (list(note_ids), list(tokens))

    def _loads_statement(self, note_ids: list[str], tokens: list[str]) -> tuple[str, list[Any]]:
        by_token, token_params = self._among("index_id", tokens)
        by_id, id_params = self._among("id", note_ids)
        return psycopg_sql(
            f"SELECT index_id, {self._columns(KEPT_IN_QUARANTINE)}, CASE WHEN {by_id} THEN {SEARCHED_VECTOR_OF} END"
            f" AS vector FROM notes WHERE {by_token} OR {by_id} ORDER BY {self.ORDER}"
        ), [*id_params, *token_params, *id_params]

    def load(
        self, note_ids: Iterable[str], links: bool = True, validate: bool = True,
        vectors_of: Collection[str] | None = None,
    ) -> dict[str, tuple[Note, np.ndarray | None]]:
        """`SqlNoteStore.load`, answered from what the lock read (`expect_loads`) when that holds them."""
        note_ids = list(note_ids)
        ahead = getattr(self._pinned, "loaded_ahead", None)
        rows = None if ahead is None else ahead.rows_for(note_ids, vectors_of)
        if rows is None:
            return super().load(note_ids, links, validate, vectors_of)
        found = readable_notes(rows, self.graph if links else None, self.unreadable, validate, self.dimension)
        return {note.id: (note, vector) for note, vector in found}

    def _drop_read_ahead(self, outbox_empty: bool = False) -> None:
        """What this thread's write section read ahead for `neighbours`, `session_vector` and `load`
        no longer holds once it writes or its lock ends; a lock's start sets whether it found the
        outbox empty."""
        self._pinned.outbox_empty = outbox_empty
        self._pinned.read_ahead = self._pinned.session_ahead = self._pinned.loaded_ahead = None

    def expect_session(self, scope: tuple[str | None, str | None, str]) -> None:
        """`SqlNoteStore.expect_session`: the next `lock()` reads that vector in its round trip."""
        self._pinned.session_expected = scope

    def session_vector(self, scope: tuple[str | None, str | None, str], before: str | None = None) -> np.ndarray | None:
        """`SqlNoteStore.session_vector`, answered from the lock's round trip when this write
        section expected the session (`expect_session`) and has not written since."""
        ahead = getattr(self._pinned, "session_ahead", None)
        if before is not None or ahead is None or ahead[0] != scope:
            return super().session_vector(scope, before)
        self._pinned.session_ahead = None
        return None if ahead[1] is None else np.frombuffer(ahead[1], dtype=np.float32)

    claims_across_processes = True
    concurrent_reads = True  # each thread reads on a pooled connection of its own (`_session`)

    @contextmanager
    def outbox_claim(self, note_ids: list[str] | None) -> Iterator[OutboxClaim]:
        """The outbox rows of these notes (None: all) that no live writer holds, row-locked
        (`FOR UPDATE SKIP LOCKED`) in a transaction of their own connection for the block, and
        deleted with its commit when the claim is `done`.

        So a replica can write the index after releasing the write lock: another replica's replay
        skips the rows while their writer lives, and takes them when it dies (its session ends, and
        its transaction with it). A write to a held row (a replica changing the same note) waits
        for the claim to end, so index writes of one note land in the order of its commits."""
        if note_ids is not None and not note_ids:
            yield OutboxClaim()
            return
        chosen, params = ("", ()) if note_ids is None else ("WHERE note_id = ANY(%s)", (list(note_ids),))
        with self._typed_errors(), self._pool.connection(timeout=60) as conn:  # not this thread's pinned one
            try:
                with conn.pipeline():  # one round trip
                    conn.execute("BEGIN")
                    conn.execute("SET LOCAL synchronous_commit TO OFF")  # bookkeeping, see `transaction`
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

    def _columns(self, columns: Sequence[str], table: str = "") -> str:
        return select_list(tuple(columns), table)

    def _read_notes(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        """Note rows as dicts, in binary (vectors as their bytes): a recall reads 40-80 notes of
        20 columns by name, and `Row`'s lookups in Python took 0.45 ms of it."""
        with self._session() as conn, conn.cursor(row_factory=psycopg.rows.dict_row, binary=True) as cursor:
            return cursor.execute(psycopg_sql(sql), params).fetchall()

    def _send_queued(
        self, conn: psycopg.Connection, then: Sequence[tuple[str, Sequence[Any]]] = (),
        meanwhile: Callable[[], None] | None = None,
    ) -> list[psycopg.Cursor]:
        """Send the queued statements, and `then`'s (statement, parameters) after them, in one
        pipeline; returns `then`'s cursors. `meanwhile` runs once all are sent, before the replies
        are read (the pipeline sends each statement as it is added, and the server runs it)."""
        queued = getattr(self._pinned, "queued", None)
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
                self._pinned.queued = None  # what it writes cannot join the statements sent
                meanwhile()
        return cursors[len(cursors) - len(then):]

    @contextmanager
    def lock(self) -> Iterator[None]:
        """The store's write lock across processes and hosts (reentrant within a thread).

        In the same round trip, once the lock is held, it reads what a write section checks
        first (`refresh_if_changed`, `has_pending`): each answers from that once, until a write;
        whether the outbox is empty (`neighbours`); the latest vector of the session that
        `expect_session` named (`session_vector`); and the notes `expect_loads` named."""
        session, self._pinned.session_expected = getattr(self._pinned, "session_expected", None), None
        loads, self._pinned.loads_expected = getattr(self._pinned, "loads_expected", None), None
        latest, params = self._latest_in_session(session) if session is not None else ("SELECT NULL", [])
        checks = (f"SELECT n AS version, EXISTS (SELECT 1 FROM outbox {UNCLAIMED}) AS pending,"
                  f" NOT EXISTS (SELECT 1 FROM outbox) AS outbox_empty, ({psycopg_sql(latest)}) AS vector"
                  " FROM store_version")
        statements = [(checks, params)] + ([] if loads is None else [self._loads_statement(*loads)])
        with self._advisory(WRITE_LOCK, then=statements) as read:
            seen = read[0][0]
            self._pinned.seen_version, self._pinned.seen_pending = seen["version"], seen["pending"]
            self._drop_read_ahead(seen["outbox_empty"])
            self._pinned.session_ahead = None if session is None else (session, seen["vector"])
            if loads is not None:
                self._pinned.loaded_ahead = LoadedAhead(read[1], *loads)
            depth = getattr(self._pinned, "locked", 0)
            self._pinned.locked = depth + 1  # an outbox clear may wait for the release (`clear_pending`)
            try:
                yield
            finally:
                self._pinned.locked = depth
                self._pinned.seen_version = self._pinned.seen_pending = None
                self._drop_read_ahead()

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
        """Hold an advisory lock; yields whether it is held, or the rows of each statement of `then`
        (a statement and its parameters), run once it is, by name (as `_read_notes` reads them)."""
        with self._session() as conn:
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
                        raise store.write_lock_timeout(self.path) from None
                    held = [cursor.fetchall() for cursor in after]
                elif wait:
                    conn.execute("SELECT pg_advisory_lock(%s)", (key,))
                else:
                    held = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
                yield held
            finally:
                if held and not conn.closed:  # unlocking a lock not granted only warns
                    try:
                        self._unlock(conn, key)
                    except psycopg.OperationalError:
                        if not conn.closed:
                            raise
                        # the session is gone, and its locks with it: a write committed before is not undone
                        log.warning("the connection holding the store's lock was lost; its session released it")

    def _unlock(self, conn: psycopg.Connection, key: int) -> None:
        """Release an advisory lock, with the bookkeeping the section deferred (`_defer`) sent first
        in the same round trip. Should that fail, it is lost (logged), and the lock is released on
        its own."""
        unlock = "SELECT pg_advisory_unlock(%s)"
        try:
            self._send_queued(conn, [(unlock, (key,))])
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
        self._statistics.close()
        self._pool.close()

    @property
    def connection(self) -> LedgerConnection:
        """SQLite-style access for tables kept beside the notes in the same transactions (the ledger)."""
        return LedgerConnection(self._session, SCHEMA_LOCK)

    def backup(self, target: Path) -> None:
        """A consistent copy of the whole store (one snapshot) as a SQLite file in `NoteGraph`'s layout,
        which `Memory.restore_backup` opens like any SQLite backup."""
        tables = copied_tables(self)
        copy = NoteGraph(target)
        try:
            copied_tables(copy)
            with self._session() as conn, conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                with copy.transaction():
                    for table, columns in tables.items():
                        copy.connection.execute(f"DELETE FROM {table}")
                        rows = conn.execute(f"SELECT {select_list(columns)} FROM {table} ORDER BY {order_of(table, columns)}")
                        copy.connection.executemany(
                            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                            map(tuple, rows),
                        )
        finally:
            copy.close()

    def bulk_load(self, tables: dict[str, tuple[Sequence[str], Iterable[Sequence[Any]]]]) -> dict[str, int]:
        """Append rows to tables (name: (columns, rows)) with COPY, in one transaction (a savepoint
        in an open one), the full text's lexicon and postings computed once (`full_text.indexed_once`); returns the rows
        copied per table. Identity values given in the rows are kept, and their sequences moved
        past them so later inserts do not collide."""
        counts: dict[str, int] = {}
        with self.transaction(), self._session() as conn:
            self._touched([None])  # every replica reloads its view
            with full_text.indexed_once(conn):
                for table, (columns, rows) in tables.items():
                    counts[table] = 0
                    copying = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
                    with conn.cursor() as cursor, cursor.copy(copying) as copy:
                        for row in rows:
                            copy.write_row(row)
                            counts[table] += 1
            for table in tables:  # the planner's statistics of the new rows (a plan of a GIN full-text
                conn.execute(f"ANALYZE {table}")  # search without them, since replaced, was 4x slower)
            identities = conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND is_identity = 'YES' AND table_name = ANY(%s)",
                (list(tables),),
            ).fetchall()
            for table, column in identities:
                if column in tables[table][0]:
                    conn.execute(
                        f"SELECT setval(pg_get_serial_sequence(%s, %s), COALESCE(MAX({column}), 0) + 1, false)"
                        f" FROM {table}", (table, column),
                    )
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
        self._drop_read_ahead()
        try:
            with self._session() as conn:
                queued = getattr(self._pinned, "queued", None)
                if queued is not None:  # nested: a savepoint in the open one, with its queued writes inside it
                    with conn.transaction():
                        try:
                            yield
                            if meanwhile is not None:
                                meanwhile()
                        except BaseException:
                            queued.clear()  # unsent, they go with the savepoint's rollback
                            raise
                        self._send_queued(conn)
                    return
                # BEGIN waits in the queue too: a transaction without reads is one round trip
                self._pinned.queued = [("BEGIN", [()])]
                self._pinned.touched = set()
                if bookkeeping:
                    self._write("SET LOCAL synchronous_commit TO OFF")
                try:
                    yield
                    touched = list(self._pinned.touched)
                    count = [] if bookkeeping else [
                        (psycopg_sql(link_changes.COUNT_COMMIT), (touched, link_changes.KEPT_VERSIONS))
                    ]
                    last = self._send_queued(conn, [*count, ("COMMIT", ())], meanwhile)
                    if not bookkeeping:
                        version = last[0].fetchone()[0]
                except BaseException:
                    self._pinned.queued = self._pinned.deferred = None  # `meanwhile`'s: for notes not stored
                    rollback(conn)
                    raise
                finally:
                    self._pinned.queued = self._pinned.touched = None
        except BaseException:
            self._data_version = -1
            self.refresh_if_changed()
            raise
        if version == self._data_version + 1:  # nobody else committed since we looked: the view is current
            self._data_version = version
        if version is not None:
            self._analyze_if_grown()

    def _analyze_if_grown(self) -> None:
        """Refresh the planner's statistics of `notes` and `postings` once the notes have doubled
        since they were taken.

        Autovacuum does it too, but visits a database once a minute: a store filled faster kept
        the estimates of a smaller one (the GIN full-text search, since replaced by the postings,
        then also scanned the scope index: 10k notes, 3.2 ms, 1.3 ms after ANALYZE), and a search
        of postings never analyzed scanned all of them (100k notes: about 300 ms)."""
        notes = self.graph.number_of_nodes()
        if notes >= 2 * self._analyzed_notes + ANALYZE_AT_LEAST:
            try:  # after a commit: its failure is not the write's
                self._run("ANALYZE notes, postings")
            except AgentMemError as exc:
                log.warning("the planner's statistics of the notes were not refreshed: %s", exc)
                return
            self._analyzed_notes = notes

    def merge_full_text(self) -> None:
        """Nothing to merge: the trigger deletes a deleted note's postings itself (VACUUM reclaims them)."""

    def purge_freed(self) -> None:
        """After a forget: VACUUM the tables that held the note (`FORGET_VACUUMS`, those present), so
        its dead rows are reclaimed (what Postgres still keeps is in the module doc), and have them
        ANALYZEd in the background (`_analyze_forgotten`). A table that the background's ANALYZE (or
        autovacuum) holds is skipped, not waited for in the write section: the background run VACUUMs
        it too. One that fails now is left to autovacuum, and logged: the forget, already committed, stands."""
        try:
            self._vacuum("VACUUM (SKIP_LOCKED)")
        except StoreUnavailableError as exc:  # e.g. the session ended after the forget's commit
            log.warning("the tables a forget emptied were not vacuumed now; autovacuum does it later: %s", exc)
        self._statistics.ask()

    def _analyze_forgotten(self) -> None:
        """The planner's statistics (`pg_stats`, readable by any role that reads the table) sample
        column values, and kept a forgotten note's text, words and id until the next ANALYZE, which
        may come only when the store has doubled; taken again from the live rows, they hold none of
        it, and every plan stays as it was. 0.75 s at 120k notes, so it runs after the forget's write
        section, once for a burst of forgets (`CoalescedWork`); `close` waits for it."""
        self._vacuum("VACUUM (ANALYZE)")
        self._drop_statistics_of_emptied_tables()

    def _drop_statistics_of_emptied_tables(self) -> None:
        """ANALYZE leaves a table that it finds empty with the statistics it had, which a forget emptied of its
        last rows (the outbox, a store's only history entries) would keep. Altering a column to its own type
        drops its statistics; that takes no rewrite, on an empty table. Columns that a generated column reads
        (the notes' text, keywords and tags, for the full-text vector) cannot be altered, and keep theirs until
        the table holds rows again."""
        columns = self._run(
            "SELECT s.tablename, s.attname, format_type(a.atttypid, a.atttypmod) FROM pg_stats s"
            " JOIN pg_attribute a ON a.attrelid = to_regclass(s.tablename) AND a.attname = s.attname"
            " WHERE s.schemaname = current_schema() AND s.tablename = ANY(?)"
            " AND NOT EXISTS (SELECT 1 FROM pg_depend d JOIN pg_attribute g ON g.attrelid = d.objid"
            "   AND g.attnum = d.objsubid AND g.attgenerated <> '' WHERE d.refobjid = a.attrelid AND d.refobjsubid = a.attnum)",
            (list(FORGET_VACUUMS),),
        )
        for table in dict.fromkeys(table for table, _, _ in columns):
            if self._run(f"SELECT EXISTS (SELECT 1 FROM {table})")[0][0]:
                continue
            alters = ", ".join(f'ALTER COLUMN "{column}" TYPE {kind}' for name, column, kind in columns if name == table)
            try:
                with self.transaction(bookkeeping=True):  # the lock waits for no replica's write: a later forget
                    self._write(f"SET LOCAL lock_timeout = '{STATISTICS_LOCK_WAIT_MS}ms'")  # tries again
                    self._write(f"ALTER TABLE {table} {alters}")
            except (StoreUnavailableError, StoreCorruptedError) as exc:
                log.warning("the statistics of %s were not dropped: %s", table, exc)

    def _vacuum(self, command: str) -> None:
        present = self._run("SELECT t FROM unnest(?::text[]) AS t WHERE to_regclass(t) IS NOT NULL", (list(FORGET_VACUUMS),))
        for (table,) in present:
            try:
                self._run(f"{command} {table}")
            except (StoreUnavailableError, StoreCorruptedError) as exc:  # e.g. lock_timeout: another session holds it
                log.warning("%s %s failed; autovacuum does it later: %s", command, table, exc)

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


def ledger_schema() -> str:
    """The consolidation ledger's tables in Postgres's dialect: made with the store's, so that a role
    without CREATE opens the store (`Ledger` then finds them there; `LedgerConnection.executescript`)."""
    from ..consolidation.ledger import SCHEMA as LEDGER_SCHEMA  # the ledger's own module owns its schema
    from .ledger_connection import to_postgres

    return to_postgres(LEDGER_SCHEMA, placeholders=False)


@functools.lru_cache(maxsize=1)
def schema_mark() -> str:
    """What names the release that made the store's tables or last brought them up to date: the comment
    on `notes` (in the catalog, which any role reads; a migration's copy of `meta` does not touch it),
    a digest of every statement that makes them, so a release that changes one runs them again."""
    parts = (SCHEMA, link_changes.SCHEMA, full_text.INDEX_WORDS, full_text.TRIGGERS, full_text.LEXICON,
             full_text.POSTINGS, full_text.LEXICON_COUNT, full_text.POSTINGS_FILL, full_text.EARLIER_FULL_TEXT,
             shared_folders.SCHEMA, ledger_schema(), JOBS_SCHEMA)
    return "agentmem schema " + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def typed_error(exc: Exception, store: str) -> AgentMemError:
    """A failure of psycopg or of its pool on the store named `store`, as agentmem's typed error."""
    if isinstance(exc, psycopg.IntegrityError):
        return InvalidInputError(f"the note store refused the write: {exc}")
    if isinstance(exc, (psycopg.errors.NumericValueOutOfRange, psycopg.errors.ProgramLimitExceeded)):  # too big
        return InvalidInputError(f"the note store cannot hold this value: {exc}")
    if isinstance(exc, psycopg_pool.PoolClosed):  # a read in a helper thread that outlived `close`
        return StoreClosedError(f"the note store at {store} is closed")
    if isinstance(exc, (psycopg.OperationalError, psycopg_pool.PoolTimeout)):
        return StoreUnavailableError(
            f"the note store at {store} cannot be reached ({exc}): check the server is running and reachable")
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return StoreUnavailableError(
            f"the note store at {store} refused the role a right ({exc.diag.message_primary}): a role that uses"
            " a store needs SELECT, INSERT, UPDATE and DELETE on the store's tables (GRANT SELECT, INSERT, UPDATE,"
            " DELETE ON ALL TABLES IN SCHEMA ... TO the role)")
    if isinstance(exc, psycopg.DatabaseError):
        return StoreCorruptedError(f"the note store at {store} failed a statement: {exc}")
    return StoreUnavailableError(f"the note store at {store}: {exc}")  # an interface error: a closed connection


def grant_as_on_notes(conn: psycopg.Connection, tables: list[str]) -> None:
    """Give the roles that may use `notes` the same rights on `tables`, made by bringing an earlier release's store
    up to date: a role granted SELECT, INSERT, UPDATE and DELETE on the store's tables before could not use them."""
    grants = conn.execute(
        "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END, a.privilege_type,"
        " a.is_grantable FROM pg_class c, aclexplode(c.relacl) a"
        " WHERE c.oid = to_regclass(format('%I.notes', current_schema())) AND a.grantee <> c.relowner"
    ).fetchall()
    for table in tables:
        for grantee, privilege, grantable in grants:  # a role's name as regrole writes it, quoted where it must be
            conn.execute(psycopg.sql.SQL("GRANT {} ON {} TO {}{}").format(
                psycopg.sql.SQL(privilege), psycopg.sql.Identifier(table), psycopg.sql.SQL(grantee),
                psycopg.sql.SQL(" WITH GRANT OPTION" if grantable else "")))


def schema_state(conn: psycopg.Connection, url: str) -> str:
    """"new" (none of the store's tables in the schema), "current" (a store whose tables this release
    made or brought up to date, and whose full-text trigger function is this release's) or
    "older" (a store that needs its schema statements run). Tables of the store's names that are
    no store's (no `meta` of agentmem's holding its index key) are refused, and nothing is changed."""
    found = dict(conn.execute(
        "SELECT c.relname::text, array_agg(a.attname::text) FROM pg_class c"
        " LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
        " WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())"
        " AND c.relname = ANY(%s) GROUP BY c.relname",
        (list(STORE_TABLES),),
    ).fetchall())
    if not found:
        return "new"
    ours = ({"key", "value"} <= set(found.get("meta") or ())
            and {"id", "text", "embedding"} <= set(found.get("notes") or ()))
    if ours:
        key, made_by, words = conn.execute(
            "SELECT (SELECT value FROM meta WHERE key = 'index_key'), obj_description('notes'::regclass, 'pg_class'),"
            " (SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure('agentmem_index_words()'))"
        ).fetchone()
        if key is not None:  # what `full_text.prepare` would change, an earlier release may have made since
            current = (made_by == schema_mark() and set(STORE_TABLES) <= set(found)
                       and words == full_text.INDEX_WORDS)
            return "current" if current else "older"
    raise InvalidInputError(
        f"the database at {redacted(url)} holds other tables named {', '.join(sorted(found))}, not an agentmem"
        " store's (nothing was changed): use another database, or a schema of the store's own (CREATE SCHEMA"
        " agentmem, then add ?options=-csearch_path%3Dagentmem to the URL)"
    )


def alive(conn: psycopg.Connection) -> None:
    """The pool's check of a connection it lends (raises if it is dead, and the pool takes another):
    after a server restart or a terminated session, its idle connections are dead, and each would
    fail the call that borrowed it. An idle connection has nothing to read unless the server wrote
    to it (its goodbye) or closed it, so only then is it tried with a round trip (an empty statement):
    trying every one added a round trip to every borrow (40-50 us on loopback, more across a network)."""
    with selectors.DefaultSelector() as selector:  # not select.select, which refuses descriptors past 1023
        selector.register(conn.fileno(), selectors.EVENT_READ)
        if selector.select(timeout=0):
            psycopg_pool.ConnectionPool.check_connection(conn)


def rollback(conn: psycopg.Connection) -> None:
    """End the connection's open transaction, if it still has one to end."""
    if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.execute("ROLLBACK")


def copied_tables(store: PostgresNoteGraph | NoteGraph) -> dict[str, tuple[str, ...]]:
    """The tables a backup or a migration copies, with their columns (the first orders the copy).
    The consolidation ledger is created in both stores so that it is always there to copy."""
    from ..consolidation.ledger import Ledger  # the ledger's own module owns its schema

    Ledger(store.connection)
    return {**TABLES, "consolidation_ledger": LEDGER_COLUMNS}


def order_of(table: str, columns: tuple[str, ...]) -> str:
    """The order a Postgres table is copied in: insertion order where it matters, else all columns."""
    return "seq" if table in SEQUENCED else ", ".join(columns)

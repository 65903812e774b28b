"""The note store on PostgreSQL: the same surface as `NoteGraph`, shared by processes on several machines.

Tables mirror the SQLite store's (notes with their embeddings as bytea, links, history,
recalls, outbox, meta, absorbed keywords, quarantine), created on first open. What differs:

- Locking: `lock()` holds a session-level `pg_advisory_lock` on the store, so replicas on
  several hosts serialize their write sections (the SQLite store uses a file lock);
  `job_lock()` is a second advisory lock, one consolidation job at a time. A process that
  dies releases both with its session.
- Freshness: every write transaction bumps `store_version`; `refresh_if_changed` reloads
  the networkx link view when the counter moved (SQLite's `PRAGMA data_version`).
- Full text: a generated tsvector (english stemming; text weighted A, keywords and tags B)
  with a GIN index. In place of FTS5's BM25, a score of the same shape: per query term, its
  IDF over the store (from the index's document counts) times `ts_rank` (column-weighted
  term frequency, divided by 1 + log of the note's length), summed over the terms. Only
  the ordering and the ratio to the best match are used.
- Connections come from a psycopg_pool pool. A thread inside `lock()` or `transaction()`
  keeps one connection pinned, so its statements share the transaction and the session lock.
- `backup` copies every table into a SQLite file in the SQLite store's layout, so a backup
  restores with the existing `restore_backup`; `purge_freed` runs VACUUM on the note tables:
  Postgres then reuses the dead rows' space, but does not zero it on disk, and the WAL keeps
  old row images until its segments are recycled (SQLite with secure_delete zeroes pages).
"""
from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import psycopg
import psycopg_pool

from ..errors import InvalidInputError, StoreCorruptedError, StoreUnavailableError
from ..notes import Fact, Link, Note
from .filters import NoteFilter
from .graph import NOTE_COLUMNS, UNREADABLE, NoteGraph, from_timestamp, to_timestamp
from .ledger_connection import LedgerConnection, Row, row_factory
from . import shared_folders
from .shared_folders import SharedFolders
from .tokens import index_token

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
    metadata JSONB NOT NULL, fact TEXT,
    embedding BYTEA NOT NULL,
    context_embedding BYTEA,
    index_id TEXT,
    search TSVECTOR GENERATED ALWAYS AS (
        setweight(to_tsvector('english', text), 'A')
        || setweight(to_tsvector('english', keywords), 'B')
        || setweight(to_tsvector('english', tags), 'B')
    ) STORED
);
CREATE INDEX IF NOT EXISTS notes_scope ON notes(user_id, agent_id, session_id);
CREATE INDEX IF NOT EXISTS notes_index_id ON notes(index_id);
CREATE INDEX IF NOT EXISTS notes_search ON notes USING GIN (search);
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

# ts_rank weights for {D, C, B, A}: the note's own words (A) count most, keywords and tags (B) half as much
RANK_WEIGHTS = "{0, 0, 0.5, 1.0}"
RANK_NORMALIZATION = 1  # divide by 1 + log(document length), as BM25 discounts long documents
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
LEDGER_COLUMNS = (
    "id", "note_id", "edit_id", "prompt", "prompt_key", "target", "editor", "status", "created_at", "updated_at",
    "verification", "detail", "scope",
)
SEQUENCED = ("notes", "history", "quarantine")  # tables whose insertion order matters (SQLite's rowid)


def select_list(columns: tuple[str, ...]) -> str:
    """Columns as read from Postgres for a SQLite-layout copy (jsonb metadata as its text)."""
    return ", ".join("metadata::text AS metadata" if c == "metadata" else c for c in columns)


SELECT_NOTES = f"SELECT {select_list(NOTE_COLUMNS)} FROM notes"
OUTBOX = "INSERT INTO outbox(note_id, op) VALUES (%s, %s) ON CONFLICT (note_id) DO UPDATE SET op = excluded.op"


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


class PostgresNoteGraph:
    """Notes and links in a PostgreSQL database, with the link structure mirrored in a networkx graph."""

    def __init__(self, url: str, pool_size: int = 4) -> None:
        self.url = url
        self.path = redacted(url)  # what messages name the store by
        self.unreadable: dict[str, str] = {}
        self.graph = nx.Graph()
        self._data_version = -1
        self._pinned = threading.local()
        try:  # one direct connection first: its error says what is wrong, where a pool would only time out
            psycopg.connect(url, connect_timeout=10).close()
        except psycopg.Error as exc:
            raise StoreUnavailableError(
                f"cannot connect to the note store at {self.path} ({str(exc).strip()}): check the server is running"
                " and the URL (user, host, port, database) is right"
            ) from exc
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=pool_size, open=True, name="agentmem",
            kwargs={"autocommit": True, "row_factory": row_factory},
        )
        try:
            with self._session() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                conn.execute(SCHEMA)
                conn.execute(shared_folders.SCHEMA)
                if self.get_meta("index_key") is None:
                    self.set_meta("index_key", os.urandom(32).hex())
                    self.set_meta("schema_version", "2")
            self.migrated_from = self.get_meta("schema_version")
            self.index_key = bytes.fromhex(self.get_meta("index_key"))
            self.store_id = self.get_meta("store_id")
            self.shared_folders = SharedFolders(self._session)  # versioned folders, e.g. the editor's state
            self.refresh_if_changed()
        except BaseException:
            self._pool.close()
            raise

    # ---- connections, errors and locks ---------------------------------------------

    @contextmanager
    def _session(self) -> Iterator[psycopg.Connection]:
        """This thread's pinned connection, or one from the pool for as long as the block runs;
        psycopg's failures leave as agentmem's typed errors."""
        pinned = getattr(self._pinned, "conn", None)
        if pinned is not None:
            yield pinned
            return
        try:
            with self._pool.connection(timeout=60) as conn:
                self._pinned.conn = conn
                try:
                    yield conn
                finally:
                    self._pinned.conn = None
        except psycopg.IntegrityError as exc:
            raise InvalidInputError(f"the note store refused the write: {exc}") from exc
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise StoreUnavailableError(
                f"the note store at {self.path} cannot be reached ({exc}): check the server is running and reachable"
            ) from exc
        except psycopg.DatabaseError as exc:
            raise StoreCorruptedError(f"the note store at {self.path} failed a statement: {exc}") from exc

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._session() as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            with self._session() as conn, conn.cursor() as cursor:
                cursor.executemany(sql, rows)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """The store's write lock across processes and hosts (reentrant within a thread)."""
        with self._advisory(WRITE_LOCK):
            yield

    @contextmanager
    def job_lock(self, wait: bool = True) -> Iterator[bool]:
        """One consolidation job at a time on this store; yields False (not held) when `wait`
        is False and another process runs one."""
        with self._advisory(JOB_LOCK, wait) as held:
            yield held

    @contextmanager
    def _advisory(self, key: int, wait: bool = True) -> Iterator[bool]:
        with self._session() as conn:
            if wait:
                conn.execute("SELECT pg_advisory_lock(%s)", (key,))
                held = True
            else:
                held = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
            try:
                yield held
            finally:
                if held and not conn.closed:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Kept for symmetry with the SQLite store: every statement here already raises typed errors."""
        yield

    # ---- lifecycle and cross-process freshness -------------------------------------

    def close(self) -> None:
        self._pool.close()

    def claim(self, store_id: str) -> None:
        with self.transaction():
            self.set_meta("store_id", store_id)
        self.store_id = store_id

    def count(self) -> int:
        return self._run("SELECT COUNT(*) FROM notes")[0][0]

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

    def refresh_if_changed(self) -> bool:
        """Reload the networkx view when another process committed since we last looked."""
        version = self._run("SELECT n FROM store_version")[0][0]
        if version == self._data_version:
            return False
        graph = nx.Graph()
        graph.add_nodes_from(r[0] for r in self._run("SELECT id FROM notes"))
        graph.add_weighted_edges_from(tuple(r) for r in self._run("SELECT a, b, weight FROM links"))
        self.graph, self._data_version = graph, version
        return True

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic write, counted in `store_version`; the networkx view is rolled back with it on failure."""
        try:
            with self._session() as conn:
                with conn.transaction():
                    yield
                    version = conn.execute("UPDATE store_version SET n = n + 1 RETURNING n").fetchone()[0]
        except BaseException:
            self._data_version = -1
            self.refresh_if_changed()
            raise
        if version == self._data_version + 1:  # nobody else committed since we looked: the view is current
            self._data_version = version

    def get_meta(self, key: str) -> str | None:
        rows = self._run("SELECT value FROM meta WHERE key = %s", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._run(
            "INSERT INTO meta(key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # ---- notes --------------------------------------------------------------------

    def insert(self, note: Note, embedding: np.ndarray, in_context: np.ndarray | None = None) -> None:
        """Add a note; `in_context`, when given, is the vector searched and ranked instead of `embedding`."""
        self._run(
            f"INSERT INTO notes ({', '.join(NOTE_COLUMNS)}) VALUES ({', '.join(['%s'] * len(NOTE_COLUMNS))})",
            self._row(note, embedding, in_context),
        )
        self._run(OUTBOX, (note.id, "upsert"))
        self.graph.add_node(note.id)

    def replace(
        self, note: Note, embedding: np.ndarray, in_context: np.ndarray | None, change: str, before: Note
    ) -> None:
        """Overwrite a note, keeping its previous version in the history."""
        self._run(
            f"UPDATE notes SET {', '.join(c + ' = %s' for c in NOTE_COLUMNS[1:])} WHERE id = %s",
            (*self._row(note, embedding, in_context)[1:], note.id),
        )
        self.record(note.id, before.updated_at, change, before)
        self._run(OUTBOX, (note.id, "upsert"))

    def set_fields(self, note_id: str, **fields: Any) -> None:
        """Update plain columns that the vector index does not mirror."""
        unknown = set(fields) - set(NOTE_COLUMNS)
        if unknown:
            raise InvalidInputError(f"no such note field(s): {', '.join(sorted(unknown))}")
        sets = ", ".join(f"{name} = %s" for name in fields)
        values = [_column_value(name, value) for name, value in fields.items()]
        self._run(f"UPDATE notes SET {sets} WHERE id = %s", (*values, note_id))

    def set_archived(self, note_ids: Iterable[str], archived: bool) -> None:
        for note_id in note_ids:
            self._run("UPDATE notes SET archived = %s WHERE id = %s", (int(archived), note_id))
            self._run(OUTBOX, (note_id, "upsert"))

    def record(self, note_id: str, at: datetime, change: str, before: Note) -> None:
        self._run(
            "INSERT INTO history(note_id, at, change, before) VALUES (%s, %s, %s, %s)",
            (note_id, to_timestamp(at), change, before.model_dump_json(exclude={"links"})),
        )

    def record_recalls(self, note_ids: Iterable[str], at: datetime) -> None:
        self._many("INSERT INTO recalls(note_id, at) VALUES (%s, %s)", [(i, to_timestamp(at)) for i in note_ids])

    def absorb(self, note_id: str, keywords: Iterable[str], origin: str) -> None:
        """Record that `note_id` took these keywords from `origin` (linked newcomer)."""
        self._many(
            "INSERT INTO absorbed(note_id, keyword, origin) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            [(note_id, keyword, origin) for keyword in keywords],
        )

    def delete(self, note_id: str) -> list[str]:
        """Remove a note and everything about it (see `NoteGraph.delete`); returns the neighbours
        whose keywords changed."""
        taken: dict[str, set[str]] = {}
        for row in self._run("SELECT note_id, keyword FROM absorbed WHERE origin = %s", (note_id,)):
            taken.setdefault(row[0], set()).add(row[1])
        for neighbour, words in taken.items():
            self._give_back(neighbour, words)
        self._run("DELETE FROM history WHERE change = %s", (f"evolved:{note_id}",))
        self._run("DELETE FROM absorbed WHERE origin = %s OR note_id = %s", (note_id, note_id))
        for table, column in (("notes", "id"), ("history", "note_id"), ("recalls", "note_id")):
            self._run(f"DELETE FROM {table} WHERE {column} = %s", (note_id,))
        self._run("DELETE FROM links WHERE a = %s OR b = %s", (note_id, note_id))
        self._run(OUTBOX, (note_id, "delete"))
        if note_id in self.graph:
            self.graph.remove_node(note_id)
        return list(taken)

    def _give_back(self, note_id: str, words: set[str]) -> None:
        """Drop absorbed keywords from a note and from every earlier version in its history."""
        rows = self._run("SELECT keywords FROM notes WHERE id = %s", (note_id,))
        if rows:
            kept = [w for w in json.loads(rows[0][0]) if w not in words]
            self._run("UPDATE notes SET keywords = %s WHERE id = %s", (json.dumps(kept), note_id))
            self._run(OUTBOX, (note_id, "upsert"))
        for seq, before in self._run("SELECT seq, before FROM history WHERE note_id = %s", (note_id,)):
            version = json.loads(before)
            version["keywords"] = [w for w in version.get("keywords", []) if w not in words]
            self._run("UPDATE history SET before = %s WHERE seq = %s", (json.dumps(version), seq))

    def purge_freed(self) -> None:
        """After a forget: VACUUM the tables that held the note, so its dead rows are reclaimed
        (what Postgres still keeps is in the module doc)."""
        for table in ("notes", "links", "history", "recalls", "absorbed"):
            self._run(f"VACUUM {table}")

    def exists(self, note_id: str) -> bool:
        return bool(self._run("SELECT 1 FROM notes WHERE id = %s", (note_id,)))

    def get(self, note_id: str) -> Note | None:
        return self.get_many([note_id]).get(note_id)

    def get_many(self, note_ids: Iterable[str], links: bool = True) -> dict[str, Note]:
        return {note_id: note for note_id, (note, _) in self.load(note_ids, links).items()}

    def load(self, note_ids: Iterable[str], links: bool = True) -> dict[str, tuple[Note, np.ndarray]]:
        """Notes with the vectors they are searched by, by id; unknown ids are left out."""
        note_ids = list(note_ids)
        if not note_ids:
            return {}
        return {note.id: (note, emb) for note, emb in self._select(" WHERE id = ANY(%s)", [note_ids], links)}

    def own_embeddings(self, note_ids: Iterable[str]) -> dict[str, np.ndarray]:
        """The embeddings of the notes' texts alone (what duplicates and links are judged by)."""
        rows = self._run("SELECT id, embedding FROM notes WHERE id = ANY(%s)", (list(note_ids),))
        return {r[0]: np.frombuffer(r[1], dtype=np.float32) for r in rows}

    def session_vector(self, scope: tuple[str | None, str | None, str], before: str | None = None) -> np.ndarray | None:
        """The searched vector of the latest note remembered in a session (of one user and
        agent), or of the latest one remembered before note `before`; None for none."""
        sql = (
            "SELECT COALESCE(context_embedding, embedding) FROM notes"
            " WHERE user_id IS NOT DISTINCT FROM %s AND agent_id IS NOT DISTINCT FROM %s AND session_id = %s"
        )
        params: list[Any] = list(scope)
        if before is not None:
            sql += " AND seq < (SELECT seq FROM notes WHERE id = %s)"
            params.append(before)
        rows = self._run(sql + " ORDER BY seq DESC LIMIT 1", params)
        return np.frombuffer(rows[0][0], dtype=np.float32) if rows else None

    def all_notes(self) -> Iterator[tuple[Note, np.ndarray]]:
        yield from self._select("", [])

    def select(self, where: NoteFilter, limit: int | None = None, offset: int = 0) -> list[Note]:
        """Notes a filter admits, oldest first, with their links."""
        clause, params = where.postgres_sql()
        rows = self._run(
            f"SELECT id FROM notes WHERE {clause} ORDER BY created_at, seq LIMIT %s OFFSET %s",
            (*params, limit, offset),
        )
        found = self.get_many([r[0] for r in rows])
        return [found[r[0]] for r in rows if r[0] in found]

    def ids_of(self, tokens: Iterable[str]) -> dict[str, str]:
        """Note ids by their vector-index tokens (unknown tokens are left out)."""
        tokens = list(tokens)
        if not tokens:
            return {}
        return {r[0]: r[1] for r in self._run("SELECT index_id, id FROM notes WHERE index_id = ANY(%s)", (tokens,))}

    def recall_times(self, note_id: str) -> list[datetime]:
        rows = self._run("SELECT at FROM recalls WHERE note_id = %s ORDER BY at", (note_id,))
        return [from_timestamp(r[0]) for r in rows]

    def history(self, note_id: str) -> list[tuple[datetime, str, Note]]:
        rows = self._run("SELECT at, change, before FROM history WHERE note_id = %s ORDER BY seq", (note_id,))
        return [(from_timestamp(r[0]), r[1], Note.model_validate_json(r[2])) for r in rows]

    def counts(self) -> dict[str, Any]:
        total, archived = self._run("SELECT COUNT(*), COALESCE(SUM(archived), 0) FROM notes")[0]
        users = {r[0]: r[1] for r in self._run("SELECT COALESCE(user_id, ''), COUNT(*) FROM notes GROUP BY user_id")}
        return {
            "notes": total, "archived": int(archived), "users": users,
            "pending_sync": self._run("SELECT COUNT(*) FROM outbox")[0][0],
            "links": self._run("SELECT COUNT(*) FROM links")[0][0],
            "quarantined": self._run("SELECT COUNT(*) FROM quarantine")[0][0],
        }

    def lexical_search(self, terms: list[str], n: int, where: NoteFilter) -> list[tuple[str, float]]:
        """The n best full-text matches of any of `terms` (english-stemmed) among the notes `where`
        admits, as (id, score > 0). The score is BM25's shape: per term, its IDF over the whole
        store times `ts_rank` (column-weighted, length-normalized term frequency), summed."""
        if not terms or n < 1:
            return []
        clause, params = where.postgres_sql("n")
        rows = self._run(
            "WITH q AS (SELECT DISTINCT plainto_tsquery('english', t) AS query FROM unnest(%s::text[]) AS u(t)),"
            " df AS (SELECT query, (SELECT count(*) FROM notes WHERE search @@ q.query) AS docs FROM q"
            "        WHERE numnode(query) > 0),"
            " total AS (SELECT count(*) AS docs FROM notes)"
            " SELECT n.id, SUM(ln(1 + (total.docs - df.docs + 0.5) / (df.docs + 0.5))"
            "                  * ts_rank(%s, n.search, df.query, %s)) AS score"
            f" FROM df JOIN notes n ON n.search @@ df.query CROSS JOIN total WHERE {clause}"
            " GROUP BY n.id, n.seq ORDER BY score DESC, n.seq LIMIT %s",
            (terms, RANK_WEIGHTS, RANK_NORMALIZATION, *params, n),
        )
        return [(note_id, float(score)) for note_id, score in rows if score > 0]

    def embeddings_where(self, where: NoteFilter, limit: int) -> dict[str, np.ndarray] | None:
        """The searched vectors of every note `where` admits, or None when more than `limit` do."""
        clause, params = where.postgres_sql()
        rows = self._run(
            f"SELECT id, COALESCE(context_embedding, embedding) FROM notes WHERE {clause} LIMIT %s", (*params, limit + 1)
        )
        if len(rows) > limit:
            return None
        return {r[0]: np.frombuffer(r[1], dtype=np.float32) for r in rows}

    # ---- links --------------------------------------------------------------------

    def link(self, a: str, b: str, weight: float, at: datetime) -> None:
        first, second = sorted((a, b))
        self._run(
            "INSERT INTO links(a, b, weight, created_at) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (a, b) DO UPDATE SET weight = excluded.weight",
            (first, second, weight, to_timestamp(at)),
        )
        self.graph.add_edge(a, b, weight=weight)

    def links_of(self, note_id: str) -> list[Link]:
        if note_id not in self.graph:
            return []
        edges = sorted(self.graph[note_id].items(), key=lambda item: -item[1]["weight"])
        return [Link.model_construct(note_id=n, weight=e["weight"]) for n, e in edges]

    # ---- the outbox of vector-index writes ----------------------------------------

    def has_pending(self) -> bool:
        return bool(self._run("SELECT 1 FROM outbox LIMIT 1"))

    def pending(self) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self._run("SELECT note_id, op FROM outbox")]

    def clear_pending(self, note_ids: Iterable[str]) -> None:
        self._run("DELETE FROM outbox WHERE note_id = ANY(%s)", (list(note_ids),))

    def all_ids(self) -> set[str]:
        return {r[0] for r in self._run("SELECT id FROM notes")}

    def all_tokens(self) -> dict[str, str]:
        return {r[0]: r[1] for r in self._run("SELECT index_id, id FROM notes")}

    # ---- (de)serialisation and quarantine ------------------------------------------

    def _select(self, where: str, params: list[Any], links: bool = True) -> Iterator[tuple[Note, np.ndarray]]:
        for row in self._run(SELECT_NOTES + where + " ORDER BY seq", params):
            try:
                note = self._note(row, links)
            except UNREADABLE as exc:  # never fatal: reported, and quarantined by the next write
                log.warning("note %r cannot be read and will be quarantined: %s", row["id"], exc)
                self.unreadable[str(row["id"])] = f"{type(exc).__name__}: {exc}"[:2000]
                continue
            yield note, np.frombuffer(row["context_embedding"] or row["embedding"], dtype=np.float32)

    def quarantine_unreadable(self) -> list[str]:
        """Move every note row that cannot be read into `quarantine`; returns their ids."""
        for row in self._run(SELECT_NOTES):
            try:
                self._note(row, links=False)
                if len(row["embedding"]) % 4:
                    raise ValueError("embedding bytes are not float32")
            except UNREADABLE as exc:
                self.unreadable[str(row["id"])] = f"{type(exc).__name__}: {exc}"[:2000]
        return self.quarantine(self.unreadable)

    def quarantine(self, reasons: dict[str, str]) -> list[str]:
        if not reasons:
            return []
        now = datetime.now(timezone.utc).timestamp()
        kept_columns = [c if c != "metadata" else "metadata::text AS metadata" for c in NOTE_COLUMNS[:16]]
        with self.transaction():
            for note_id, reason in list(reasons.items()):
                rows = self._run(f"SELECT {', '.join(kept_columns)} FROM notes WHERE id = %s", (note_id,))
                if not rows:
                    continue
                self._run(
                    "INSERT INTO quarantine(id, reason, at, row) VALUES (%s, %s, %s, %s)",
                    (note_id, reason, now, json.dumps(rows[0].as_dict(), default=str)),
                )
                self.delete(note_id)
        log.warning("quarantined %d unreadable note(s): %s", len(reasons), ", ".join(reasons))
        moved = list(reasons)
        self.unreadable.clear()
        return moved

    def quarantined(self) -> list[dict[str, Any]]:
        rows = self._run("SELECT id, reason, at, row FROM quarantine ORDER BY seq")
        return [{"id": r[0], "reason": r[1], "at": from_timestamp(r[2]), "row": json.loads(r[3])} for r in rows]

    def _note(self, row: Row, links: bool) -> Note:
        return Note(
            id=row["id"], text=row["text"],
            keywords=json.loads(row["keywords"]), tags=json.loads(row["tags"]), context=row["context"],
            user_id=row["user_id"], agent_id=row["agent_id"], session_id=row["session_id"],
            created_at=from_timestamp(row["created_at"]), updated_at=from_timestamp(row["updated_at"]),
            last_recalled=from_timestamp(row["last_recalled"]),
            recall_count=row["recall_count"], strength=row["strength"], archived=bool(row["archived"]),
            metadata=json.loads(row["metadata"]),
            fact=Fact.model_validate_json(row["fact"]) if row["fact"] else None,
            links=self.links_of(row["id"]) if links else [],
        )

    def _row(self, note: Note, embedding: np.ndarray, in_context: np.ndarray | None) -> tuple[Any, ...]:
        return (
            note.id, note.text, json.dumps(note.keywords), json.dumps(note.tags), note.context,
            note.user_id, note.agent_id, note.session_id,
            to_timestamp(note.created_at), to_timestamp(note.updated_at), to_timestamp(note.last_recalled),
            note.recall_count, note.strength, int(note.archived),
            json.dumps(note.metadata), note.fact.model_dump_json() if note.fact else None,
            np.asarray(embedding, dtype=np.float32).tobytes(),
            None if in_context is None else np.asarray(in_context, dtype=np.float32).tobytes(),
            index_token(self.index_key, "id", note.id),
        )


def copied_tables(store: PostgresNoteGraph | NoteGraph) -> dict[str, tuple[str, ...]]:
    """The tables a backup or a migration copies, with their columns (the first orders the copy).
    The consolidation ledger is created in both stores so that it is always there to copy."""
    from ..consolidation.ledger import Ledger  # the ledger's own module owns its schema

    Ledger(store.connection)
    return {**TABLES, "consolidation_ledger": LEDGER_COLUMNS}



def order_of(table: str, columns: tuple[str, ...]) -> str:
    """The order a Postgres table is copied in: insertion order where it matters, else all columns."""
    return "seq" if table in SEQUENCED else ", ".join(columns)


def _column_value(name: str, value: Any) -> Any:
    """A Python value as stored in the notes table."""
    if isinstance(value, datetime):
        return to_timestamp(value)
    if isinstance(value, bool) and name == "archived":
        return int(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if isinstance(value, Fact):
        return value.model_dump_json()
    return value

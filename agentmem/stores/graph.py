"""The note graph: SQLite (WAL) on disk as the source of truth, networkx as the in-memory view.

SQLite holds every note (with its embedding, so the vector index can always be rebuilt),
the links, each note's change history and recall times, and an outbox of vector-index
writes not yet confirmed. A write commits here first; the vector index follows; the
outbox entry is cleared last. Reopening replays whatever the outbox still holds, so a
crash between the two stores never leaves a note in one and not the other.

Forgetting leaves no trace: SQLite runs with `secure_delete` (freed pages are zeroed),
keywords a neighbour absorbed from a note are recorded by origin and taken back with it,
history entries naming it go, the full-text index is merged so its tokens leave, and the
write-ahead log is truncated. A row that cannot be read (written by hand, or by an older
release) is moved to the `quarantine` table and reported, never fatal and never dropped.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import filelock
import networkx as nx
import numpy as np

from ..errors import InvalidInputError, StoreCorruptedError, StoreUnavailableError
from ..notes import Link, Note
from .filters import NoteFilter
from .rows import (
    KEPT_IN_QUARANTINE, NOTE_COLUMNS, SEARCHED_VECTOR, column_value, find_unreadable, from_timestamp, links_in, note_row,
    quarantine_entry, readable_notes, to_timestamp, without_words,
)
from .tokens import index_token

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS notes (
    id TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    keywords TEXT NOT NULL,
    tags TEXT NOT NULL,
    context TEXT NOT NULL,
    user_id TEXT, agent_id TEXT, session_id TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, last_recalled REAL NOT NULL,
    recall_count INTEGER NOT NULL, strength REAL NOT NULL, archived INTEGER NOT NULL,
    metadata TEXT NOT NULL, fact TEXT,
    embedding BLOB NOT NULL,
    context_embedding BLOB,
    index_id TEXT
);
CREATE INDEX IF NOT EXISTS notes_scope ON notes(user_id, agent_id, session_id);
CREATE TABLE IF NOT EXISTS links (
    a TEXT NOT NULL, b TEXT NOT NULL, weight REAL NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (a, b)
);
CREATE INDEX IF NOT EXISTS links_b ON links(b);
CREATE TABLE IF NOT EXISTS history (note_id TEXT NOT NULL, at REAL NOT NULL, change TEXT NOT NULL, before TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS history_note ON history(note_id);
CREATE TABLE IF NOT EXISTS recalls (note_id TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS recalls_note ON recalls(note_id);
CREATE TABLE IF NOT EXISTS outbox (note_id TEXT PRIMARY KEY, op TEXT NOT NULL CHECK (op IN ('upsert', 'delete')));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- keywords a note absorbed from a linked newcomer, so forgetting the newcomer takes them back
CREATE TABLE IF NOT EXISTS absorbed (
    note_id TEXT NOT NULL, keyword TEXT NOT NULL, origin TEXT NOT NULL, PRIMARY KEY (note_id, keyword)
);
CREATE INDEX IF NOT EXISTS absorbed_origin ON absorbed(origin);
CREATE TABLE IF NOT EXISTS quarantine (id TEXT, reason TEXT NOT NULL, at REAL NOT NULL, row TEXT NOT NULL);

-- full-text index over the notes, kept in step by triggers inside the same transactions
CREATE VIRTUAL TABLE IF NOT EXISTS notes_fts USING fts5(
    text, keywords, tags, content='notes', content_rowid='rowid', tokenize='porter unicode61'
);
CREATE TRIGGER IF NOT EXISTS notes_fts_insert AFTER INSERT ON notes BEGIN
    INSERT INTO notes_fts(rowid, text, keywords, tags) VALUES (new.rowid, new.text, new.keywords, new.tags);
END;
CREATE TRIGGER IF NOT EXISTS notes_fts_delete AFTER DELETE ON notes BEGIN
    INSERT INTO notes_fts(notes_fts, rowid, text, keywords, tags) VALUES ('delete', old.rowid, old.text, old.keywords, old.tags);
END;
CREATE TRIGGER IF NOT EXISTS notes_fts_update AFTER UPDATE OF text, keywords, tags ON notes BEGIN
    INSERT INTO notes_fts(notes_fts, rowid, text, keywords, tags) VALUES ('delete', old.rowid, old.text, old.keywords, old.tags);
    INSERT INTO notes_fts(rowid, text, keywords, tags) VALUES (new.rowid, new.text, new.keywords, new.tags);
END;
"""

# BM25 column weights: the note's own words count most; evolved keywords and tags help a little
FTS_WEIGHTS = (1.0, 0.5, 0.5)

SCHEMA_VERSION = "2"  # 1: release 0.1.0; 2: index tokens, absorbed keywords, quarantine


@contextmanager
def sqlite_errors(path: Path) -> Iterator[None]:
    """SQLite's failures as agentmem's typed errors, each saying what to do."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise InvalidInputError(f"the note graph refused the write: {exc}") from exc
    except sqlite3.OperationalError as exc:
        raise StoreUnavailableError(
            f"the note graph at {path} cannot be written or read ({exc}): check the disk has room and the folder"
            " is writable"
        ) from exc
    except sqlite3.DatabaseError as exc:
        raise StoreCorruptedError(
            f"the note graph at {path} is damaged ({exc}). Restore a backup with `agentmem restore-backup BACKUP"
            f" --path {path.parent}` (Memory.restore_backup), which also rebuilds the vector index"
        ) from exc


class NoteGraph:
    """Notes and links on disk, with the link structure mirrored in a networkx graph."""

    def __init__(self, path: Path):
        self.path = path
        self.unreadable: dict[str, str] = {}  # rows that failed to read since the last quarantine, by id
        self._file_lock = filelock.FileLock(str(path.parent / "agentmem.lock"), thread_local=False)
        self.graph = nx.Graph()
        self._data_version = -1
        with sqlite_errors(path):
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=60)
            try:
                self._open()
            except BaseException:
                self._db.close()
                raise
        self.refresh_if_changed()

    def _open(self) -> None:
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout=60000")
        verdict = self._db.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {verdict}")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(SCHEMA)
        self.migrated_from = self.get_meta("schema_version") or "1"
        if self.migrated_from != SCHEMA_VERSION:
            self._migrate()
        self.index_key = bytes.fromhex(self.get_meta("index_key"))
        self.store_id = self.get_meta("store_id")

    def _migrate(self) -> None:
        """Bring a store of an older release (or a new file) to this schema; its notes stay as they were."""
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(notes)")}
        with self.transaction():
            for column, kind in (("context_embedding", "BLOB"), ("index_id", "TEXT")):
                if column not in columns:
                    self._db.execute(f"ALTER TABLE notes ADD COLUMN {column} {kind}")
            if self.get_meta("index_key") is None:
                self.set_meta("index_key", os.urandom(32).hex())
            key = bytes.fromhex(self.get_meta("index_key"))
            ids = [r[0] for r in self._db.execute("SELECT id FROM notes WHERE index_id IS NULL")]
            self._db.executemany(
                "UPDATE notes SET index_id = ? WHERE id = ?", [(index_token(key, "id", i), i) for i in ids]
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS notes_index_id ON notes(index_id)")
            self.set_meta("schema_version", SCHEMA_VERSION)
        self.quarantine_unreadable()

    # ---- lifecycle and cross-process freshness -------------------------------------

    def close(self) -> None:
        self._db.close()

    shared_folders = None  # one machine's processes share the folder itself (see stores/shared_folders.py)

    @contextmanager
    def job_lock(self, wait: bool = True) -> Iterator[bool]:
        """One consolidation job at a time: on one machine the job's own lock file does it."""
        yield True

    def errors(self) -> contextlib.AbstractContextManager[None]:
        """Where SQLite's failures become agentmem's typed errors."""
        return sqlite_errors(self.path)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """The store's write section across processes: a lock file beside the database."""
        try:
            self._file_lock.acquire()
        except OSError as exc:
            raise StoreUnavailableError(f"cannot lock the store at {self.path.parent}: {exc}") from exc
        try:
            yield
        finally:
            self._file_lock.release()

    def claim(self, store_id: str) -> None:
        """Give a new (or migrated) store its identity, which its vector index records too."""
        with self.transaction():
            self.set_meta("store_id", store_id)
        self.store_id = store_id

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM notes").fetchone()[0]

    @property
    def connection(self) -> sqlite3.Connection:
        """The SQLite connection, for tables kept beside the notes in the same transactions (the ledger)."""
        return self._db

    def backup(self, target: Path) -> None:
        """A consistent copy of the whole note graph, taken with SQLite's online backup API."""
        with sqlite_errors(target):
            copy = sqlite3.connect(target)
            try:
                self._db.backup(copy)
            finally:
                copy.close()

    def refresh_if_changed(self) -> bool:
        """Reload the networkx view when another connection committed since we last looked."""
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return False
        self._data_version = version
        graph = nx.Graph()
        graph.add_nodes_from(r[0] for r in self._db.execute("SELECT id FROM notes"))
        graph.add_weighted_edges_from(self._db.execute("SELECT a, b, weight FROM links"))
        self.graph = graph
        return True

    @contextmanager
    def transaction(self, bookkeeping: bool = False) -> Iterator[None]:
        """One atomic write; the networkx view is rolled back with it on failure. `bookkeeping`
        (a write that changes no content, as `PostgresNoteGraph` has it) changes nothing here: in
        WAL mode with synchronous=NORMAL no commit waits for the disk."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")  # our own commits leave data_version as it is
        except BaseException:
            if self._db.in_transaction:  # also when COMMIT itself failed (a full disk)
                self._db.execute("ROLLBACK")
            self._data_version = -1  # forces the view to be rebuilt from disk
            self.refresh_if_changed()
            raise

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # ---- notes --------------------------------------------------------------------

    def insert(self, note: Note, embedding: np.ndarray, in_context: np.ndarray | None = None) -> None:
        """Add a note. `embedding` is its text's own; `in_context`, when given, is the vector searched
        and ranked instead (the text embedded in its conversation's context)."""
        row = note_row(note, embedding, in_context, self.index_key)
        self._db.execute(
            f"INSERT INTO notes ({', '.join(NOTE_COLUMNS)}) VALUES ({', '.join('?' * len(NOTE_COLUMNS))})", row
        )
        self._db.execute("INSERT OR REPLACE INTO outbox(note_id, op) VALUES (?, 'upsert')", (note.id,))
        self.graph.add_node(note.id)

    def replace(
        self, note: Note, embedding: np.ndarray, in_context: np.ndarray | None, change: str, before: Note
    ) -> None:
        """Overwrite a note, keeping its previous version in the history."""
        self._db.execute(
            f"UPDATE notes SET {', '.join(c + ' = ?' for c in NOTE_COLUMNS[1:])} WHERE id = ?",
            (*note_row(note, embedding, in_context, self.index_key)[1:], note.id),
        )
        self.record(note.id, before.updated_at, change, before)
        self._db.execute("INSERT OR REPLACE INTO outbox(note_id, op) VALUES (?, 'upsert')", (note.id,))

    def set_fields(self, note_id: str, **fields: Any) -> None:
        """Update plain columns that the vector index does not mirror."""
        sets = ", ".join(f"{name} = ?" for name in fields)
        self._db.execute(f"UPDATE notes SET {sets} WHERE id = ?", (*map(column_value, fields.values()), note_id))

    def set_archived(self, note_ids: Iterable[str], archived: bool) -> None:
        for note_id in note_ids:
            self._db.execute("UPDATE notes SET archived = ? WHERE id = ?", (int(archived), note_id))
            self._db.execute("INSERT OR REPLACE INTO outbox(note_id, op) VALUES (?, 'upsert')", (note_id,))

    def record(self, note_id: str, at: datetime, change: str, before: Note) -> None:
        self._db.execute(
            "INSERT INTO history(note_id, at, change, before) VALUES (?, ?, ?, ?)",
            (note_id, to_timestamp(at), change, before.model_dump_json(exclude={"links"})),
        )

    def set_fields_many(self, changes: dict[str, dict[str, Any]]) -> None:
        for note_id, fields in changes.items():
            self.set_fields(note_id, **fields)

    def record_recalls(self, note_ids: Iterable[str], at: datetime) -> None:
        self._db.executemany("INSERT INTO recalls(note_id, at) VALUES (?, ?)", [(i, to_timestamp(at)) for i in note_ids])

    def absorb(self, note_id: str, keywords: Iterable[str], origin: str) -> None:
        """Record that `note_id` took these keywords from `origin` (linked newcomer)."""
        self._db.executemany(
            "INSERT OR IGNORE INTO absorbed(note_id, keyword, origin) VALUES (?, ?, ?)",
            [(note_id, keyword, origin) for keyword in keywords],
        )

    def delete(self, note_id: str) -> list[str]:
        """Remove a note and everything about it, including the keywords its neighbours absorbed
        from it and the history entries naming it; the vector index deletion is queued.

        Returns the neighbours whose keywords changed (their index entries are queued too).
        """
        taken: dict[str, set[str]] = {}
        for row in self._db.execute("SELECT note_id, keyword FROM absorbed WHERE origin = ?", (note_id,)):
            taken.setdefault(row[0], set()).add(row[1])
        for neighbour, words in taken.items():
            self._give_back(neighbour, words)
        self._db.execute("DELETE FROM history WHERE change = ?", (f"evolved:{note_id}",))
        self._db.execute("DELETE FROM absorbed WHERE origin = ? OR note_id = ?", (note_id, note_id))
        for table, column in (("notes", "id"), ("history", "note_id"), ("recalls", "note_id")):
            self._db.execute(f"DELETE FROM {table} WHERE {column} = ?", (note_id,))
        self._db.execute("DELETE FROM links WHERE a = ? OR b = ?", (note_id, note_id))
        self._db.execute("INSERT OR REPLACE INTO outbox(note_id, op) VALUES (?, 'delete')", (note_id,))
        if note_id in self.graph:
            self.graph.remove_node(note_id)
        return list(taken)

    def _give_back(self, note_id: str, words: set[str]) -> None:
        """Drop absorbed keywords from a note and from every earlier version in its history."""
        row = self._db.execute("SELECT keywords FROM notes WHERE id = ?", (note_id,)).fetchone()
        if row is not None:
            kept = [w for w in json.loads(row[0]) if w not in words]
            self._db.execute("UPDATE notes SET keywords = ? WHERE id = ?", (json.dumps(kept), note_id))
            self._db.execute("INSERT OR REPLACE INTO outbox(note_id, op) VALUES (?, 'upsert')", (note_id,))
        for rowid, before in self._db.execute("SELECT rowid, before FROM history WHERE note_id = ?", (note_id,)).fetchall():
            self._db.execute("UPDATE history SET before = ? WHERE rowid = ?", (without_words(before, words), rowid))

    def purge_freed(self) -> None:
        """After a forget: merge the full-text index (its segments still hold deleted tokens)
        and truncate the write-ahead log (it holds old page images)."""
        with self.transaction():
            self._db.execute("INSERT INTO notes_fts(notes_fts) VALUES ('optimize')")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def exists(self, note_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM notes WHERE id = ?", (note_id,)).fetchone() is not None

    def get(self, note_id: str) -> Note | None:
        notes = self.get_many([note_id])
        return notes.get(note_id)

    def get_many(self, note_ids: Iterable[str], links: bool = True) -> dict[str, Note]:
        return {note_id: note for note_id, (note, _) in self.load(note_ids, links).items()}

    def load(self, note_ids: Iterable[str], links: bool = True) -> dict[str, tuple[Note, np.ndarray]]:
        """Notes with the vectors they are searched by, by id; unknown ids are left out.
        `links=False` skips filling `Note.links`, for internal reads that do not need them."""
        return {note.id: (note, emb) for note, emb in self._select("id IN ({})", list(note_ids), links)}

    def own_embeddings(self, note_ids: Iterable[str]) -> dict[str, np.ndarray]:
        """The embeddings of the notes' texts alone (what duplicates and links are judged by)."""
        note_ids = list(note_ids)
        rows = self._db.execute(
            f"SELECT id, embedding FROM notes WHERE id IN ({', '.join('?' * len(note_ids))})", note_ids
        )
        return {r[0]: np.frombuffer(r[1], dtype=np.float32) for r in rows}

    def session_vector(self, scope: tuple[str | None, str | None, str], before: str | None = None) -> np.ndarray | None:
        """The searched vector of the latest note remembered in a session (of one user and
        agent), or of the latest one remembered before note `before`; None for none."""
        sql = (
            "SELECT COALESCE(context_embedding, embedding) FROM notes"
            " WHERE user_id IS ? AND agent_id IS ? AND session_id = ?"
        )
        params: list[Any] = list(scope)
        if before is not None:
            sql += " AND rowid < (SELECT rowid FROM notes WHERE id = ?)"
            params.append(before)
        row = self._db.execute(sql + " ORDER BY rowid DESC LIMIT 1", params).fetchone()
        return np.frombuffer(row[0], dtype=np.float32) if row else None

    def all_notes(self) -> Iterator[tuple[Note, np.ndarray]]:
        yield from self._select(None, [])

    def select(self, where: NoteFilter, limit: int | None = None, offset: int = 0) -> list[Note]:
        """Notes a filter admits, oldest first, with their links."""
        clause, params = where.sql()
        rows = self._db.execute(
            f"SELECT id FROM notes WHERE {clause} ORDER BY created_at, rowid LIMIT ? OFFSET ?",
            (*params, -1 if limit is None else limit, offset),
        ).fetchall()
        found = self.get_many([r[0] for r in rows])
        return [found[r[0]] for r in rows if r[0] in found]

    def ids_of(self, tokens: Iterable[str]) -> dict[str, str]:
        """Note ids by their vector-index tokens (unknown tokens are left out)."""
        tokens = list(tokens)
        if not tokens:
            return {}
        rows = self._db.execute(
            f"SELECT index_id, id FROM notes WHERE index_id IN ({', '.join('?' * len(tokens))})", tokens
        )
        return {r[0]: r[1] for r in rows}

    def recall_times(self, note_id: str) -> list[datetime]:
        rows = self._db.execute("SELECT at FROM recalls WHERE note_id = ? ORDER BY at", (note_id,))
        return [from_timestamp(r[0]) for r in rows]

    def history(self, note_id: str) -> list[tuple[datetime, str, Note]]:
        rows = self._db.execute("SELECT at, change, before FROM history WHERE note_id = ? ORDER BY rowid", (note_id,))
        return [(from_timestamp(r[0]), r[1], Note.model_validate_json(r[2])) for r in rows]

    def counts(self) -> dict[str, Any]:
        total, archived = self._db.execute("SELECT COUNT(*), COALESCE(SUM(archived), 0) FROM notes").fetchone()
        users = dict(self._db.execute("SELECT COALESCE(user_id, ''), COUNT(*) FROM notes GROUP BY user_id").fetchall())
        pending = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        links = self._db.execute("SELECT COUNT(*) FROM links").fetchone()[0]
        quarantined = self._db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
        return {"notes": total, "archived": archived, "users": users, "pending_sync": pending, "links": links,
                "quarantined": quarantined}

    def lexical_search(self, terms: list[str], n: int, where: NoteFilter) -> list[tuple[str, float]]:
        """The n best BM25 matches of any of `terms` (porter-stemmed) among the notes `where`
        admits, as (id, score > 0)."""
        if not terms or n < 1:
            return []
        match = " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)
        clause, params = where.sql("n")
        rows = self._db.execute(
            f"SELECT n.id, bm25(notes_fts, {', '.join(map(str, FTS_WEIGHTS))}) AS rank"
            " FROM notes_fts JOIN notes n ON n.rowid = notes_fts.rowid"
            f" WHERE notes_fts MATCH ? AND {clause} ORDER BY rank LIMIT ?",
            (match, *params, n),
        )
        return [(note_id, -rank) for note_id, rank in rows]

    def embeddings_where(self, where: NoteFilter, limit: int) -> dict[str, np.ndarray] | None:
        """The searched vectors of every note `where` admits, or None when more than `limit` do."""
        clause, params = where.sql()
        rows = self._db.execute(
            f"SELECT id, COALESCE(context_embedding, embedding) FROM notes WHERE {clause} LIMIT ?", (*params, limit + 1)
        ).fetchall()
        if len(rows) > limit:
            return None
        return {r[0]: np.frombuffer(r[1], dtype=np.float32) for r in rows}

    # ---- links --------------------------------------------------------------------

    def link(self, a: str, b: str, weight: float, at: datetime) -> None:
        first, second = sorted((a, b))
        self._db.execute(
            "INSERT INTO links(a, b, weight, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(a, b) DO UPDATE SET weight = excluded.weight",
            (first, second, weight, to_timestamp(at)),
        )
        self.graph.add_edge(a, b, weight=weight)

    def links_of(self, note_id: str) -> list[Link]:
        return links_in(self.graph, note_id)

    # ---- the outbox of vector-index writes ----------------------------------------

    def has_pending(self) -> bool:
        return self._db.execute("SELECT 1 FROM outbox LIMIT 1").fetchone() is not None

    def pending(self) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self._db.execute("SELECT note_id, op FROM outbox")]

    def clear_pending(self, note_ids: Iterable[str]) -> None:
        self._db.executemany("DELETE FROM outbox WHERE note_id = ?", [(i,) for i in note_ids])

    def all_ids(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT id FROM notes")}

    def all_tokens(self) -> dict[str, str]:
        """Every note id by its vector-index token."""
        return {r[0]: r[1] for r in self._db.execute("SELECT index_id, id FROM notes")}

    # ---- (de)serialisation ----------------------------------------------------------

    def _select(
        self, where: str | None, params: list[Any], links: bool = True
    ) -> Iterator[tuple[Note, np.ndarray]]:
        sql = f"SELECT {', '.join(KEPT_IN_QUARANTINE)}, {SEARCHED_VECTOR} FROM notes"
        if where is not None:
            if not params:
                return
            sql += " WHERE " + where.format(", ".join("?" * len(params)))
        found = self._db.execute(sql, params).fetchall()
        yield from readable_notes(found, self.graph if links else None, self.unreadable)

    def quarantine_unreadable(self) -> list[str]:
        """Move every note row that cannot be read into `quarantine` (with why), out of the notes.

        Checks all rows (at a migration) and any that a read found broken since; returns their ids.
        """
        found = self._db.execute(f"SELECT {', '.join(NOTE_COLUMNS)} FROM notes").fetchall()
        return self.quarantine(find_unreadable(found, self.unreadable))

    def quarantine(self, reasons: dict[str, str]) -> list[str]:
        if not reasons:
            return []
        now = datetime.now(timezone.utc).timestamp()
        with self.transaction():
            for note_id, reason in list(reasons.items()):
                row = self._db.execute(
                    f"SELECT {', '.join(KEPT_IN_QUARANTINE)} FROM notes WHERE id = ?", (note_id,)
                ).fetchone()
                if row is None:
                    continue
                self._db.execute(
                    "INSERT INTO quarantine(id, reason, at, row) VALUES (?, ?, ?, ?)",
                    (note_id, reason, now, quarantine_entry(row)),
                )
                self.delete(note_id)
        log.warning("quarantined %d unreadable note(s): %s", len(reasons), ", ".join(reasons))
        moved = list(reasons)
        self.unreadable.clear()
        return moved

    def quarantined(self) -> list[dict[str, Any]]:
        found = self._db.execute("SELECT id, reason, at, row FROM quarantine ORDER BY rowid")
        return [{"id": r[0], "reason": r[1], "at": from_timestamp(r[2]), "row": json.loads(r[3])} for r in found]

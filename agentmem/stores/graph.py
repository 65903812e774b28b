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
release) is moved to the `quarantine` table and reported, never fatal, and kept until it is forgotten.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import filelock
import networkx as nx

from ..errors import InvalidInputError, StoreCorruptedError, StoreUnavailableError
from . import store
from .filters import NoteFilter
from .rows import OutboxClaim
from .sql import SqlNoteStore
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
LEXICAL_OVERFETCH = 2  # full-text matches ranked per wanted one before the scope is checked
FTS_STRUCTURE_LIMIT = 2048  # bytes of FTS5's structure record past which a forget rebuilds the index

SCHEMA_VERSION = "2"  # 1: release 0.1.0; 2: index tokens, absorbed keywords, quarantine
LOCK_FILE = "agentmem.lock"  # beside the graph: the processes sharing the folder take turns on it


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
            f"the note graph at {path} is damaged ({exc}). Restore a backup into a new folder with `agentmem"
            f" --path NEW_FOLDER restore-backup BACKUP` (Memory.restore_backup), which also rebuilds the vector"
            f" index; to keep the name {path.parent}, move the damaged folder aside first"
        ) from exc


class NoteGraph(SqlNoteStore):
    """Notes and links on disk, with the link structure mirrored in a networkx graph."""

    def __init__(self, path: Path):
        self.path = path
        self.unreadable: dict[str, str] = {}  # rows that failed to read since the last quarantine, by id
        self._file_lock = filelock.FileLock(str(path.parent / LOCK_FILE), thread_local=False)
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
        if self._full_text_structure_bytes() > FTS_STRUCTURE_LIMIT:
            self._drop_full_text()
        self._db.executescript(SCHEMA)
        if self.get_meta("full_text_dropped") is not None:
            with self.transaction():
                self._db.execute("INSERT INTO notes_fts(notes_fts) VALUES ('rebuild')")
                self._db.execute("DELETE FROM meta WHERE key = 'full_text_dropped'")
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
            self._file_lock.acquire(timeout=store.WRITE_LOCK_WAIT_S)
        except filelock.Timeout:
            raise store.write_lock_timeout(self.path.parent) from None
        except OSError as exc:
            raise StoreUnavailableError(f"cannot lock the store at {self.path.parent}: {exc}") from exc
        try:
            yield
        finally:
            self._file_lock.release()

    claims_across_processes = False  # no row locks: index writes stay inside the file lock
    concurrent_reads = False  # one connection, which the process's threads take turns on

    @contextmanager
    def outbox_claim(self, note_ids: list[str] | None) -> Iterator[OutboxClaim]:
        """The outbox rows of these notes (None: all), cleared after a `done` index write. Every
        index write here runs inside the file lock, so no other writer holds a row meanwhile."""
        wanted = None if note_ids is None else set(note_ids)
        claim = OutboxClaim([row for row in self.pending() if wanted is None or row[0] in wanted])
        yield claim
        if claim.done and claim.rows:
            try:  # if lost, the index writes are replayed: they are idempotent
                with self.transaction(bookkeeping=True):
                    self.clear_pending([note_id for note_id, _ in claim.rows])
            except sqlite3.OperationalError as exc:
                log.warning("%d index change(s) stay in the outbox: %s", len(claim.rows), exc)

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

    def search_mark(self, since_view: bool = False) -> tuple[int, int] | None:
        """Other connections' commits move `data_version`, this connection's writes `total_changes`;
        None while the outbox holds index writes to make (the index lacks notes the mark would not
        name), and, `since_view`, while other connections' commits are newer than the view."""
        if self._run("SELECT 1 FROM outbox LIMIT 1"):
            return None
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        return None if since_view and version != self._data_version else (version, self._db.total_changes)

    def index_written(self, note_ids: Iterable[str]) -> None:
        """`NoteStore.index_written`: nothing more to commit, the outbox rows the write cleared were a commit,
        which moves the other connections' `data_version` (and a search made ahead since their view searches
        again, `changed_since`)."""

    def changed_since(self, mark: Hashable) -> set[str] | None:
        """Nothing when nothing was written since the mark; else None: SQLite keeps no log of what."""
        return set() if self.search_mark() == mark else None

    @contextmanager
    def transaction(self, bookkeeping: bool = False, meanwhile: Callable[[], None] | None = None) -> Iterator[None]:
        """One atomic write; the networkx view is rolled back with it on failure. `bookkeeping`
        (a write that changes no content, as `PostgresNoteGraph` has it) changes nothing here: in
        WAL mode with synchronous=NORMAL no commit waits for the disk. `meanwhile` runs just before
        the COMMIT, inside the transaction (an in-process commit has no reply to wait for)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            if meanwhile is not None:
                meanwhile()
            self._db.execute("COMMIT")  # our own commits leave data_version as it is
        except BaseException:
            if self._db.in_transaction:  # also when COMMIT itself failed (a full disk)
                self._db.execute("ROLLBACK")
            self._data_version = -1  # forces the view to be rebuilt from disk
            self.refresh_if_changed()
            raise

    # ---- statements: SqlNoteStore's are run here ------------------------------------

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self._db.execute(sql, params).fetchall()

    def _write(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._db.execute(sql, params)

    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    def _where(self, where: NoteFilter, table: str = "notes") -> tuple[str, list[Any]]:
        return where.sql(table)

    # ---- what only SQLite does --------------------------------------------------------

    def merge_full_text(self) -> None:
        """FTS5's segments keep a deleted note's tokens until they are merged; in the forget's
        transaction, so that a merge that fails (a full disk) fails the forget, not after the note is gone.

        Each 'optimize' leaves one more level in the index's structure record, about 4 bytes (SQLite
        3.40's FTS5), and at about 4 KB, after some 1,000 forgets, every later delete from the index
        failed as "database disk image is malformed". Past `FTS_STRUCTURE_LIMIT` the index is rebuilt
        from the notes instead (0.3 s at 100k notes, about once in 500 forgets), which merges too."""
        command = "rebuild" if self._full_text_structure_bytes() > FTS_STRUCTURE_LIMIT else "optimize"
        self._db.execute(f"INSERT INTO notes_fts(notes_fts) VALUES ('{command}')")

    def _full_text_structure_bytes(self) -> int:
        """The size of FTS5's structure record (its row 10 of the `_data` shadow table, a fixed
        part of FTS5's file format); 0 before the index exists."""
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'notes_fts_data'").fetchone() is None:
            return 0
        row = self._db.execute("SELECT length(block) FROM notes_fts_data WHERE id = 10").fetchone()
        return row[0] if row else 0

    def _drop_full_text(self) -> None:
        """Drop the full-text index of a store that forgets broke (`merge_full_text`), which SQLite can no
        longer even open ("vtable constructor failed"): its schema row goes by hand, as SQLite documents
        for a virtual table it cannot load, and its tables are dropped. `_open` makes it again and fills
        it from the notes (a mark in `meta` says so, should the process stop in between)."""
        log.warning("the full-text index of %s is damaged by many forgets; it is rebuilt from the notes", self.path)
        # on a connection of its own, closed after: one that edited its schema by hand keeps a stale copy of it
        with self._file_lock, contextlib.closing(sqlite3.connect(self.path, isolation_level=None, timeout=60)) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("PRAGMA writable_schema = ON")
                db.execute("DELETE FROM sqlite_master WHERE type = 'table' AND name = 'notes_fts'")
                db.execute("PRAGMA writable_schema = OFF")
                for shadow in ("data", "idx", "docsize", "config"):
                    db.execute(f"DROP TABLE IF EXISTS notes_fts_{shadow}")
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('full_text_dropped', '1')")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def purge_freed(self) -> None:
        """After a forget: truncate the write-ahead log, which holds old page images. A checkpoint
        that cannot finish now (another process reads the log) leaves them to a later one; it is
        logged, and the forget, already committed, stands."""
        try:
            blocked = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as exc:
            blocked, reason = True, exc
        else:
            reason = "another connection still reads it"
        if blocked:
            log.warning("the write-ahead log keeps old pages until a later checkpoint: %s", reason)

    def lexical_search(self, terms: list[str], n: int, where: NoteFilter) -> list[tuple[str, float]]:
        """The n best BM25 matches of any of `terms` (porter-stemmed) among the notes `where`
        admits, as (id, score > 0).

        Ranking the full-text matches alone and keeping the admitted ones costs a third of
        ranking them joined to the notes (which reads each match's row: 15 against 45 ms for
        4k matches at 100k notes), so that goes first, over-fetched; only when it leaves fewer
        than n (a scope holding a small share of the notes) does the joined query run."""
        if not terms or n < 1:
            return []
        match = " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)
        weights = ", ".join(map(str, FTS_WEIGHTS))
        clause, params = where.sql("n")
        fetch = n * LEXICAL_OVERFETCH
        ranked = self._db.execute(
            f"SELECT rowid, bm25(notes_fts, {weights}) AS rank FROM notes_fts WHERE notes_fts MATCH ?"
            " ORDER BY rank LIMIT ?",
            (match, fetch),
        ).fetchall()
        rowids = [r[0] for r in ranked]
        admitted = dict(self._db.execute(  # by rowid: the planner would rather scan the scope's index
            f"SELECT n.rowid, n.id FROM notes n NOT INDEXED WHERE n.rowid IN ({', '.join('?' * len(rowids))}) AND {clause}",
            (*rowids, *params),
        ).fetchall())
        if len(admitted) >= n or len(ranked) < fetch:
            return [(admitted[rowid], -rank) for rowid, rank in ranked if rowid in admitted][:n]
        rows = self._db.execute(
            f"SELECT n.id, bm25(notes_fts, {weights}) AS rank"
            " FROM notes_fts JOIN notes n ON n.rowid = notes_fts.rowid"
            f" WHERE notes_fts MATCH ? AND {clause} ORDER BY rank LIMIT ?",
            (match, *params, n),
        )
        return [(note_id, -rank) for note_id, rank in rows]

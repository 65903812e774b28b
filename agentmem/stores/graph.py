"""The note graph: SQLite (WAL) on disk as the source of truth, networkx as the in-memory view.

SQLite holds every note (with its embedding, so the vector index can always be rebuilt),
the links, each note's change history and recall times, and an outbox of vector-index
writes not yet confirmed. A write commits here first; the vector index follows; the
outbox entry is cleared last. Reopening replays whatever the outbox still holds, so a
crash between the two stores never leaves a note in one and not the other.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from ..notes import Fact, Link, Note

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
    context_embedding BLOB
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

NOTE_COLUMNS = (
    "id", "text", "keywords", "tags", "context", "user_id", "agent_id", "session_id",
    "created_at", "updated_at", "last_recalled", "recall_count", "strength", "archived",
    "metadata", "fact", "embedding", "context_embedding",
)


def to_timestamp(at: datetime) -> float:
    return at.timestamp()


def from_timestamp(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def _column_value(value: Any) -> Any:
    """A Python value as stored in the notes table."""
    if isinstance(value, datetime):
        return to_timestamp(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if isinstance(value, Fact):
        return value.model_dump_json()
    return value


class NoteGraph:
    """Notes and links on disk, with the link structure mirrored in a networkx graph."""

    def __init__(self, path: Path):
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=60)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=60000")
        self._db.executescript(SCHEMA)
        if "context_embedding" not in {r[1] for r in self._db.execute("PRAGMA table_info(notes)")}:
            self._db.execute("ALTER TABLE notes ADD COLUMN context_embedding BLOB")  # stores made before it existed
        self.graph = nx.Graph()
        self._data_version = -1
        self.refresh_if_changed()

    # ---- lifecycle and cross-process freshness -------------------------------------

    def close(self) -> None:
        self._db.close()

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
    def transaction(self) -> Iterator[None]:
        """One atomic write; the networkx view is rolled back with it on failure."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            self._data_version = -1  # forces the view to be rebuilt from disk
            self.refresh_if_changed()
            raise
        self._db.execute("COMMIT")  # our own commits leave data_version as it is

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # ---- notes --------------------------------------------------------------------

    def insert(self, note: Note, embedding: np.ndarray, in_context: np.ndarray | None = None) -> None:
        """Add a note. `embedding` is its text's own; `in_context`, when given, is the vector searched
        and ranked instead (the text embedded in its conversation's context)."""
        row = self._row(note, embedding, in_context)
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
            (*self._row(note, embedding, in_context)[1:], note.id),
        )
        self.record(note.id, before.updated_at, change, before)
        self._db.execute("INSERT OR REPLACE INTO outbox(note_id, op) VALUES (?, 'upsert')", (note.id,))

    def set_fields(self, note_id: str, **fields: Any) -> None:
        """Update plain columns that the vector index does not mirror."""
        sets = ", ".join(f"{name} = ?" for name in fields)
        self._db.execute(f"UPDATE notes SET {sets} WHERE id = ?", (*map(_column_value, fields.values()), note_id))

    def set_archived(self, note_ids: Iterable[str], archived: bool) -> None:
        for note_id in note_ids:
            self._db.execute("UPDATE notes SET archived = ? WHERE id = ?", (int(archived), note_id))
            self._db.execute("INSERT OR REPLACE INTO outbox(note_id, op) VALUES (?, 'upsert')", (note_id,))

    def record(self, note_id: str, at: datetime, change: str, before: Note) -> None:
        self._db.execute(
            "INSERT INTO history(note_id, at, change, before) VALUES (?, ?, ?, ?)",
            (note_id, to_timestamp(at), change, before.model_dump_json(exclude={"links"})),
        )

    def record_recalls(self, note_ids: Iterable[str], at: datetime) -> None:
        self._db.executemany("INSERT INTO recalls(note_id, at) VALUES (?, ?)", [(i, to_timestamp(at)) for i in note_ids])

    def delete(self, note_id: str) -> None:
        """Remove a note and everything about it; the vector index deletion is queued."""
        for table, column in (("notes", "id"), ("history", "note_id"), ("recalls", "note_id")):
            self._db.execute(f"DELETE FROM {table} WHERE {column} = ?", (note_id,))
        self._db.execute("DELETE FROM links WHERE a = ? OR b = ?", (note_id, note_id))
        self._db.execute("INSERT OR REPLACE INTO outbox(note_id, op) VALUES (?, 'delete')", (note_id,))
        if note_id in self.graph:
            self.graph.remove_node(note_id)

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
        return {"notes": total, "archived": archived, "users": users, "pending_sync": pending, "links": links}

    def lexical_search(
        self, terms: list[str], n: int, scope: dict[str, str], include_archived: bool, filters: dict[str, Any]
    ) -> list[tuple[str, float]]:
        """The n best BM25 matches of any of `terms` (porter-stemmed), as (id, score > 0)."""
        if not terms or n < 1:
            return []
        match = " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)
        where = ["notes_fts MATCH ?"]
        params: list[Any] = [match]
        for name, value in scope.items():
            where.append(f"n.{name} = ?")
            params.append(value)
        if not include_archived:
            where.append("n.archived = 0")
        for key, value in filters.items():
            where.append("json_extract(n.metadata, ?) = ?")
            params += ["$." + json.dumps(key), value]
        rows = self._db.execute(
            f"SELECT n.id, bm25(notes_fts, {', '.join(map(str, FTS_WEIGHTS))}) AS rank"
            " FROM notes_fts JOIN notes n ON n.rowid = notes_fts.rowid"
            f" WHERE {' AND '.join(where)} ORDER BY rank LIMIT ?",
            (*params, n),
        )
        return [(note_id, -rank) for note_id, rank in rows]

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
        if note_id not in self.graph:
            return []
        edges = sorted(self.graph[note_id].items(), key=lambda item: -item[1]["weight"])
        # rows come from our own tables: skip re-validating every link
        return [Link.model_construct(note_id=n, weight=e["weight"]) for n, e in edges]

    # ---- the outbox of vector-index writes ----------------------------------------

    def pending(self) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self._db.execute("SELECT note_id, op FROM outbox")]

    def clear_pending(self, note_ids: Iterable[str]) -> None:
        self._db.executemany("DELETE FROM outbox WHERE note_id = ?", [(i,) for i in note_ids])

    def all_ids(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT id FROM notes")}

    # ---- (de)serialisation ----------------------------------------------------------

    def _select(
        self, where: str | None, params: list[Any], links: bool = True
    ) -> Iterator[tuple[Note, np.ndarray]]:
        sql = f"SELECT {', '.join(NOTE_COLUMNS)} FROM notes"
        if where is not None:
            if not params:
                return
            sql += " WHERE " + where.format(", ".join("?" * len(params)))
        for row in self._db.execute(sql, params).fetchall():
            yield self._note(row, links), np.frombuffer(row["context_embedding"] or row["embedding"], dtype=np.float32)

    def _note(self, row: sqlite3.Row, links: bool) -> Note:
        return Note(
            id=row["id"],
            text=row["text"],
            keywords=json.loads(row["keywords"]),
            tags=json.loads(row["tags"]),
            context=row["context"],
            user_id=row["user_id"],
            agent_id=row["agent_id"],
            session_id=row["session_id"],
            created_at=from_timestamp(row["created_at"]),
            updated_at=from_timestamp(row["updated_at"]),
            last_recalled=from_timestamp(row["last_recalled"]),
            recall_count=row["recall_count"],
            strength=row["strength"],
            archived=bool(row["archived"]),
            metadata=json.loads(row["metadata"]),
            fact=Fact.model_validate_json(row["fact"]) if row["fact"] else None,
            links=self.links_of(row["id"]) if links else [],
        )

    @staticmethod
    def _row(note: Note, embedding: np.ndarray, in_context: np.ndarray | None) -> tuple[Any, ...]:
        return (
            note.id, note.text, json.dumps(note.keywords), json.dumps(note.tags), note.context,
            note.user_id, note.agent_id, note.session_id,
            to_timestamp(note.created_at), to_timestamp(note.updated_at), to_timestamp(note.last_recalled),
            note.recall_count, note.strength, int(note.archived),
            json.dumps(note.metadata), note.fact.model_dump_json() if note.fact else None,
            np.asarray(embedding, dtype=np.float32).tobytes(),
            None if in_context is None else np.asarray(in_context, dtype=np.float32).tobytes(),
        )

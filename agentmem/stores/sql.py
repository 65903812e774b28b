"""The note store's statements, written once for both SQL stores.

`SqlNoteStore` holds every read and write that SQLite and PostgreSQL run alike, in `?`
placeholders; a store subclass gives its connection (`_run` reads, `_write` and `_many`
write) and the few words its dialect spells differently: the column that keeps insertion
order, null-safe equality, "no limit", and its form of a `NoteFilter`. What remains in
graph.py and postgres.py is the schema, connections, locking, transactions, full text and
what is only theirs.
"""
from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import networkx as nx
import numpy as np

from ..errors import InvalidInputError
from ..notes import STORED, Link, Note
from .filters import NoteFilter
from .rows import (
    KEPT_IN_QUARANTINE, NOTE_COLUMNS, IndexEntry, Neighbours, SEARCHED_VECTOR, SEARCHED_VECTOR_OF, StoredNote,
    column_value, find_unreadable, from_timestamp, json_text, links_in, note_row, quarantine_entry, readable_notes,
    readable, set_aside, to_timestamp, vector_of, without_words,
)

log = logging.getLogger(__name__)

IDS_PER_READ = 10_000  # ids named in one statement (`known_ids`)
OUTBOX = "INSERT INTO outbox(note_id, op) VALUES (?, ?) ON CONFLICT (note_id) DO UPDATE SET op = excluded.op"


def marks(values: Sequence[Any]) -> str:
    """`?, ?, ...`, one per value."""
    return ", ".join("?" * len(values))


def equals(column: str, value: Any) -> tuple[str, list[Any]]:
    """Null-safe equality that an index serves: PostgreSQL's `IS NOT DISTINCT FROM` is not
    indexable (a session's latest note: 1.2 ms against 0.08 at 10k notes)."""
    return (f"{column} IS NULL", []) if value is None else (f"{column} = ?", [value])


class SqlNoteStore:
    """Notes, links, history, recalls and the outbox in SQL tables, with the links mirrored in `graph`."""

    ORDER = "rowid"  # the column that keeps insertion order
    # A session's latest note first, and only notes before one (`_latest_in_session`), as the scope
    # index (`notes_scope`, whose entries end with the rowid) gives them
    LATEST_FIRST = "rowid DESC"
    BEFORE_NOTE = "rowid < (SELECT rowid FROM notes WHERE id = ?)"
    NO_LIMIT: int | None = -1
    graph: nx.Graph
    unreadable: dict[str, str]
    index_key: bytes
    store_id: str | None
    _dimension: int | None = None

    @property
    def dimension(self) -> int | None:
        """The embeddings' length, once an embedder has been checked against the store (`embedding_dim`): a
        stored vector of another length is unreadable (`rows.vector_of`)."""
        if self._dimension is None:
            stored = self.get_meta("embedding_dim")
            self._dimension = int(stored) if stored is not None and stored.isdigit() else None
        return self._dimension

    # ---- what a store gives ------------------------------------------------------------

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows a read returns."""
        raise NotImplementedError

    def _write(self, sql: str, params: Sequence[Any] = ()) -> None:
        raise NotImplementedError

    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        raise NotImplementedError

    def _where(self, where: NoteFilter, table: str = "notes") -> tuple[str, list[Any]]:
        """The filter as this dialect's WHERE clause and parameters."""
        raise NotImplementedError

    def _among(self, column: str, values: list[Any]) -> tuple[str, list[Any]]:
        """`column` equal to one of `values` (none: nothing), as this dialect's condition and
        parameters: SQLite's `IN (?, ...)`; PostgreSQL overrides it with one array parameter."""
        return f"{column} IN ({marks(values) or 'NULL'})", values

    def _columns(self, columns: Sequence[str], table: str = "") -> str:
        """A select list of note columns (of `table`, as "n."), each read as the text or number `rows` expects."""
        return ", ".join(table + column for column in columns)

    def _read_notes(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Rows of `KEPT_IN_QUARANTINE` and `SEARCHED_VECTOR` (a store may read them faster)."""
        return self._run(sql, params)

    def transaction(self, bookkeeping: bool = False, meanwhile: Callable[[], None] | None = None) -> Any:
        raise NotImplementedError

    # ---- identity and metadata -----------------------------------------------------------

    def claim(self, store_id: str) -> None:
        """Give a new (or migrated) store its identity, which its vector index records too. A store
        that another process claimed since this one read its identity keeps the one it got first
        (two replicas opening a new store at once pair it with one index)."""
        with self.transaction():
            self._write("INSERT INTO meta(key, value) VALUES ('store_id', ?) ON CONFLICT (key) DO NOTHING", (store_id,))
        self.store_id = self.get_meta("store_id")

    def count(self) -> int:
        return self._run("SELECT COUNT(*) FROM notes")[0][0]

    def get_meta(self, key: str) -> str | None:
        rows = self._run("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._write(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def index_rebuilt(self) -> None:
        """`NoteStore.index_rebuilt`: a counted commit (on SQLite, one that moves the other connections'
        `data_version`)."""
        with self.transaction():
            self.stamp_index_rebuilt()

    def stamp_index_rebuilt(self) -> None:
        """Record when the index was last rebuilt (in a transaction): what makes `index_rebuilt`'s commit a write."""
        self.set_meta("index_rebuilt_at", datetime.now(timezone.utc).isoformat())

    def counts(self) -> dict[str, Any]:
        total, archived = self._run("SELECT COUNT(*), COALESCE(SUM(archived), 0) FROM notes")[0]
        users = {r[0]: r[1] for r in self._run("SELECT COALESCE(user_id, ''), COUNT(*) FROM notes GROUP BY user_id")}
        return {
            "notes": total, "archived": int(archived), "users": users,
            "pending_sync": self._run("SELECT COUNT(*) FROM outbox")[0][0],
            "links": self._run("SELECT COUNT(*) FROM links")[0][0],
            "quarantined": self._run("SELECT COUNT(*) FROM quarantine")[0][0],
        }

    # ---- writing notes ---------------------------------------------------------------------

    def insert(self, note: Note, embedding: np.ndarray, in_context: np.ndarray | None = None) -> None:
        """Add a note. `embedding` is its text's own; `in_context`, when given, is the vector searched
        and ranked instead (the text embedded in its conversation's context)."""
        self.insert_many([(note, embedding, in_context)])

    def insert_many(self, notes: Sequence[tuple[Note, np.ndarray, np.ndarray | None]]) -> None:
        """`insert` for many notes, one statement per table."""
        self._many(
            f"INSERT INTO notes ({', '.join(NOTE_COLUMNS)}) VALUES ({marks(NOTE_COLUMNS)})",
            [note_row(note, embedding, in_context, self.index_key) for note, embedding, in_context in notes],
        )
        self._many(OUTBOX, [(note.id, "upsert") for note, _, _ in notes])
        self.graph.add_nodes_from(note.id for note, _, _ in notes)

    def replace(
        self, note: Note, embedding: np.ndarray, in_context: np.ndarray | None, change: str, before: Note
    ) -> None:
        """Overwrite a note, keeping its previous version in the history."""
        self._write(
            f"UPDATE notes SET {', '.join(c + ' = ?' for c in NOTE_COLUMNS[1:])} WHERE id = ?",
            (*note_row(note, embedding, in_context, self.index_key)[1:], note.id),
        )
        self.record(note.id, note.updated_at, change, before)  # when it changed, as an evolution's entry is
        self._write(OUTBOX, (note.id, "upsert"))

    def set_fields(self, note_id: str, **fields: Any) -> None:
        """Update plain columns that the vector index does not mirror."""
        self.set_fields_many({note_id: fields})

    def set_fields_many(self, changes: dict[str, dict[str, Any]]) -> None:
        """`set_fields` for many notes, one batch per set of field names."""
        by_names: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for note_id, fields in changes.items():
            by_names.setdefault(tuple(fields), []).append((*map(column_value, fields.values()), note_id))
        for names, rows in by_names.items():
            unknown = set(names) - set(NOTE_COLUMNS)
            if unknown:
                raise InvalidInputError(f"no such note field(s): {', '.join(sorted(unknown))}")
            self._many(f"UPDATE notes SET {', '.join(f'{name} = ?' for name in names)} WHERE id = ?", rows)

    def set_archived(self, note_ids: Iterable[str], archived: bool) -> None:
        for note_id in note_ids:
            self._write("UPDATE notes SET archived = ? WHERE id = ?", (int(archived), note_id))
            self._write(OUTBOX, (note_id, "upsert"))

    def record(self, note_id: str, at: datetime, change: str, before: Note) -> None:
        self.record_many([(note_id, at, change, before)])

    def record_many(self, entries: Sequence[tuple[str, datetime, str, Note]]) -> None:
        """History entries (note, when, what changed, the note before the change), in order."""
        self._many(
            "INSERT INTO history(note_id, at, change, before) VALUES (?, ?, ?, ?)",
            [(note_id, to_timestamp(at), change, before.model_dump_json(exclude={"links"}))
             for note_id, at, change, before in entries],
        )

    def record_recalls(self, note_ids: Iterable[str], at: datetime) -> None:
        self._many("INSERT INTO recalls(note_id, at) VALUES (?, ?)", [(i, to_timestamp(at)) for i in note_ids])

    def absorb_many(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """Record that notes took keywords from a linked newcomer, as (note, keyword, origin) rows; a
        keyword a note already absorbed keeps its first origin."""
        self._many("INSERT INTO absorbed(note_id, keyword, origin) VALUES (?, ?, ?) ON CONFLICT DO NOTHING", rows)

    def disown(self, note_id: str, keywords: Iterable[str]) -> None:
        """The note holds these keywords as its own now (they come from its new text): forgetting the note it
        first absorbed them from no longer takes them back."""
        self._many("DELETE FROM absorbed WHERE note_id = ? AND keyword = ?", [(note_id, word) for word in keywords])

    def absorbed_keywords(self) -> dict[str, dict[str, str]]:
        """Per note, the keywords it absorbed and the note each came from."""
        found: dict[str, dict[str, str]] = {}
        for note_id, keyword, origin in self._run("SELECT note_id, keyword, origin FROM absorbed"):
            found.setdefault(note_id, {})[keyword] = origin
        return found

    def link(self, a: str, b: str, weight: float, at: datetime) -> None:
        self.link_many([(a, b, weight, at)])

    def link_many(self, links: Sequence[tuple[str, str, float, datetime]]) -> None:
        """Links (a, b, weight, since when); a link made again takes the new weight."""
        self._many(
            "INSERT INTO links(a, b, weight, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (a, b) DO UPDATE SET weight = excluded.weight",
            [(*sorted((a, b)), weight, to_timestamp(at)) for a, b, weight, at in links],
        )
        self.graph.add_weighted_edges_from((a, b, weight) for a, b, weight, _ in links)

    def delete(self, note_id: str) -> list[str]:
        """Remove a note and everything about it, including the keywords its neighbours absorbed
        from it and the history entries naming it; the vector index deletion is queued.

        Returns the neighbours whose keywords changed.
        """
        taken: dict[str, set[str]] = {}
        for row in self._run("SELECT note_id, keyword FROM absorbed WHERE origin = ?", (note_id,)):
            taken.setdefault(row[0], set()).add(row[1])
        for neighbour, words in taken.items():
            self._give_back(neighbour, words)
        self._write("DELETE FROM history WHERE change = ?", (f"evolved:{note_id}",))
        self._write("DELETE FROM absorbed WHERE origin = ? OR note_id = ?", (note_id, note_id))
        for table, column in (("notes", "id"), ("history", "note_id"), ("recalls", "note_id")):
            self._write(f"DELETE FROM {table} WHERE {column} = ?", (note_id,))
        self._write("DELETE FROM links WHERE a = ? OR b = ?", (note_id, note_id))
        self._write(OUTBOX, (note_id, "delete"))
        if note_id in self.graph:
            self.graph.remove_node(note_id)
        return list(taken)

    def _give_back(self, note_id: str, words: set[str]) -> None:
        """Drop absorbed keywords from a note and from every earlier version in its history."""
        rows = self._run("SELECT keywords FROM notes WHERE id = ?", (note_id,))
        if rows:
            kept = [w for w in json.loads(rows[0][0]) if w not in words]  # the index holds no keywords
            self._write("UPDATE notes SET keywords = ? WHERE id = ?", (json_text(kept), note_id))
        for order, before in self._run(f"SELECT {self.ORDER}, before FROM history WHERE note_id = ?", (note_id,)):
            self._write(f"UPDATE history SET before = ? WHERE {self.ORDER} = ?", (without_words(before, words), order))

    # ---- reading notes ---------------------------------------------------------------------

    def exists(self, note_id: str) -> bool:
        return bool(self._run("SELECT 1 FROM notes WHERE id = ?", (note_id,)))

    def get(self, note_id: str) -> Note | None:
        return self.get_many([note_id]).get(note_id)

    def get_many(self, note_ids: Iterable[str], links: bool = True) -> dict[str, Note]:
        return {note_id: note for note_id, (note, _) in self.load(note_ids, links, vectors_of=[]).items()}

    def load(
        self, note_ids: Iterable[str], links: bool = True, vectors_of: Collection[str] | None = None,
    ) -> dict[str, tuple[Note, np.ndarray | None]]:
        """Notes with the vectors they are searched by, by id; unknown ids are left out.
        `links=False` skips filling `Note.links`, for internal reads that do not need them;
        `vectors_of`: the ids whose vectors are read (None: all), the others come with None."""
        found = readable_notes(self._rows_of(note_ids, vectors_of), self.graph if links else None, self.unreadable,
                               self.dimension)
        return {note.id: (note, vector) for note, vector in found}

    def candidates(
        self, note_ids: Iterable[str], vectors_of: Collection[str] | None = None,
    ) -> dict[str, tuple[StoredNote, np.ndarray | None]]:
        """`load`, as a ranking reads notes (`rows.StoredNote`), without links."""
        found = readable(self._rows_of(note_ids, vectors_of), StoredNote, self.unreadable, self.dimension)
        return {note.id: (note, vector) for note, vector in found}

    def _rows_of(self, note_ids: Iterable[str], vectors_of: Collection[str] | None) -> Sequence[Mapping[str, Any]]:
        """The rows `load` and `candidates` read. A vector is stored apart from its row (PostgreSQL's TOAST): at 100k
        notes, reading them for a recall's 77 candidates took about half of its 2.6 ms."""
        note_ids = list(note_ids)
        if not note_ids:
            return []
        vector_column, vector_params = SEARCHED_VECTOR, []
        if vectors_of is not None and not vectors_of:
            vector_column = "NULL AS vector"
        elif vectors_of is not None:
            wanted, vector_params = self._among("id", list(vectors_of))
            vector_column = f"CASE WHEN {wanted} THEN {SEARCHED_VECTOR_OF} END AS vector"
        among, params = self._among("id", note_ids)
        return self._note_rows(f" WHERE {among}", [*vector_params, *params], vector_column)

    def all_notes(self) -> Iterator[tuple[Note, np.ndarray]]:
        yield from readable_notes(self._note_rows("", []), self.graph, self.unreadable, self.dimension)

    def _note_rows(
        self, where: str, params: Sequence[Any], vector_column: str = SEARCHED_VECTOR
    ) -> Sequence[Mapping[str, Any]]:
        return self._read_notes(
            f"SELECT {self._columns(KEPT_IN_QUARANTINE)}, {vector_column} FROM notes{where} ORDER BY {self.ORDER}", params
        )

    def own_embeddings(self, note_ids: Iterable[str]) -> dict[str, np.ndarray]:
        """The embeddings of the notes' texts alone (what duplicates and links are judged by)."""
        note_ids = list(note_ids)
        if not note_ids:
            return {}
        among, params = self._among("id", note_ids)
        rows = self._run(f"SELECT id, embedding FROM notes WHERE {among}", params)
        return {r[0]: np.frombuffer(r[1], dtype=np.float32) for r in rows}

    def expect_session(self, scope: tuple[str | None, str | None, str]) -> None:
        """This thread's next write section starts by reading the session's latest vector
        (`session_vector`): a hint, which a store whose reads are round trips takes to read it
        with the lock."""

    def read_current(self, note_ids: Collection[str]) -> dict[str, Note] | None:
        """None: a read here costs no round trip, so a write section reads the notes (`NoteStore.read_current`)."""
        return None

    def expect_loads(self, note_ids: Collection[str], tokens: Collection[str]) -> None:
        """This thread's next write section reads the index entries of these tokens, then loads their
        notes and these (with their vectors): a hint, which a store whose reads are round trips takes
        to read them all with its lock."""

    def expect_neighbours(self, tokens: Collection[str]) -> None:
        """This thread's next write section reads the index entries of these tokens, then their notes as a
        remember's candidates (`neighbours`): a hint, which a store whose reads are round trips takes to read
        them with its lock."""

    def session_vector(self, scope: tuple[str | None, str | None, str], before: str | None = None) -> np.ndarray | None:
        """The searched vector of the latest note remembered in a session (of one user and
        agent), or of the latest one remembered before note `before`; None for none."""
        rows = self._run(*self._latest_in_session(scope, before))
        return np.frombuffer(rows[0][0], dtype=np.float32) if rows else None

    def _latest_in_session(
        self, scope: tuple[str | None, str | None, str], before: str | None = None
    ) -> tuple[str, list[Any]]:
        """`session_vector`'s statement and parameters."""
        (user, by_user), (agent, by_agent) = equals("user_id", scope[0]), equals("agent_id", scope[1])
        sql = f"SELECT {SEARCHED_VECTOR_OF} FROM notes WHERE {user} AND {agent} AND session_id = ?"
        params: list[Any] = [*by_user, *by_agent, scope[2]]
        if before is not None:
            sql += f" AND {self.BEFORE_NOTE}"
            params.append(before)
        return sql + f" ORDER BY {self.LATEST_FIRST} LIMIT 1", params

    def session_notes(
        self, scope: tuple[str | None, str | None, str]
    ) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
        """A session's notes (of one user and agent) in the order they were remembered: id, own
        embedding, and the vector mixed from the session before it (None: searched by its own)."""
        (user, by_user), (agent, by_agent) = equals("user_id", scope[0]), equals("agent_id", scope[1])
        rows = self._run(
            f"SELECT id, embedding, context_embedding FROM notes WHERE {user} AND {agent} AND session_id = ?"
            f" ORDER BY {self.ORDER}",
            [*by_user, *by_agent, scope[2]],
        )
        return [(r[0], np.frombuffer(r[1], dtype=np.float32),
                 None if r[2] is None else np.frombuffer(r[2], dtype=np.float32)) for r in rows]

    def sessions_of(self, note_id: str) -> list[tuple[str | None, str | None, str]]:
        """The sessions (user, agent, session) a note id was remembered in: its row's, and those of
        its rows set aside in quarantine (as far as they still read as one)."""
        rows = self._run("SELECT user_id, agent_id, session_id FROM notes WHERE id = ?", (note_id,))
        found = [(r[0], r[1], r[2]) for r in rows]
        for (row,) in self._run("SELECT row FROM quarantine WHERE id = ?", (note_id,)):
            with contextlib.suppress(ValueError, AttributeError):
                kept = json.loads(row)
                found.append((kept.get("user_id"), kept.get("agent_id"), kept.get("session_id")))
        return [scope for scope in dict.fromkeys(found) if isinstance(scope[2], str)
                and all(part is None or isinstance(part, str) for part in scope[:2])]

    def set_searched_vectors(self, vectors: dict[str, np.ndarray | None]) -> None:
        """Change the vectors notes are searched by (None: their own embedding), queueing their index writes."""
        self._many(
            "UPDATE notes SET context_embedding = ? WHERE id = ?",
            [(None if v is None else np.asarray(v, dtype=np.float32).tobytes(), i) for i, v in vectors.items()],
        )
        self._many(OUTBOX, [(note_id, "upsert") for note_id in vectors])

    def select(self, where: NoteFilter, limit: int | None = None, offset: int = 0) -> list[Note]:
        """Notes a filter admits, oldest first, with their links."""
        clause, params = self._where(where)
        rows = self._run(
            f"SELECT id FROM notes WHERE {clause} ORDER BY created_at, {self.ORDER} LIMIT ? OFFSET ?",
            (*params, self.NO_LIMIT if limit is None else limit, offset),
        )
        found = self.get_many([r[0] for r in rows])
        return [found[r[0]] for r in rows if r[0] in found]

    def embeddings_where(self, where: NoteFilter, limit: int) -> dict[str, np.ndarray] | None:
        """The searched vectors of every note `where` admits, or None when more than `limit` do."""
        clause, params = self._where(where)
        rows = self._run(
            f"SELECT id, {SEARCHED_VECTOR_OF} FROM notes WHERE {clause} LIMIT ?", (*params, limit + 1)
        )
        if len(rows) > limit:
            return None
        found = {}
        for note_id, blob in rows:
            try:
                found[note_id] = vector_of(blob, self.dimension)
            except ValueError as exc:
                set_aside(note_id, exc, self.unreadable)
        return found

    def recall_times(self, note_id: str) -> list[datetime]:
        rows = self._run("SELECT at FROM recalls WHERE note_id = ? ORDER BY at", (note_id,))
        return [from_timestamp(r[0]) for r in rows]

    def history(self, note_id: str) -> list[tuple[datetime, str, Note]]:
        rows = self._run(f"SELECT at, change, before FROM history WHERE note_id = ? ORDER BY {self.ORDER}", (note_id,))
        return [(from_timestamp(r[0]), r[1], Note.model_validate_json(r[2], context=STORED)) for r in rows]

    def links_of(self, note_id: str) -> list[Link]:
        return links_in(self.graph, note_id)

    # ---- the outbox of vector-index writes, and index tokens -------------------------------

    def has_pending(self) -> bool:
        return bool(self._run("SELECT 1 FROM outbox LIMIT 1"))

    def pending(self) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self._run("SELECT note_id, op FROM outbox")]

    def clear_pending(self, note_ids: Iterable[str]) -> None:
        self._many("DELETE FROM outbox WHERE note_id = ?", [(i,) for i in note_ids])

    def neighbours(self, note_ids: Iterable[str], user_id: str | None) -> Neighbours:
        """What a new note of `user_id` is compared with, in one read (three round trips to a
        server before): those of these notes that are the user's (its nearest in the index, and
        any a search ahead may have missed), and the user's notes waiting in the outbox for their
        index write (another replica may be writing them right now)."""
        note_ids = list(note_ids)
        user, params = equals("n.user_id", user_id)
        among, ids = self._among("n.id", note_ids)
        select = f"SELECT {self._columns(KEPT_IN_QUARANTINE, 'n.')}, n.embedding AS vector"
        rows = self._read_notes(  # CROSS JOIN: SQLite starts from the (small) outbox, not the user's notes (10k: 14 ms)
            f"{select}, 0 AS waiting FROM notes n WHERE {among}"
            f" UNION ALL {select}, 1 FROM outbox o CROSS JOIN notes n WHERE n.id = o.note_id AND o.op = 'upsert' AND {user}",
            [*ids, *params],
        )
        # another user's are dropped by `Neighbours`: the user's condition in the first part had SQLite
        # scan the user's notes by scope instead of reading the few ids by key (1k notes: 0.67 against 0.08 ms)
        return Neighbours(rows, user_id, self.unreadable, self.dimension)

    def all_ids(self) -> set[str]:
        return {r[0] for r in self._run("SELECT id FROM notes")}

    def known_ids(self, note_ids: Collection[str]) -> set[str]:
        """Which of these ids name a stored note, read `IDS_PER_READ` at a time (a SQLite statement takes at most
        32,766 parameters): a caller checking the ids it kept reads those, not every id of the store."""
        ids, found = list(note_ids), set()
        for start in range(0, len(ids), IDS_PER_READ):
            among, params = self._among("id", ids[start : start + IDS_PER_READ])
            found.update(row[0] for row in self._run(f"SELECT id FROM notes WHERE {among}", params))
        return found

    def all_tokens(self) -> dict[str, str]:
        """Every note id by its vector-index token."""
        return {r[0]: r[1] for r in self._run("SELECT index_id, id FROM notes")}

    def index_entries(self, tokens: Iterable[str]) -> dict[str, IndexEntry]:
        """The notes behind vector-index tokens, with their scope and archived flag (unknown tokens are left out)."""
        tokens = list(tokens)
        if not tokens:
            return {}
        among, params = self._among("index_id", tokens)
        rows = self._run(f"SELECT index_id, id, user_id, agent_id, session_id, archived FROM notes WHERE {among}", params)
        return {r[0]: IndexEntry(r[1], r[2], r[3], r[4], bool(r[5])) for r in rows}

    # ---- rows that cannot be read --------------------------------------------------------

    def quarantine_unreadable(self) -> list[str]:
        """Move every note row that cannot be read into `quarantine` (with why), out of the notes.

        Checks all rows (at a migration) and any that a read found broken since; returns their ids.
        """
        found = self._run(f"SELECT {self._columns(NOTE_COLUMNS)} FROM notes")
        return self.quarantine(find_unreadable(found, self.unreadable))

    def quarantine(self, reasons: dict[str, str]) -> list[str]:
        if not reasons:
            return []
        now = datetime.now(timezone.utc).timestamp()
        with self.transaction():
            for note_id, reason in list(reasons.items()):
                found = self._run(f"SELECT {self._columns(KEPT_IN_QUARANTINE)} FROM notes WHERE id = ?", (note_id,))
                if not found:
                    continue
                absorbed = {row[0] for row in self._run("SELECT keyword FROM absorbed WHERE note_id = ?", (note_id,))}
                self._write(
                    "INSERT INTO quarantine(id, reason, at, row) VALUES (?, ?, ?, ?)",
                    (note_id, reason, now, quarantine_entry(found[0], absorbed)),
                )
                self.delete(note_id)
        log.warning("quarantined %d unreadable note(s): %s", len(reasons), ", ".join(reasons))
        moved = list(reasons)
        self.unreadable.clear()
        return moved

    def is_quarantined(self, note_id: str) -> bool:
        return bool(self._run("SELECT 1 FROM quarantine WHERE id = ?", (note_id,)))

    def drop_quarantined(self, note_id: str) -> None:
        """Delete the rows of this id set aside in quarantine (a forget of the note)."""
        self._write("DELETE FROM quarantine WHERE id = ?", (note_id,))

    def quarantined(self) -> list[dict[str, Any]]:
        found = self._run(f"SELECT id, reason, at, row FROM quarantine ORDER BY {self.ORDER}")
        return [{"id": r[0], "reason": r[1], "at": from_timestamp(r[2]), "row": json.loads(r[3])} for r in found]

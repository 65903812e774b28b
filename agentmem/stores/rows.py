"""A note as a table row, the same in both note stores: the columns, a `Note` read from a row
and written into one, rows that cannot be read set aside (never fatal), links from the view.

The stores differ only in their SQL and their connections (graph.py: SQLite, postgres.py:
PostgreSQL); what a row means is said once, here.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import networkx as nx
import numpy as np

from ..notes import MAX_STRENGTH, STORED, Fact, Link, Note
from .tokens import index_token

log = logging.getLogger(__name__)
T = TypeVar("T")

NOTE_COLUMNS = (
    "id", "text", "keywords", "tags", "context", "user_id", "agent_id", "session_id",
    "created_at", "updated_at", "last_recalled", "recall_count", "strength", "archived",
    "metadata", "fact", "embedding", "context_embedding", "index_id",
)
KEPT_IN_QUARANTINE = NOTE_COLUMNS[:16]  # a quarantined row keeps everything but its vectors and token
SEARCHED_VECTOR_OF = "COALESCE(context_embedding, embedding)"  # the vector a note is searched by
SEARCHED_VECTOR = f"{SEARCHED_VECTOR_OF} AS vector"  # what a read loads beside the note
UNREADABLE = (ValueError, TypeError, OverflowError, OSError, KeyError)  # what a bad row raises when read


def stored_int(digits: str) -> int | float:
    """An integer in stored metadata; one past 64 bits as the float it was written as, since a note
    holds no such integer: PostgreSQL's jsonb keeps a number's value, not its form, and prints
    6.022e23 as 602200000000000000000000 (the note was quarantined at its next read). A float with
    an integer's value (1e16) reads back as that integer, equal to it."""
    value = int(digits)
    return value if -(2**63) <= value < 2**63 else float(digits)


METADATA = json.JSONDecoder(parse_int=stored_int)  # reads a note's metadata column


@dataclass
class OutboxClaim:
    """Outbox rows held by one index write (`NoteStore.outbox_claim`): cleared when the write
    sets `done`, kept for a later replay otherwise."""

    rows: list[tuple[str, str]] = field(default_factory=list)  # (note id, op)
    done: bool = False


class IndexEntry(NamedTuple):
    """What the vector index narrows a search by, read from the note store (the source of truth)."""

    note_id: str
    user_id: str | None
    agent_id: str | None
    session_id: str | None
    archived: bool

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> IndexEntry:
        """The entry of a note row read by name."""
        return cls(row["id"], row["user_id"], row["agent_id"], row["session_id"], bool(row["archived"]))


def to_timestamp(at: datetime) -> float:
    return at.timestamp()


def from_timestamp(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def json_text(value: list[Any] | dict[str, Any]) -> str:
    """A note's list or dict as its column's JSON, its words as written: escaped (`ensure_ascii`), a
    tag `ünïcödé` was indexed by full text as the fragments of `\\u00fcn\\u00efc...` and never found.
    Columns written escaped by earlier versions read the same."""
    return json.dumps(value, ensure_ascii=False)


def column_value(value: Any) -> Any:
    """A Python value as stored in the notes table."""
    if isinstance(value, datetime):
        return to_timestamp(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (list, dict)):
        return json_text(value)
    if isinstance(value, Fact):
        return value.model_dump_json()
    return value


def note_row(note: Note, embedding: np.ndarray, in_context: np.ndarray | None, index_key: bytes) -> tuple[Any, ...]:
    """The note's values in `NOTE_COLUMNS` order; `index_key` makes its vector-index token."""
    return (
        note.id, note.text, json_text(note.keywords), json_text(note.tags), note.context,
        note.user_id, note.agent_id, note.session_id,
        to_timestamp(note.created_at), to_timestamp(note.updated_at), to_timestamp(note.last_recalled),
        note.recall_count, note.strength, int(note.archived),
        json_text(note.metadata), note.fact.model_dump_json() if note.fact else None,
        np.asarray(embedding, dtype=np.float32).tobytes(),
        None if in_context is None else np.asarray(in_context, dtype=np.float32).tobytes(),
        index_token(index_key, "id", note.id),
    )


def vector_of(blob: bytes, dimension: int | None) -> np.ndarray:
    """A stored vector: float32s, `dimension` of them once the store knows its embeddings' length (raises
    ValueError for a blob that holds no such vector: a hand edit, a damaged row)."""
    if len(blob) % 4 or (dimension is not None and len(blob) != 4 * dimension):
        raise ValueError(f"a stored vector has {len(blob)} bytes, not {dimension} float32s")
    return np.frombuffer(blob, dtype=np.float32)


def note_of(row: Mapping[str, Any], links: list[Link]) -> Note:
    """The note a row holds, checked (raises one of `UNREADABLE` for a row that does not hold one)."""
    checked_strength(row)
    fields = dict(
        id=row["id"], text=row["text"],
        keywords=json.loads(row["keywords"]), tags=json.loads(row["tags"]), context=row["context"],
        user_id=row["user_id"], agent_id=row["agent_id"], session_id=row["session_id"],
        created_at=from_timestamp(row["created_at"]), updated_at=from_timestamp(row["updated_at"]),
        last_recalled=from_timestamp(row["last_recalled"]),
        recall_count=row["recall_count"], strength=row["strength"], archived=bool(row["archived"]),
        metadata=METADATA.decode(row["metadata"]),
        fact=Fact.model_validate_json(row["fact"]) if row["fact"] else None,
        links=links,
    )
    return Note.model_validate(fields, context=STORED)


def checked_strength(row: Mapping[str, Any]) -> float:
    """The row's strength, once it and its recall count are numbers of their kind (a SQLite column holds
    any type, and pydantic would take the text "0.5" for a number)."""
    strength, recalls = row["strength"], row["recall_count"]
    if not (isinstance(strength, (int, float)) and 0 < strength <= MAX_STRENGTH):
        raise ValueError(f"strength {strength!r} is not in (0, {MAX_STRENGTH:g}]")
    if not (isinstance(recalls, int) and recalls >= 0):
        raise ValueError(f"recall count {recalls!r} is not a count")
    return strength


class StoredNote:
    """A note as a ranking reads it (`NoteStore.candidates`): what ranking and filters use, taken from
    its row at once, and the `Note` itself built and checked only for what is returned (`checked`). A
    recall at 100k notes reads about 77 candidates and returns 10: building a note for each took 0.7 ms
    of it. Raises one of `UNREADABLE` for a row whose fields here cannot be read."""

    def __init__(self, row: Mapping[str, Any]) -> None:
        self.strength: float = checked_strength(row)
        self.id: str = row["id"]
        self.text: str = row["text"]
        self.user_id: str | None = row["user_id"]
        self.agent_id: str | None = row["agent_id"]
        self.session_id: str | None = row["session_id"]
        self.archived: bool = bool(row["archived"])
        self.created_at: datetime = from_timestamp(row["created_at"])
        self.last_recalled: datetime = from_timestamp(row["last_recalled"])
        self.metadata: dict[str, Any] = METADATA.decode(row["metadata"])  # for filters: 0.5 us a row
        self._row = row

    def note(self, links: list[Link]) -> Note:
        """The note its row holds, with these links (raises as `note_of`)."""
        return note_of(self._row, links)


def links_in(graph: nx.Graph, note_id: str) -> list[Link]:
    """A note's links in the networkx view, strongest first."""
    if note_id not in graph:
        return []
    edges = sorted(graph[note_id].items(), key=lambda item: -item[1]["weight"])
    # rows come from our own tables: skip re-validating every link
    return [Link.model_construct(note_id=n, weight=e["weight"]) for n, e in edges]


def reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def readable_notes(
    rows: Iterable[Mapping[str, Any]], graph: nx.Graph | None, unreadable: dict[str, str], dimension: int | None = None,
) -> Iterator[tuple[Note, np.ndarray | None]]:
    """The notes of these rows (`KEPT_IN_QUARANTINE` and `SEARCHED_VECTOR`) with the vectors they
    are searched by (None where the read left it out), with their links from `graph` (None:
    without links); `dimension` as in `vector_of`. A row that cannot be read is set aside
    (`set_aside`), never fatal."""
    yield from readable(rows, lambda row: note_of(row, links_in(graph, row["id"]) if graph is not None else []),
                        unreadable, dimension)


def readable(
    rows: Iterable[Mapping[str, Any]], read: Callable[[Mapping[str, Any]], T], unreadable: dict[str, str],
    dimension: int | None,
) -> Iterator[tuple[T, np.ndarray | None]]:
    """Each row as `read` reads it (a `Note`, a `StoredNote`), with its vector as in `readable_notes`; a row
    that cannot be read is set aside."""
    for row in rows:
        try:
            note = read(row)
            vector = None if row["vector"] is None else vector_of(row["vector"], dimension)
        except UNREADABLE as exc:
            set_aside(str(row["id"]), exc, unreadable)
            continue
        yield note, vector


class Neighbours:
    """Stored notes read as a new note's candidates (`SqlNoteStore.neighbours`): their own
    embeddings, which of them wait for their index write, and their notes, built only for the
    few that are near enough to link or duplicate (`notes`). Rows of another user than `user_id`
    are left out (links never cross users); the stores read by id, and filter here."""

    def __init__(
        self, rows: Sequence[Mapping[str, Any]], user_id: str | None, unreadable: dict[str, str], dimension: int | None
    ) -> None:
        rows = [row for row in rows if row["user_id"] == user_id]
        self._rows, self.embeddings = {}, {}
        for row in rows:
            try:
                self.embeddings[row["id"]] = vector_of(row["vector"], dimension)
            except ValueError as exc:
                set_aside(str(row["id"]), exc, unreadable)
                continue
            self._rows[row["id"]] = row
        self._unreadable = unreadable
        self.waiting = {row["id"] for row in rows if row["waiting"] and row["id"] in self._rows}  # any of its rows

    def notes(self, note_ids: Iterable[str]) -> dict[str, Note]:
        """The notes of these ids (without links), those that were read and can be."""
        rows = [self._rows[i] for i in dict.fromkeys(note_ids) if i in self._rows]
        return {note.id: note for note, _ in readable_notes(rows, None, self._unreadable)}


def set_aside(note_id: str, exc: Exception, unreadable: dict[str, str]) -> None:
    """Log a row that cannot be read and note it in `unreadable` (the store quarantines it at its next write)."""
    log.warning("note %r cannot be read and will be quarantined: %s", note_id, exc)
    unreadable[note_id] = reason(exc)


def checked(stored: StoredNote, links: list[Link], unreadable: dict[str, str]) -> Note | None:
    """A ranked note as returned, with these links; None (and set aside) when its row holds what a
    note cannot."""
    try:
        return stored.note(links)
    except UNREADABLE as exc:
        set_aside(stored.id, exc, unreadable)
        return None


def find_unreadable(rows: Iterable[Mapping[str, Any]], unreadable: dict[str, str]) -> dict[str, str]:
    """Check every row (a migration's full check), adding those that cannot be read to `unreadable`."""
    for row in rows:
        try:
            note_of(row, [])
            if len(row["embedding"]) % 4:
                raise ValueError("embedding bytes are not float32")
        except UNREADABLE as exc:
            unreadable[str(row["id"])] = reason(exc)
    return unreadable


def quarantine_entry(row: Mapping[str, Any], absorbed: set[str]) -> str:
    """What `quarantine` keeps of a row: its readable columns as JSON, less the keywords it absorbed from
    other notes (forgetting one of those takes its words back from notes, not from quarantined rows)."""
    kept = {key: row[key] for key in KEPT_IN_QUARANTINE}
    try:
        keywords = json.loads(kept["keywords"])
    except (TypeError, ValueError):
        keywords = None
    if isinstance(keywords, list):
        kept["keywords"] = json.dumps([word for word in keywords if word not in absorbed])
    return json.dumps(kept, default=str)


def without_words(version_json: str, words: set[str]) -> str:
    """A history entry (a note's earlier version) with these absorbed keywords taken out."""
    version = json.loads(version_json)
    version["keywords"] = [w for w in version.get("keywords", []) if w not in words]
    return json.dumps(version)

"""A batch's writes to the note store, collected as the batch runs and sent one statement per kind.

`remember_many` links each new note to a few neighbours, and each linked neighbour absorbs
keywords, which is a history entry, a field change and absorbed-keyword rows: a batch of 200
wrote about 2,700 statements one at a time, which on PostgreSQL cost 2-3 ms a note in the client
alone. Collected here, they go as one `executemany` per kind, and the field changes of a note
changed several times in the batch go as one row.

Order at `flush`: new notes first (later writes touch their rows), then links, history, field
changes (the last value of each field wins), absorbed keywords and archived notes revived.
Nothing in the batch is read back from the store before `flush`: the caller keeps the notes'
current state itself.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np

from ..notes import Note
from .store import NoteStore


class WriteBatch:
    def __init__(self, store: NoteStore) -> None:
        self.store = store
        self.notes: list[tuple[Note, np.ndarray, np.ndarray | None]] = []
        self.links: list[tuple[str, str, float, datetime]] = []
        self.history: list[tuple[str, datetime, str, Note]] = []
        self.fields: dict[str, dict[str, Any]] = {}
        self.absorbed: list[tuple[str, str, str]] = []
        self.revived: list[str] = []  # archived notes a duplicate brings back (their index entries change)

    def insert(self, note: Note, embedding: np.ndarray, in_context: np.ndarray | None) -> None:
        self.notes.append((note, embedding, in_context))

    def link(self, a: str, b: str, weight: float, at: datetime) -> None:
        self.links.append((a, b, weight, at))

    def record(self, note_id: str, at: datetime, change: str, before: Note) -> None:
        self.history.append((note_id, at, change, before))

    def set_fields(self, note_id: str, **fields: Any) -> None:
        self.fields.setdefault(note_id, {}).update(fields)

    def absorb(self, note_id: str, keywords: list[str], origin: str) -> None:
        self.absorbed += [(note_id, keyword, origin) for keyword in keywords]

    def revive(self, note_id: str) -> None:
        self.revived.append(note_id)

    def flush(self) -> None:
        """Send everything collected, inside the caller's transaction."""
        self.store.insert_many(self.notes)
        self.store.link_many(self.links)
        self.store.record_many(self.history)
        self.store.set_fields_many(self.fields)
        self.store.absorb_many(self.absorbed)
        self.store.set_archived(self.revived, False)

"""`NoteFilter`'s metadata conditions on each SQL store, SQLite and a real PostgreSQL 15: they admit what `admits` does."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from agentmem import Note
from agentmem.stores.filters import NoteFilter

T = datetime(2024, 1, 1, tzinfo=timezone.utc)
KEYS = ['q"uote', '"', 'x"]', "città", "emoji🙂", "a\\b", "$.x", "a.b", "[0]", "a'b"]


def test_a_metadata_filter_finds_any_key_the_same_on_both_stores(sql_store):
    """A key holding `"` was never found on SQLite (a JSON path cannot name it); nor any key, nor
    any value, whatever it holds, may be missed."""
    stored = [{key: value} for key in KEYS for value in (True, 1, "é\"")]
    notes = [Note(id=f"n{i}", text=f"note {i}", metadata=metadata, created_at=T, updated_at=T, last_recalled=T)
             for i, metadata in enumerate(stored)]
    with sql_store.transaction():
        for note in notes:
            sql_store.insert(note, np.ones(4))
    for key in KEYS:
        for value in (True, 1, 1.0, "é\"", "other"):
            where = NoteFilter(metadata={key: value})
            expected = [note.id for note in notes if where.admits(note)]
            assert [note.id for note in sql_store.select(where)] == expected, (key, value)
            assert len(expected) == (value != "other")

"""SqlNoteStore's statements, written once for both SQL stores, run on each: SQLite and a real PostgreSQL 15."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np

from agentmem import Note
from agentmem.stores.filters import NoteFilter

T = datetime(2024, 1, 1, tzinfo=timezone.utc)


def test_load_reads_only_the_vectors_asked_for(sql_store):
    """A recall reads the vectors of its full-text-only candidates alone (`vectors_of`); the ids
    asked for and the vectors' ids are separate lists of parameters, which must not mix."""
    with sql_store.transaction():
        for value, name in enumerate("abc", start=1):
            sql_store.insert(Note(id=name, text=f"note {name}", created_at=T, updated_at=T, last_recalled=T),
                         np.full(4, float(value), dtype=np.float32))
    loaded = sql_store.load(["a", "b", "c"], links=False, vectors_of=["b", "unknown"])
    assert {i: None if v is None else v.tolist() for i, (_, v) in loaded.items()} == {
        "a": None, "b": [2.0] * 4, "c": None,
    }
    assert [v for _, v in sql_store.load(["a", "c"], vectors_of=[]).values()] == [None, None]
    assert [v.tolist() for _, v in sql_store.load(["c", "a"]).values()] == [[1.0] * 4, [3.0] * 4]  # all, in store order
    assert sql_store.get_many(["b"])["b"].text == "note b"


def test_metadata_reads_back_as_it_was_written_and_filters_find_it(sql_store):
    """Every number as written: its type, its value and the sign of a zero (PostgreSQL's jsonb had
    turned 1e16 into an integer, and 6.022e23 into one a note cannot hold), and the keys' order."""
    metadata = {"avogadro": 6.022e23, "big": 1e16, "huge": 1.5e300, "tiny": 1e-7, "zero": -0.0, "one": 1.0,
                "i64": 2**63 - 1, "n": 1, "nested": {"z": [1e16, 2], "a": None}, "b": "c", "a": True}
    with sql_store.transaction():
        sql_store.insert(Note(id="a", text="note a", metadata=metadata, created_at=T, updated_at=T, last_recalled=T),
                         np.ones(4))
    assert json.dumps(sql_store.get("a").metadata) == json.dumps(metadata) and sql_store.unreadable == {}
    for key in ("avogadro", "big", "huge", "tiny", "zero", "i64"):
        assert [n.id for n in sql_store.select(NoteFilter(metadata={key: metadata[key]}))] == ["a"], key
    assert [n.id for n in sql_store.select(NoteFilter(metadata={"avogadro": 6.022e22}))] == []

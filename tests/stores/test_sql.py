"""SqlNoteStore's statements, written once for both SQL stores, run on each: SQLite and a real PostgreSQL 15."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from agentmem import Note

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

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


def test_a_non_ascii_tag_or_keyword_is_found_by_full_text(sql_store):
    """Keywords and tags were stored as JSON with their non-ASCII letters escaped, which full text
    indexed as the fragments of `\\u00fc...`: neither store found `ünïcödé` in them."""
    def note(note_id: str, **fields) -> Note:
        return Note(id=note_id, text=f"note {note_id}", created_at=T, updated_at=T, last_recalled=T, **fields)

    with sql_store.transaction():
        sql_store.insert(note("tagged", tags=["ünïcödé"], metadata={"città": "Roma"}), np.ones(4))
        sql_store.insert(note("keyworded", keywords=["Zürich"]), np.ones(4))
        sql_store.insert(note("evolved"), np.ones(4))
        sql_store.set_fields("evolved", keywords=["façade"])  # an evolved neighbour's keywords
    for word, found in (("ünïcödé", "tagged"), ("zürich", "keyworded"), ("façade", "evolved")):
        assert [i for i, _ in sql_store.lexical_search([word], 5, NoteFilter())] == [found], word
    assert [i for i, _ in sql_store.lexical_search(["ünïcödé"], 5, NoteFilter(metadata={"città": "Roma"}))] == ["tagged"]
    assert sql_store.get("tagged").tags == ["ünïcödé"] and sql_store.get("evolved").keywords == ["façade"]

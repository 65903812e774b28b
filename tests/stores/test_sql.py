"""SqlNoteStore's statements, written once for both SQL stores, run on each: SQLite and a real PostgreSQL 15."""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from agentmem import Note
from agentmem.stores import sql
from agentmem.stores.filters import NoteFilter
from agentmem.stores.rows import checked

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


def test_candidates_are_read_as_a_ranking_needs_them_and_whole_only_when_asked(sql_store):
    """A recall ranks about 77 candidates and returns 10: a candidate's row is read whole into a note, and
    checked, only when it is returned (`rows.checked`); what ranking and filters use is checked as it is
    read, and a row failing either check is set aside."""
    with sql_store.transaction():
        for name in "abcd":
            sql_store.insert(Note(id=name, text=f"note {name}", metadata={"m": name}, user_id="u",
                                  created_at=T, updated_at=T, last_recalled=T), np.full(4, 1.0, dtype=np.float32))
        sql_store.link("a", "b", 0.5, T)
        sql_store.set_fields_many({"b": {"keywords": "not json"}, "c": {"strength": -1.0}, "d": {"created_at": 1e300}})
    found = sql_store.candidates(["a", "b", "c", "d"], vectors_of=["a"])
    assert set(found) == {"a", "b"} and set(sql_store.unreadable) == {"c", "d"}  # b's keywords are not read yet
    a, b = found["a"][0], found["b"][0]
    assert (a.text, a.user_id, a.created_at, a.metadata, found["a"][1].tolist(), found["b"][1]) == (
        "note a", "u", T, {"m": "a"}, [1.0] * 4, None)
    assert NoteFilter(user_id="u", metadata={"m": "a"}).admits(a) and not NoteFilter(metadata={"m": "b"}).admits(a)
    whole = checked(a, sql_store.links_of("a"), sql_store.unreadable)
    assert whole == sql_store.get("a") and [link.note_id for link in whole.links] == ["b"]
    assert checked(b, [], sql_store.unreadable) is None and set(sql_store.unreadable) == {"b", "c", "d"}


def test_metadata_reads_back_equal_to_what_was_written_and_filters_find_it(sql_store):
    """PostgreSQL's jsonb keeps a number's value, not its form: it printed 6.022e23 as an integer no note may
    hold, and the note was quarantined at its next read. Every value reads back equal (1e16 may come back as the
    integer 10**16, -0.0 as 0, the keys in jsonb's order), and a float too large for an integer as a float."""
    metadata = {"avogadro": 6.022e23, "big": 1e16, "huge": 1.5e300, "tiny": 1e-7, "zero": -0.0, "one": 1.0,
                "i64": 2**63 - 1, "n": 1, "nested": {"z": [1e16, 2], "a": None}, "b": "c", "a": True}
    with sql_store.transaction():
        sql_store.insert(Note(id="a", text="note a", metadata=metadata, created_at=T, updated_at=T, last_recalled=T),
                         np.ones(4))
    stored = sql_store.get("a").metadata
    assert stored == metadata and sql_store.unreadable == {}
    assert isinstance(stored["avogadro"], float) and isinstance(stored["huge"], float) and stored["a"] is True
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


def test_searched_vectors_set_in_a_transaction_queue_their_index_writes(sql_store):
    """A forget's remixed session vectors go to the index through the outbox, committed with them:
    a process that dies before the index write leaves them to the replay."""
    with sql_store.transaction():
        for i, name in enumerate("abc"):
            sql_store.insert(Note(id=name, text=f"note {name}", user_id="u", session_id="s", created_at=T,
                                  updated_at=T, last_recalled=T), np.full(4, float(i + 1), dtype=np.float32),
                             None if name == "a" else np.full(4, 9.0, dtype=np.float32))
    sql_store.clear_pending("abc")
    with sql_store.transaction():
        sql_store.set_searched_vectors({"b": None, "c": np.full(4, 0.5, dtype=np.float32)})
    assert sorted(sql_store.pending()) == [("b", "upsert"), ("c", "upsert")]
    assert [(i, own[0], None if mix is None else mix[0]) for i, own, mix in sql_store.session_notes(("u", None, "s"))] == [
        ("a", 1.0, None), ("b", 2.0, None), ("c", 3.0, 0.5),
    ]
    assert sql_store.sessions_of("c") == [("u", None, "s")] and sql_store.sessions_of("unknown") == []


def test_known_ids_reads_the_ids_asked_for_in_chunks(sql_store, monkeypatch):
    """A statement names at most `IDS_PER_READ` ids (SQLite takes 32,766 parameters); the chunks' answers add up."""
    monkeypatch.setattr(sql, "IDS_PER_READ", 2)
    with sql_store.transaction():
        for name in "abcde":
            sql_store.insert(Note(id=name, text=f"note {name}", created_at=T, updated_at=T, last_recalled=T),
                             np.ones(4, dtype=np.float32))
    assert sql_store.known_ids(["a", "x", "c", "e", "y"]) == {"a", "c", "e"}
    assert sql_store.known_ids([]) == set()


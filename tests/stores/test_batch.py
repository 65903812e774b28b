"""WriteBatch on both SQL stores (SQLite and a real PostgreSQL 15): what a batch collects lands as
if written one by one, and a batch that fails lands not at all."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from agentmem import Note
from agentmem.errors import InvalidInputError
from agentmem.stores.batch import WriteBatch

T = datetime(2024, 1, 1, tzinfo=timezone.utc)


def note(note_id: str, **fields) -> Note:
    return Note(id=note_id, text=f"note {note_id}", created_at=T, updated_at=T, last_recalled=T, **fields)


@pytest.fixture
def store(sql_store):
    with sql_store.transaction():
        sql_store.insert(note("a", keywords=["alice"]), np.ones(4))
    return sql_store


def test_a_batch_lands_as_written_one_by_one_with_new_notes_first_and_the_last_field_value(store):
    a = store.get("a")
    batch = WriteBatch(store)
    batch.insert(note("b", keywords=["bob"]), np.ones(4), None)
    batch.link("b", "a", 0.8, T)
    batch.record("a", T, "evolved:b", a)
    batch.set_fields("a", keywords=["alice", "bob"])
    batch.absorb("a", ["bob"], "b")
    # a later draft of the batch changes both notes again: the newer note's row must already exist
    batch.insert(note("c"), np.ones(4), None)
    changed = a.model_copy(update={"keywords": ["alice", "bob"]})
    batch.record("a", T + timedelta(seconds=1), "evolved:c", changed)
    batch.set_fields("a", keywords=["alice", "bob", "carol"])
    batch.absorb("a", ["bob", "carol"], "c")  # "bob" keeps its first origin
    batch.set_fields("b", strength=2.5)
    with store.transaction():
        batch.flush()

    assert store.all_ids() == {"a", "b", "c"}
    assert store.get("a").keywords == ["alice", "bob", "carol"]
    assert store.get("b").strength == 2.5
    assert [link.note_id for link in store.links_of("a")] == ["b"] and store.graph.has_edge("a", "b")
    assert [(change, before.keywords) for _, change, before in store.history("a")] == [
        ("evolved:b", ["alice"]), ("evolved:c", ["alice", "bob"])
    ]
    with store.transaction():
        changed_neighbours = store.delete("b")  # takes back what "a" absorbed from "b" only
    assert changed_neighbours == ["a"] and store.get("a").keywords == ["alice", "carol"]


def test_a_batch_that_fails_leaves_the_store_and_its_view_unchanged(store):
    batch = WriteBatch(store)
    batch.insert(note("b"), np.ones(4), None)
    batch.link("a", "b", 0.9, T)
    batch.insert(note("a"), np.ones(4), None)  # the primary key refuses it
    with pytest.raises(InvalidInputError):
        with store.errors(), store.transaction():
            batch.flush()
    assert store.all_ids() == {"a"} and set(store.graph.nodes) == {"a"} and store.graph.number_of_edges() == 0
    assert store.get("a").keywords == ["alice"]

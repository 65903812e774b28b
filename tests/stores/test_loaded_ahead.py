"""What a recall's read ahead answers a load with, and when it leaves the load to the store."""
from __future__ import annotations

from agentmem.stores.loaded_ahead import LoadedAhead

V = b"\x00\x00\x80?"  # a stored vector's bytes


def rows() -> list[dict]:
    """As the store read them, in its order: a and b found by token (no vector), c by id (with its vector)."""
    return [{"id": "b", "vector": None}, {"id": "c", "vector": V}, {"id": "a", "vector": None}]


def test_a_load_of_what_was_read_gets_the_rows_in_the_store_s_order_with_the_vectors_it_asked_for():
    ahead = LoadedAhead(rows(), expected=["c", "gone"])
    assert ahead.rows_for(["a", "c", "b"], vectors_of=["c"]) == rows()
    assert ahead.rows_for(["a", "c"], vectors_of=[]) == [{"id": "c", "vector": None}, {"id": "a", "vector": None}]


def test_an_expected_note_that_was_not_found_is_left_out_as_a_load_leaves_out_a_forgotten_one():
    assert LoadedAhead(rows(), expected=["c", "gone"]).rows_for(["gone", "a"], vectors_of=[]) == [
        {"id": "a", "vector": None}
    ]


def test_a_load_of_a_note_not_read_or_read_without_the_vector_it_wants_is_left_to_the_store():
    ahead = LoadedAhead(rows(), expected=["c"])
    assert ahead.rows_for(["a", "elsewhere"], vectors_of=[]) is None  # unknown whether it exists
    assert ahead.rows_for(["a"], vectors_of=["a"]) is None
    assert ahead.rows_for(["a", "c"], vectors_of=None) is None  # every vector wanted
    assert ahead.rows_for(["c"], vectors_of=None) == [{"id": "c", "vector": V}]

"""What the rows a recall read with its lock answer its index entries and its load with, and when they leave
the read to the store."""
from __future__ import annotations

from agentmem.stores.loaded_ahead import LoadedAhead
from agentmem.stores.rows import IndexEntry

V = b"\x00\x00\x80?"  # a stored vector's bytes


def row(note_id: str, vector: bytes | None = None) -> dict:
    return {"id": note_id, "index_id": f"t-{note_id}", "user_id": "u", "agent_id": None, "session_id": None,
            "archived": 0, "vector": vector}


def rows() -> list[dict]:
    """As the store read them, in its order: a and b by token (no vector), c by id (with its vector)."""
    return [row("b"), row("c", V), row("a")]


def read(**expected) -> LoadedAhead:
    return LoadedAhead(rows(), expected=expected.get("ids", ["c", "gone"]), tokens=expected.get("tokens", ["t-a", "t-b"]))


def test_a_load_of_what_was_read_gets_the_rows_in_the_store_s_order_with_the_vectors_it_asked_for():
    assert read().rows_for(["a", "c", "b"], vectors_of=["c"]) == rows()
    assert read().rows_for(["a", "c"], vectors_of=[]) == [row("c"), row("a")]


def test_an_expected_note_that_was_not_found_is_left_out_as_a_load_leaves_out_a_forgotten_one():
    assert read().rows_for(["gone", "a"], vectors_of=[]) == [row("a")]


def test_a_load_of_a_note_not_read_or_read_without_the_vector_it_wants_is_left_to_the_store():
    ahead = read(ids=["c"])
    assert ahead.rows_for(["a", "elsewhere"], vectors_of=[]) is None  # unknown whether it exists
    assert ahead.rows_for(["a"], vectors_of=["a"]) is None
    assert ahead.rows_for(["a", "c"], vectors_of=None) is None  # every vector wanted
    assert ahead.rows_for(["c"], vectors_of=None) == [row("c", V)]


def test_entries_come_from_the_rows_of_the_tokens_asked_for_and_no_others():
    ahead = read(tokens=["t-a", "t-b", "t-gone"])
    assert ahead.entries_for(["t-a", "t-gone"]) == {"t-a": IndexEntry("a", "u", None, None, False)}
    assert ahead.entries_for(["t-a", "t-c"]) is None  # c was read by id, not by its token

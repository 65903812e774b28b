from datetime import datetime, timezone

import numpy as np
import pytest

from agentmem import Note, StoreCorruptedError, StoreUnavailableError
from agentmem.stores import NoteGraph
from agentmem.stores import store as store_protocol
from agentmem.stores.filters import NoteFilter

T = datetime(2024, 1, 1, tzinfo=timezone.utc)


def note(note_id: str) -> Note:
    return Note(id=note_id, text=f"note {note_id}", created_at=T, updated_at=T, last_recalled=T)


def test_a_failed_transaction_leaves_disk_and_view_unchanged(tmp_path):
    graph = NoteGraph(tmp_path / "g.sqlite3")
    with graph.transaction():
        graph.insert(note("a"), np.ones(4))
    with pytest.raises(RuntimeError):
        with graph.transaction():
            graph.insert(note("b"), np.ones(4))
            graph.link("a", "b", 0.9, T)
            raise RuntimeError("crash mid-write")
    assert graph.all_ids() == {"a"} and set(graph.graph.nodes) == {"a"} and graph.graph.number_of_edges() == 0


def test_another_connection_s_commit_refreshes_the_view(tmp_path):
    first, second = NoteGraph(tmp_path / "g.sqlite3"), NoteGraph(tmp_path / "g.sqlite3")
    with second.transaction():
        second.insert(note("a"), np.ones(4))
        second.insert(note("b"), np.ones(4))
        second.link("a", "b", 0.7, T)
    assert first.refresh_if_changed() is True
    assert first.graph.has_edge("a", "b") and first.links_of("a")[0].weight == 0.7
    assert first.refresh_if_changed() is False


def test_every_write_queues_its_vector_index_operation(tmp_path):
    graph = NoteGraph(tmp_path / "g.sqlite3")
    with graph.transaction():
        graph.insert(note("a"), np.ones(4))
        graph.insert(note("b"), np.ones(4))
    assert sorted(graph.pending()) == [("a", "upsert"), ("b", "upsert")]
    with graph.transaction():
        graph.clear_pending(["a", "b"])
        graph.delete("a")
    assert graph.pending() == [("a", "delete")]
    assert graph.load(["a", "b"]).keys() == {"b"}
    np.testing.assert_array_equal(graph.load(["b"])["b"][1], np.ones(4, dtype=np.float32))


def test_a_store_made_before_context_embeddings_opens_and_keeps_its_vectors(tmp_path):
    path = tmp_path / "g.sqlite3"
    graph = NoteGraph(path)
    with graph.transaction():
        graph.insert(note("a"), np.ones(4))
    graph.connection.execute("ALTER TABLE notes DROP COLUMN context_embedding")  # the old schema
    graph.connection.execute("DELETE FROM meta WHERE key = 'schema_version'")
    graph.close()
    reopened = NoteGraph(path)
    assert np.array_equal(reopened.load(["a"])["a"][1], np.ones(4, dtype=np.float32))
    with reopened.transaction():
        reopened.insert(note("b"), np.ones(4), np.full(4, 0.5))
    assert np.array_equal(reopened.load(["b"])["b"][1], np.full(4, 0.5, dtype=np.float32))  # searched by context
    assert np.array_equal(reopened.own_embeddings(["b"])["b"], np.ones(4, dtype=np.float32))


def test_a_search_mark_tells_nothing_changed_until_any_commit_and_is_none_while_index_writes_wait(tmp_path):
    graph, other = NoteGraph(tmp_path / "g.sqlite3"), NoteGraph(tmp_path / "g.sqlite3")
    quiet = graph.search_mark()
    assert quiet is not None and graph.changed_since(quiet) == set()  # reading moves nothing
    with graph.transaction():
        graph.insert(note("a"), np.ones(4))
    assert graph.search_mark() is None  # "a" waits for its index write
    assert graph.changed_since(quiet) is None
    with graph.transaction():
        graph.clear_pending(["a"])
    ours = graph.search_mark()
    assert ours is not None and graph.changed_since(quiet) is None  # this connection's own commit
    with other.transaction():
        other.set_fields("a", strength=2.0)
    assert graph.changed_since(ours) is None  # another connection's commit: SQLite cannot tell what


def test_an_index_rebuilt_elsewhere_is_a_commit_the_other_connections_see(tmp_path):
    """Their embedded index is reopened (`refresh_if_changed`), and a search made ahead is made again."""
    graph, other = NoteGraph(tmp_path / "g.sqlite3"), NoteGraph(tmp_path / "g.sqlite3")
    mark = graph.search_mark()
    assert graph.refresh_if_changed() is False
    other.index_rebuilt()
    assert graph.changed_since(mark) is None and graph.refresh_if_changed() is True


def test_a_search_mark_as_of_the_view_is_none_until_the_view_has_another_connection_s_commits(tmp_path):
    """An embedded index shows another process's notes once reopened, as the view catches up: a search
    before that could miss them, and SQLite cannot tell which."""
    graph, other = NoteGraph(tmp_path / "g.sqlite3"), NoteGraph(tmp_path / "g.sqlite3")
    assert graph.search_mark(since_view=True) is not None
    with other.transaction():
        other.insert(note("a"), np.ones(4))
        other.clear_pending(["a"])
    assert graph.search_mark(since_view=True) is None and graph.search_mark() is not None
    graph.refresh_if_changed()
    assert graph.search_mark(since_view=True) is not None


@pytest.mark.parametrize("agent", [None, "a"])
def test_a_session_s_latest_vector_comes_from_the_scope_index_without_a_sort(tmp_path, agent):
    graph = NoteGraph(tmp_path / "g.sqlite3")
    with graph.transaction():
        for i in range(50):
            graph.insert(Note(id=f"n{i}", text=f"note {i}", user_id="u", agent_id=agent, session_id="s", created_at=T,
                              updated_at=T, last_recalled=T), np.full(4, i, dtype=np.float32))
    assert graph.session_vector(("u", agent, "s")).tolist() == [49] * 4
    assert graph.session_vector(("u", agent, "s"), before="n10").tolist() == [9] * 4
    for before in (None, "n10"):
        sql, params = graph._latest_in_session(("u", agent, "s"), before)
        plan = " ".join(row[-1] for row in graph.connection.execute(f"EXPLAIN QUERY PLAN {sql}", params))
        assert "notes_scope" in plan and "TEMP B-TREE" not in plan, plan
    graph.close()


def turn(i: int) -> Note:
    return Note(id=f"n{i}", text=f"turn {i}: the user talks about item {i % 97} and colour {i % 13}",
                created_at=T, updated_at=T, last_recalled=T)


def forget(graph: NoteGraph, note_id: str) -> None:
    with graph.transaction():  # as `Memory.forget` does
        graph.delete(note_id)
        graph.merge_full_text()


def test_a_store_takes_more_than_a_thousand_forgets(tmp_path):
    """Each full-text merge left one more level in FTS5's structure record: after about 1,000 forgets, in a store
    of more than 1,000 notes, every delete failed as 'database disk image is malformed'."""
    graph = NoteGraph(tmp_path / "g.sqlite3")
    with graph.transaction():
        graph.insert_many([(turn(i), np.ones(4), None) for i in range(1300)])
    for i in range(1200):
        forget(graph, f"n{i}")
    assert graph.all_ids() == {f"n{i}" for i in range(1200, 1300)}
    assert [i for i, _ in graph.lexical_search(["1250"], 5, NoteFilter())] == ["n1250"]


def test_a_store_that_forgets_had_broken_is_mended_when_it_opens(tmp_path):
    path = tmp_path / "g.sqlite3"
    graph = NoteGraph(path)
    with graph.transaction():
        graph.insert_many([(turn(i), np.ones(4), None) for i in range(1100)])
    for i in range(999):  # as agentmem before the fix merged: 'optimize' after each delete
        with graph.transaction():
            graph.delete(f"n{i}")
            graph.connection.execute("INSERT INTO notes_fts(notes_fts) VALUES ('optimize')")
    with pytest.raises(StoreCorruptedError), graph.errors(), graph.transaction():
        graph.delete("n999")
    graph.close()
    reopened = NoteGraph(path)
    forget(reopened, "n999")
    assert len(reopened.all_ids()) == 100
    assert [i for i, _ in reopened.lexical_search(["1050"], 5, NoteFilter())] == ["n1050"]


def test_a_write_lock_another_process_holds_too_long_is_a_typed_error(tmp_path, monkeypatch):
    monkeypatch.setattr(store_protocol, "WRITE_LOCK_WAIT_S", 1)
    stuck, waiting = NoteGraph(tmp_path / "notes.sqlite3"), NoteGraph(tmp_path / "notes.sqlite3")
    try:
        with stuck.lock():  # a lock file is the process's: a second graph in this process stands for another
            with pytest.raises(StoreUnavailableError, match="held the write lock"):
                with waiting.lock():
                    pass
        with waiting.lock():
            pass
    finally:
        stuck.close()
        waiting.close()

"""The PostgreSQL note store against a real PostgreSQL 15 server, held to the SQLite store's behaviour."""
from __future__ import annotations

import shutil
import threading
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import psycopg
import pytest

from agentmem import Note
from agentmem.consolidation.ledger import Ledger
from agentmem.errors import InvalidInputError, StoreUnavailableError
from agentmem.notes import Fact
from agentmem.stores import NoteGraph
from agentmem.stores.filters import NoteFilter
from agentmem.stores.postgres import PostgresNoteGraph, psycopg_sql

T = datetime(2024, 1, 1, tzinfo=timezone.utc)


def note(note_id: str, text: str | None = None, **fields) -> Note:
    return Note(id=note_id, text=text or f"note {note_id}", **{"created_at": T, "updated_at": T, "last_recalled": T,
                                                                **fields})


@pytest.fixture
def store(postgres_url):
    graph = PostgresNoteGraph(postgres_url)
    yield graph
    graph.close()


def test_a_note_round_trips_with_every_field_and_both_vectors(store):
    full = note(
        "a", "Alice moved to Lisbon", keywords=["alice", "lisbon"], tags=["move"], context="relocation",
        user_id="u", agent_id="g", session_id="s", recall_count=3, strength=2.5, archived=True,
        metadata={"n": 1, "flag": True, "why": "x"}, fact=Fact(prompt="Alice lives in", target="Lisbon"),
    )
    with store.transaction():
        store.insert(full, np.arange(4), in_context=np.ones(4))
    loaded, searched = store.load(["a", "missing"])["a"]
    assert loaded == full
    assert searched.tolist() == [1, 1, 1, 1] and store.own_embeddings(["a"])["a"].tolist() == [0, 1, 2, 3]
    assert store.session_vector(("u", "g", "s")).tolist() == [1, 1, 1, 1]
    assert store.session_vector((None, "g", "s")) is None
    token = next(iter(store.all_tokens()))
    assert store.index_entries([token, "unknown"]) == {token: ("a", "u", "g", "s", True)}


def test_a_failed_transaction_leaves_database_and_view_unchanged(store):
    with store.transaction():
        store.insert(note("a"), np.ones(4))
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.insert(note("b"), np.ones(4))
            store.link("a", "b", 0.9, T)
            raise RuntimeError("crash mid-write")
    assert store.all_ids() == {"a"} and set(store.graph.nodes) == {"a"} and store.graph.number_of_edges() == 0


def test_a_failed_savepoint_drops_its_writes_and_the_open_transaction_goes_on(store):
    with store.transaction():
        store.insert(note("kept"), np.ones(4))
        with pytest.raises(RuntimeError):
            with store.transaction():
                store.insert(note("dropped"), np.ones(4))
                raise RuntimeError("the inner write fails")
        store.insert(note("after"), np.ones(4))
    assert store.all_ids() == {"kept", "after"} and set(store.graph.nodes) == {"kept", "after"}


def test_a_refused_write_is_a_typed_error_and_changes_nothing(store):
    with store.transaction():
        store.insert(note("a"), np.ones(4))
    with pytest.raises(InvalidInputError):
        with store.transaction():
            store.insert(note("b"), np.ones(4))
            store.insert(note("a"), np.ones(4))  # the primary key refuses it
    assert store.all_ids() == {"a"}


def test_another_process_s_commit_refreshes_the_view_and_our_own_does_not(postgres_url):
    first, second = PostgresNoteGraph(postgres_url), PostgresNoteGraph(postgres_url)
    try:
        with second.transaction():
            second.insert(note("a"), np.ones(4))
            second.insert(note("b"), np.ones(4))
            second.link("a", "b", 0.7, T)
        assert second.refresh_if_changed() is False
        assert first.refresh_if_changed() is True
        assert first.graph.has_edge("a", "b") and first.links_of("a")[0].weight == 0.7
        assert first.refresh_if_changed() is False
    finally:
        first.close()
        second.close()


def test_what_changed_since_a_search_mark_is_every_note_written_linked_or_re_embedded_or_then_waiting(
    store, postgres_url
):
    """A remember searches the index before its write section; there it compares the draft with
    every note that search may have missed, which the store names from its log of commits."""
    other = PostgresNoteGraph(postgres_url)
    try:
        with store.transaction():
            store.insert(note("old"), np.ones(4))
            store.insert(note("linked"), np.ones(4))
        with store.transaction():
            store.clear_pending(["old"])
        mark = store.search_mark()
        assert mark is not None and mark[1] == {"linked"}  # its index write is still to make
        with store.lock():
            store.refresh_if_changed()
            assert store.changed_since(mark) == {"linked"}  # nothing committed since
        with other.transaction():  # another replica's commits
            other.insert(note("new"), np.ones(4))
            other.link("new", "linked", 0.9, T)
        with other.transaction():
            other.replace(note("old", "old, rewritten"), np.full(4, 0.5), None, "updated", note("old"))
        with other.transaction(bookkeeping=True):
            other.clear_pending(["new", "old"])
        with store.lock():
            store.refresh_if_changed()
            assert store.changed_since(mark) == {"linked", "new", "old"}
    finally:
        other.close()


def test_a_search_mark_as_of_the_view_names_what_other_replicas_committed_since_the_view(store, postgres_url):
    """An embedded index shows another process's notes once reopened, as the view catches up: a search
    before that could miss what they committed since the view, even before the mark."""
    other = PostgresNoteGraph(postgres_url)
    try:
        with other.transaction():
            other.insert(note("theirs"), np.ones(4))
            other.clear_pending(["theirs"])
        as_of_view, as_of_store = store.search_mark(since_view=True), store.search_mark()
        with store.lock():
            store.refresh_if_changed()
            assert store.changed_since(as_of_view) == {"theirs"}
            assert store.changed_since(as_of_store) == set()
    finally:
        other.close()


def test_a_search_mark_is_none_when_too_many_notes_wait_and_what_changed_unknown_after_a_bulk_load(
    store, monkeypatch
):
    monkeypatch.setattr("agentmem.stores.postgres.MARKED_WAITING", 2)
    with store.transaction():
        for i in range(3):
            store.insert(note(f"n{i}"), np.ones(4))
    assert store.search_mark() is None  # an index that is down: the write section searches
    with store.transaction():
        store.clear_pending([f"n{i}" for i in range(3)])
    mark = store.search_mark()
    store.bulk_load({"meta": (["key", "value"], [("imported", "yes")])})  # a migration's load
    with store.lock():
        store.refresh_if_changed()
        assert store.changed_since(mark) is None


def test_forgetting_takes_back_absorbed_keywords_and_history_and_queues_its_delete(store):
    with store.transaction():
        store.insert(note("old", keywords=["lisbon"]), np.ones(4))
        store.insert(note("new"), np.ones(4))
        store.link("old", "new", 0.8, T)
        before = store.get("old")
        store.record("old", T, "evolved:new", before)
        store.set_fields("old", keywords=["lisbon", "portugal"])
        store.absorb_many([("old", "portugal", "new")])
        store.clear_pending(["old", "new"])
    with store.transaction():
        assert store.delete("new") == ["old"]
    assert store.get("old").keywords == ["lisbon"] and store.get("old").links == []
    assert store.history("old") == []
    assert store.pending() == [("new", "delete")]   # the index holds no keywords: "old" needs no index write
    store.purge_freed()
    assert store.counts() == {"notes": 1, "archived": 0, "users": {"": 1}, "pending_sync": 1, "links": 0,
                              "quarantined": 0}


FILTERS = [
    NoteFilter(),
    NoteFilter(user_id="u1"),
    NoteFilter(user_id="u1", include_archived=True),
    NoteFilter(agent_id="g", session_id="s"),
    NoteFilter(metadata={"n": 1}),
    NoteFilter(metadata={"n": 1.0}),
    NoteFilter(metadata={"n": True}),
    NoteFilter(metadata={"flag": True}),
    NoteFilter(metadata={"flag": 1}),
    NoteFilter(metadata={"kind": "a'b\"c"}),
    NoteFilter(metadata={"n": 1, "kind": "x"}, include_archived=True),
]
METADATA = [{"n": 1}, {"n": 1.0}, {"n": True}, {"flag": True}, {"flag": 1}, {"kind": "a'b\"c"}, {"n": 1, "kind": "x"},
            {"n": "1"}, {}]


def test_select_admits_exactly_what_the_filter_and_the_sqlite_store_admit(store, tmp_path):
    sqlite = NoteGraph(tmp_path / "g.sqlite3")
    notes = [
        note(f"n{i}", user_id=("u1", "u2", None)[i % 3], agent_id=("g", None)[i % 2], session_id=("s", None)[i % 4 // 2],
             archived=i % 5 == 0, metadata=METADATA[i % len(METADATA)],
             created_at=T + timedelta(seconds=i), updated_at=T + timedelta(seconds=i))
        for i in range(36)
    ]
    for graph in (store, sqlite):
        with graph.transaction():
            for n in notes:
                graph.insert(n, np.ones(4))
    for where in FILTERS:
        expected = [n.id for n in notes if where.admits(n)]
        assert [n.id for n in store.select(where)] == expected, where
        assert [n.id for n in sqlite.select(where)] == expected, where
        assert set(store.embeddings_where(where, 100)) == set(expected)
    assert [n.id for n in store.select(NoteFilter(), limit=2, offset=1)] == [n.id for n in sqlite.select(NoteFilter(), 2, 1)]
    assert store.embeddings_where(NoteFilter(), 3) is None
    sqlite.close()


def test_the_ledger_runs_its_sqlite_statements_on_postgres(store):
    ledger = Ledger(store.connection)
    Ledger(store.connection)  # reopening finds its table
    fact = Fact(prompt="Alice lives in", target="Lisbon")
    with store.transaction():
        ledger.add("a", "e1", fact, "grace", "pending", T, scope="u1")
        ledger.add("b", None, Fact(prompt="Bob lives in", target="Paris"), "grace", "known", T)
    assert ledger.holds("x", fact) and not ledger.holds("x", Fact(prompt="Carol lives in", target="Rome"))
    assert ledger.set_status("e1", "applied", T, expect=["pending"]) is True
    assert ledger.set_status("e1", "applied", T, expect=["pending"]) is False
    assert [(e.note_id, e.status) for e in ledger.entries()] == [("a", "applied"), ("b", "known")]
    assert ledger.scopes() == {"e1": "u1"}
    ledger.retract_note("a", T)
    assert [e.status for e in ledger.entries("a")] == ["retracting"]


def test_the_write_lock_serializes_two_stores_on_one_database(postgres_url):
    first, second = PostgresNoteGraph(postgres_url), PostgresNoteGraph(postgres_url)
    events: list[str] = []
    holding, waiting = threading.Event(), threading.Event()

    def other() -> None:
        holding.wait()
        waiting.set()
        with second.lock():
            events.append("second")

    thread = threading.Thread(target=other)
    thread.start()
    try:
        with first.lock():
            with first.lock():  # reentrant in one thread
                holding.set()
                waiting.wait()
                with psycopg.connect(postgres_url) as probe:  # the other session is blocked on our lock
                    while not probe.execute(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    ).fetchone()[0]:
                        pass
                events.append("first")
        thread.join()
        assert events == ["first", "second"]
        with first.job_lock() as held, second.job_lock(wait=False) as other_held:
            assert held and not other_held
    finally:
        first.close()
        second.close()


def test_a_lock_granted_before_a_failure_is_released(postgres_url):
    """The write lock reads its checks in the round trip that takes it: when those fail, the pooled
    connection must not go back to the pool still holding the lock, or every replica waits on it."""
    from agentmem.errors import StoreCorruptedError
    from agentmem.stores.postgres_locks import JOB_LOCK

    first, second = PostgresNoteGraph(postgres_url), PostgresNoteGraph(postgres_url)
    try:
        with pytest.raises(StoreCorruptedError):
            with first._advisory(JOB_LOCK, then=[("SELECT 1 / 0", ())]):
                pass
        with second.job_lock(wait=False) as held:
            assert held
    finally:
        first.close()
        second.close()


def test_an_unreadable_row_is_quarantined_not_fatal(store, postgres_url):
    with store.transaction():
        store.insert(note("a"), np.ones(4))
        store.insert(note("b"), np.ones(4))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE notes SET keywords = 'not json' WHERE id = 'b'")
    assert set(store.load(["a", "b"])) == {"a"} and "b" in store.unreadable
    assert store.quarantine(dict(store.unreadable)) == ["b"]
    assert store.all_ids() == {"a"} and [q["id"] for q in store.quarantined()] == ["b"]


def test_an_unreachable_server_is_a_typed_error(postgres_server):
    url = postgres_server.url("no_such_database")
    with pytest.raises(StoreUnavailableError):
        PostgresNoteGraph(url)


def test_a_published_folder_reaches_another_host_s_folder_whole_and_versioned(store, tmp_path):
    shared = store.shared_folders
    assert shared.version("editor") is None and shared.fetch("editor", tmp_path / "b" / "editor") is None
    source = tmp_path / "a" / "editor"
    (source / "1").mkdir(parents=True)
    (source / "1" / "state.bin").write_bytes(b"\x00\x01" * 1000)
    (source / "CURRENT").write_text("1")
    assert shared.publish("editor", source, based_on=None) == 1
    target = tmp_path / "b" / "editor"
    assert shared.fetch("editor", target) == 1 and (target / "1" / "state.bin").read_bytes() == b"\x00\x01" * 1000
    (source / "2").mkdir()
    (source / "CURRENT").write_text("2")
    shutil.rmtree(source / "1")
    assert shared.publish("editor", source, based_on=1) == 2 and shared.version("editor") == 2
    assert shared.fetch("editor", target) == 2
    assert (target / "CURRENT").read_text() == "2" and not (target / "1").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["editor"]  # no staging left behind


def test_meanwhile_runs_while_the_commit_is_on_its_way(store, postgres_url):
    """The COMMIT is sent before `meanwhile` runs: another session sees the row from inside it."""
    seen = []

    def wait_for_the_row():
        with psycopg.connect(postgres_url) as other:
            deadline = time.monotonic() + 10
            while not seen and time.monotonic() < deadline:
                seen.extend(other.execute("SELECT id FROM notes").fetchall())
                time.sleep(0.01)

    with store.transaction(meanwhile=wait_for_the_row):
        store.insert(note("a"), np.ones(4))
    assert seen == [("a",)]


def test_outbox_rows_cleared_while_a_commit_was_on_its_way_go_with_the_section_s_next_round_trip(
    store, postgres_url
):
    def outbox() -> list[str]:
        with psycopg.connect(postgres_url) as other:
            return [row[0] for row in other.execute("SELECT note_id FROM outbox ORDER BY note_id")]

    seen = []
    with store.lock():
        with store.transaction(meanwhile=lambda: store.clear_pending(["a"])):
            store.insert(note("a"), np.ones(4))
        seen.append(outbox())  # committed; the delete waits for the next round trip
        with store.transaction():
            store.insert(note("b"), np.ones(4))
        seen.append(outbox())  # it went first in the next transaction
        with store.transaction(meanwhile=lambda: store.clear_pending(["b"])):
            store.set_fields("b", strength=2.0)
        seen.append(outbox())
    seen.append(outbox())  # with the lock's release
    assert seen == [["a"], ["b"], ["b"], []]


def test_a_commit_that_fails_after_its_meanwhile_cleared_rows_keeps_them(store, postgres_url):
    with store.transaction():
        store.insert(note("a"), np.ones(4))
    with store.lock():
        with pytest.raises(InvalidInputError):
            with store.transaction(meanwhile=lambda: store.clear_pending(["a"])):
                store.insert(note("a", "the same id again"), np.ones(4))  # refused with the commit's replies
    with psycopg.connect(postgres_url) as other:
        assert other.execute("SELECT note_id FROM outbox").fetchall() == [("a",)]
    assert store.get("a").text == "note a"


def test_deferred_bookkeeping_failing_at_the_release_is_logged_and_the_lock_released(store, postgres_url, caplog):
    from agentmem.stores.postgres_locks import WRITE_LOCK

    with store.lock():
        store._sessions.defer([("SELECT 1 / 0", [()])])
    assert "was lost" in caplog.text
    with psycopg.connect(postgres_url) as other:
        assert other.execute("SELECT pg_try_advisory_lock(%s)", (WRITE_LOCK,)).fetchone()[0]


def test_an_expected_session_s_latest_vector_comes_with_the_lock_and_holds_until_a_write(store, monkeypatch):
    with store.transaction():
        store.insert(note("a", user_id="u", session_id="s"), np.ones(4), in_context=np.full(4, 2.0))
    run = store._run
    statements = []
    monkeypatch.setattr(store, "_run", lambda sql, params=(): statements.append(sql) or run(sql, params))
    store.expect_session(("u", None, "s"))
    with store.lock():
        assert store.session_vector(("u", None, "s")).tolist() == [2, 2, 2, 2]
        assert statements == []  # read in the lock's own round trip
        assert store.session_vector(("u", None, "s")).tolist() == [2, 2, 2, 2]  # once; then read again
        assert len(statements) == 1
        store.expect_session(("u", None, "s"))
    with store.lock():  # a write in the section: the vector read with the lock no longer holds
        with store.transaction():
            store.insert(note("b", user_id="u", session_id="s"), np.full(4, 3.0))
        assert store.session_vector(("u", None, "s")).tolist() == [3, 3, 3, 3]
        assert store.session_vector(("v", None, "s")) is None


def test_expected_loads_come_with_the_lock_and_answer_the_entries_and_the_load_until_a_write(store, monkeypatch):
    """A recall's index entries and its candidates (the notes its index search found, and its full-text ones) were
    read in two round trips after the lock's; they now come in the lock's own, and answer as reads of their own would."""
    with store.transaction():
        store.set_meta("embedding_dim", "4")  # as a memory's embedder sets it: read once, then known
        for name in "abc":
            store.insert(note(name, user_id="u"), np.full(4, ord(name), dtype=np.float32))
    tokens = dict(store._run("SELECT id, index_id FROM notes"))
    wanted = {"a", "b", "c", "gone"}
    with store.lock():
        own_entries = store.index_entries([tokens[n] for n in "abc"])
        own = store.load(wanted, links=False, vectors_of={"c"})
    reads = []
    for name in ("_run", "_read_notes"):
        read = getattr(store, name)
        monkeypatch.setattr(store, name, lambda sql, params=(), read=read: reads.append(sql) or read(sql, params))
    # full-text candidates: c (the index found it too) and one forgotten meanwhile; the index found a, b, c
    store.expect_loads(["c", "gone"], [tokens[n] for n in "abc"])
    with store.lock():
        assert store.index_entries([tokens["a"], tokens["c"]]) == {t: own_entries[t] for t in (tokens["a"], tokens["c"])}
        ahead = store.load(wanted, links=False, vectors_of={"c"})
        assert reads == []  # all read in the lock's round trip
        assert list(ahead) == list(own) == ["a", "b", "c"]
        assert [n for n, _ in ahead.values()] == [n for n, _ in own.values()]
        assert ahead["a"][1] is None and ahead["c"][1].tolist() == [ord("c")] * 4
        assert store.load(["c"], links=True, vectors_of=[])["c"] == (own["c"][0], None)  # validated, with links
        ranked = store.candidates(wanted, vectors_of={"c"})  # as a recall reads them
        assert list(ranked) == ["a", "b", "c"] and ranked["c"][1].tolist() == [ord("c")] * 4
        assert reads == []
        store.load(["a"], links=False, vectors_of={"a"})  # a's vector was not read ahead
        store.index_entries(["another token"])
        assert len(reads) == 2
        with store.transaction():
            store.set_fields_many({"c": {"recall_count": 5}})
        assert store.load(["c"], links=False, vectors_of={"c"})["c"][0].recall_count == 5
        assert len(reads) == 3  # a write ends what was read ahead
    store.expect_loads(["a"], [tokens["b"]])
    with store.lock():
        pass
    with store.lock():  # a hint is for the next section alone
        store.load(["a"], links=False)
    assert len(reads) == 4


def test_expected_neighbours_come_with_the_lock_and_answer_the_entries_and_the_neighbours_until_a_write(
    store, monkeypatch
):
    """A remember's candidates (the notes behind the index tokens its search made ahead found) were read with their
    entries in a round trip after the lock's; they now come in the lock's own, and answer as that read would."""
    with store.transaction():
        store.set_meta("embedding_dim", "4")
        for name in "abc":
            store.insert(note(name, user_id="u"), np.full(4, ord(name), dtype=np.float32))
        store.clear_pending(["a", "b", "c"])
    tokens = dict(store._run("SELECT id, index_id FROM notes"))
    found = [tokens["a"], tokens["b"], "a token of a note forgotten since"]
    own_entries, own = store.index_entries(found), store.neighbours(["a", "b"], "u")  # outside a lock: plain reads
    reads = []
    for name in ("_run", "_read_notes"):
        read = getattr(store, name)
        monkeypatch.setattr(store, name, lambda sql, params=(), read=read: reads.append(sql) or read(sql, params))
    store.expect_neighbours(found)
    with store.lock():
        assert store.neighbours([], "u").waiting == set()
        assert store.index_entries(found) == own_entries and len(own_entries) == 2
        ahead = store.neighbours(["a", "b"], "u")
        assert reads == []  # all read in the lock's round trip
        assert {i: e.tolist() for i, e in ahead.embeddings.items()} == {i: e.tolist() for i, e in own.embeddings.items()}
        assert ahead.notes({"a", "b"}) == own.notes({"a", "b"})
        store.neighbours(["a", "c"], "u")  # c was not found ahead (as a note changed since the search's mark)
        store.index_entries([tokens["c"]])  # not expected
        assert len(reads) == 2
        with store.transaction():
            store.set_fields_many({"a": {"recall_count": 5}})
        assert store.index_entries([tokens["a"]])[tokens["a"]].note_id == "a" and len(reads) == 3  # a write ends it
    with store.transaction():
        store.insert(note("d", user_id="u"), np.ones(4))  # waits in the outbox
    store.expect_neighbours(found)
    with store.lock():
        assert store.neighbours([], "u").waiting == {"d"}
        assert store.index_entries(found) == own_entries  # entries are entries, waiting or not
        assert len(reads) == 4  # the waiting notes were read, not the entries


def rows_scanned(plan: dict) -> int:
    """The rows every scan of an `EXPLAIN (ANALYZE, FORMAT JSON)` plan read: those it kept and those its filter dropped."""
    own = plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0) if "Scan" in plan["Node Type"] else 0
    return own + sum(rows_scanned(child) for child in plan.get("Plans", []))


@pytest.mark.parametrize("agent", [None, "a"])
def test_a_session_s_latest_vector_is_read_without_going_through_the_session(store, postgres_url, agent):
    """Every remember in a session reads the session's latest vector under the write lock: a long session, whose
    notes are older than others', was sorted whole (of no agent) or found by walking back through every newer note."""
    with store.transaction():
        for i in range(1500):
            store.insert(note(f"old{i}", user_id="u", agent_id=agent, session_id="old"), np.full(4, i, dtype=np.float32))
        for i in range(1500):
            store.insert(note(f"new{i}", user_id="u", agent_id=agent, session_id=f"s{i % 30}"), np.ones(4))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("ANALYZE notes")
    assert store.session_vector(("u", agent, "old")).tolist() == [1499] * 4
    assert store.session_vector(("u", agent, "old"), before="old1000").tolist() == [999] * 4
    assert store.session_vector(("u", "another agent", "old")) is None
    for before in (None, "old1000"):
        sql, params = store._latest_in_session(("u", agent, "old"), before)
        with psycopg.connect(postgres_url) as conn:
            plan = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {psycopg_sql(sql)}", params).fetchone()[0][0]["Plan"]
        assert rows_scanned(plan) <= 2, plan  # the latest note (and the `before` note's own row)


def end_sessions(url: str) -> int:
    """End every other session on the database, as a server restart or a failover does; returns how many."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()[0]


def test_calls_after_the_server_ended_the_store_s_sessions_succeed(store, postgres_url):
    """The pool's idle connections are dead once the server ended their sessions: none may be lent."""
    with store.lock(), store.outbox_claim(None):  # two connections in the pool
        with store.transaction():
            store.insert(note("a"), np.ones(4))
    assert end_sessions(postgres_url) >= 2
    assert store.count() == 1
    with store.lock(), store.transaction():
        store.insert(note("b"), np.ones(4))
    assert store.all_ids() == {"a", "b"}


def test_a_statement_failing_inside_a_write_section_is_a_typed_error(store, postgres_url):
    with store.lock():
        end_sessions(postgres_url)  # the section's own session too
        with pytest.raises(StoreUnavailableError):
            store.count()
    assert store.count() == 0  # the next call has a live connection


def test_a_big_float_in_metadata_reads_back_as_a_float_and_escaped_tags_of_earlier_versions_read(postgres_url):
    """jsonb prints 6.022e23 as a 24-digit integer that no note may hold: it is read as the float it was
    (the note used to be quarantined at its next read). Earlier versions wrote tags with their non-ASCII
    letters escaped."""
    store = PostgresNoteGraph(postgres_url)
    try:
        with store.transaction():
            store.insert(note("a", metadata={"avogadro": 6.022e23, "n": 1}), np.ones(4))
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            assert conn.execute("SELECT metadata ->> 'avogadro' FROM notes").fetchone()[0] == "602200000000000000000000"
            conn.execute("""UPDATE notes SET tags = '["\\u00fcn\\u00efc\\u00f6d\\u00e9"]'""")
        assert store.get("a").metadata == {"avogadro": 6.022e23, "n": 1} and store.unreadable == {}
        assert store.get("a").tags == ["ünïcödé"]
        assert [n.id for n in store.select(NoteFilter(metadata={"avogadro": 6.022e23}))] == ["a"]
    finally:
        store.close()


"""New notes' index write made in their transaction, on each note store with an embedded index."""
from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta

import psycopg
import pytest

from agentmem import Memory
from agentmem.errors import AgentMemError, StoreUnavailableError

from ..conftest import T0
from ..test_memory import index_ids


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path, monkeypatch):
    """Where a memory with an embedded index lives: a folder, or a PostgreSQL database (its
    index then in the local folder under AGENTMEM_HOME)."""
    if request.param == "sqlite":
        return tmp_path / "m"
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "home"))
    return request.getfixturevalue("postgres_url")


def failing(error: Exception):
    def fail(*args, **kwargs):
        raise error
    return fail


# a COMMIT that the server refuses, after the statements before it ran
REFUSE_AT_COMMIT = """
CREATE FUNCTION refuse_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE 'refused at commit'; END $$;
CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON notes DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION refuse_commit();
"""


@contextmanager
def commits_refused(location, mem: Memory, monkeypatch):
    """Write transactions fail once their vectors went to the index: on PostgreSQL the server
    refuses the COMMIT (the index write runs while it is on its way); on SQLite the write fails
    inside the transaction, just before its COMMIT."""
    if not isinstance(location, str):
        monkeypatch.setattr(mem._graph, "clear_pending", failing(StoreUnavailableError("the disk went away")))
        yield
        return
    with psycopg.connect(location, autocommit=True) as conn:
        conn.execute(REFUSE_AT_COMMIT)
        try:
            yield
        finally:
            conn.execute("DROP TRIGGER refuse_at_commit ON notes; DROP FUNCTION refuse_commit()")


def counted_locks(mem: Memory, monkeypatch) -> list[int]:
    """A list that grows by one each time the memory takes its store's lock."""
    taken: list[int] = []
    lock = mem._graph.lock

    @contextmanager
    def counted():
        taken.append(1)
        with lock():
            yield

    monkeypatch.setattr(mem._graph, "lock", counted)
    return taken


def test_a_remember_takes_the_store_lock_once_and_leaves_no_index_write_behind(location, embedder, monkeypatch):
    with Memory(location, embedder=embedder) as mem:
        first = mem.remember("Nora rows on the lake every morning", at=T0)
        taken = counted_locks(mem, monkeypatch)
        second = mem.remember("Nora's boat is a red wooden skiff", at=T0)
        mem._sections.wait()
        assert len(taken) == 1  # the write section; the index was written inside it
        assert not mem._graph.has_pending()
        assert index_ids(mem) == {first.id, second.id}


def test_a_write_that_fails_after_its_vectors_went_takes_them_back(location, embedder, monkeypatch):
    with Memory(location, embedder=embedder) as mem:
        kept = mem.remember("Omar bakes sourdough on Sundays", at=T0)
        with commits_refused(location, mem, monkeypatch), pytest.raises(AgentMemError):
            mem.remember_many(["Omar's starter is ten years old", "Omar sells bread at the market"], at=T0)
        monkeypatch.undo()
        assert index_ids(mem) == {kept.id} and mem.stats().notes == 1 and not mem._graph.has_pending()


def test_vectors_a_failed_write_cannot_take_back_are_skipped_and_gone_after_reopening(location, embedder, monkeypatch):
    with Memory(location, embedder=embedder) as mem:
        kept = mem.remember("Pia climbs in the Dolomites", at=T0)
        monkeypatch.setattr(mem._index, "delete", failing(StoreUnavailableError("the index went away too")))
        with commits_refused(location, mem, monkeypatch), pytest.raises(AgentMemError):
            mem.remember("Pia's rope is sixty metres long", at=T0)
        monkeypatch.undo()
        assert len(mem._index.tokens()) == 2  # a stray no note claims
        assert [h.note.id for h in mem.recall("Pia's climbing rope", k=5, at=T0)] == [kept.id]
    with Memory(location, embedder=embedder) as mem:
        assert index_ids(mem) == {kept.id} and len(mem._index.tokens()) == 1


def test_an_index_that_refuses_the_write_before_the_commit_gets_it_after(location, embedder, monkeypatch):
    with Memory(location, embedder=embedder) as mem:
        upsert = mem._index.upsert
        calls = []

        def once_refused(notes, embeddings):
            calls.append(len(notes))
            if len(calls) == 1:
                raise StoreUnavailableError("the index is busy")
            upsert(notes, embeddings)

        monkeypatch.setattr(mem._index, "upsert", once_refused)
        note = mem.remember("Quinn repairs old radios", at=T0)
        assert index_ids(mem) == {note.id} and not mem._graph.has_pending() and calls == [1, 1]


def test_a_write_whose_commit_landed_before_its_call_failed_keeps_its_vectors(location, embedder, monkeypatch):
    """The connection lost with the COMMIT sent: the note may be stored, with no outbox row left
    to replay its vector, so the vector stays; and a retry finds the note instead of copying it."""
    with Memory(location, embedder=embedder) as mem:
        transaction = mem._graph.transaction

        @contextmanager
        def lost_after_the_commit(bookkeeping=False, meanwhile=None):
            with transaction(bookkeeping, meanwhile):
                yield
            raise StoreUnavailableError("the connection was lost after the commit reached the server")

        monkeypatch.setattr(mem._graph, "transaction", lost_after_the_commit)
        with pytest.raises(StoreUnavailableError):
            mem.remember("Saul tunes pianos in Vienna", at=T0)
        monkeypatch.undo()
        [note] = mem.notes()
        assert index_ids(mem) == {note.id} and not mem._graph.has_pending()
        assert mem.remember("Saul tunes pianos in Vienna", at=T0).id == note.id


def test_a_duplicate_takes_the_lock_once_and_a_revived_one_reaches_the_index(location, embedder, monkeypatch):
    with Memory(location, embedder=embedder) as mem:
        note = mem.remember("Tess walks her dog at dawn", at=T0)
        taken = counted_locks(mem, monkeypatch)
        assert mem.remember("Tess walks her dog at dawn", at=T0).id == note.id
        mem._sections.wait()
        assert len(taken) == 1  # nothing of a reinforced duplicate waits for the index
        monkeypatch.undo()
        assert mem.decay(at=T0 + timedelta(days=3650)).archived == [note.id]
        later = T0 + timedelta(days=3651)
        assert mem.remember("Tess walks her dog at dawn", at=later).id == note.id
        assert not mem.get(note.id).archived and not mem._graph.has_pending()
        assert [h.note.id for h in mem.recall("Tess's dog", k=1, at=later)] == [note.id]

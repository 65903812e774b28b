"""The Memory facade on the real MiniLM embedder and a real embedded Chroma on disk."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from agentmem import (
    AgentMemError, Fact, InvalidInputError, Memory, MemoryConfig, MemoryItem, ModelUnavailableError, Note,
    NoteNotFoundError, StoreClosedError, StoreUnavailableError,
)
from agentmem import reading
from agentmem.encoding import length_batches
from agentmem.stores import NoteGraph, VectorIndex
from agentmem.stores.postgres import PostgresNoteGraph

from .conftest import T0


def index_ids(mem: Memory) -> set[str]:
    """The notes the vector index holds, by note id (its own ids are keyed hashes); strays keep their token."""
    mem.stats()  # a public call: it lets the index writes in flight finish first
    by_token = mem._graph.all_tokens()
    return {by_token.get(token, token) for token in mem._index.tokens()}


@pytest.fixture
def memory(memory_location, embedder):
    """This suite runs on both note stores: SQLite in a folder, and PostgreSQL (with a Chroma server)."""
    with Memory(**memory_location(), embedder=embedder) as mem:
        yield mem


# ---- remember / recall ------------------------------------------------------------


def test_remember_builds_an_enriched_note_without_any_llm(memory):
    note = memory.remember(
        "Alice moved to Lisbon in 2024", user_id="alice", at=T0, tags=["home"],
        metadata={"source": "chat"}, fact=Fact(prompt="Alice lives in", target="Lisbon"),
    )
    assert note.text == "Alice moved to Lisbon in 2024"
    assert {"alice", "lisbon", "moved"} <= set(note.keywords)
    assert note.tags[0] == "home" and "lisbon" in note.tags
    assert note.context.startswith("2024-05-01 · alice")
    assert note.created_at == note.last_recalled == T0
    assert note.user_id == "alice" and note.fact.target == "Lisbon"
    assert memory.get(note.id) == note


def test_recall_finds_the_relevant_note_and_explains_why(memory):
    memory.remember("Bob plays chess every Sunday at the club", user_id="bob", at=T0)
    target = memory.remember("Alice moved to Lisbon in 2024", user_id="alice", at=T0)
    memory.remember("The quarterly report is due on Friday", user_id="alice", at=T0)
    hits = memory.recall("Where does Alice live now?", user_id="alice", at=T0 + timedelta(hours=1))
    assert hits[0].note.id == target.id
    assert {h.note.user_id for h in hits} == {"alice"}
    why = hits[0].why
    assert why.similarity > 0.3 and why.lexical > 0 and 0 < why.retention <= 1
    assert hits[0].score > hits[-1].score


def searched_ahead_then(mem: Memory, monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], object]) -> list:
    """Have `mem`'s recalls run `meanwhile` right after the index search each makes before its write section
    (`ReadPath.dense_ahead`), as another replica's call may; returns the list those searches go to."""
    search_ahead, ahead = mem._reader.dense_ahead, []

    def and_then(*args):
        ahead.append(search_ahead(*args))
        meanwhile()
        return ahead[-1]

    monkeypatch.setattr(mem._reader, "dense_ahead", and_then)
    return ahead


def test_a_note_written_elsewhere_after_the_index_was_searched_ahead_is_recalled(memory_location, embedder, monkeypatch):
    """A recall searches the index before its write section; what another replica wrote since (here between that
    search and the section) is scored in the section, or searched for again, not missed."""
    with Memory(**memory_location(), embedder=embedder) as mem, Memory(**memory_location(), embedder=embedder) as other:
        mem.remember("Bob plays chess every Sunday at the club", at=T0)  # nothing to link the new note to
        written = []
        ahead = searched_ahead_then(
            mem, monkeypatch, lambda: written.append(other.remember("Dana keeps bees on the roof of the library", at=T0))
        )
        hits = mem.recall("Who keeps bees on the roof of the library?", at=T0)
        assert ahead[0] is not None and written[0].links == []
        # found by its vector: the full-text search ran before it was written
        assert hits[0].note.id == written[0].id and hits[0].why.similarity > 0.75


def test_a_note_forgotten_elsewhere_after_the_index_was_searched_ahead_is_not_recalled(
    memory_location, embedder, monkeypatch
):
    with Memory(**memory_location(), embedder=embedder) as mem, Memory(**memory_location(), embedder=embedder) as other:
        gone = mem.remember("Dana keeps bees on the roof of the library", at=T0)
        kept = mem.remember("Dana sells the library's honey at the market", at=T0)
        ahead = searched_ahead_then(mem, monkeypatch, lambda: other.forget(gone.id))
        hits = mem.recall("Who keeps bees on the library's roof?", at=T0)
        assert ahead[0] is not None and [h.note.id for h in hits] == [kept.id]


def test_notes_re_embedded_elsewhere_after_the_index_was_searched_ahead_are_ranked_by_their_new_text(
    memory_location, embedder, monkeypatch
):
    """The search made ahead found them by their old vectors; the section scores them by their stored ones."""
    with Memory(**memory_location(), embedder=embedder) as mem, Memory(**memory_location(), embedder=embedder) as other:
        dana = mem.remember("Dana keeps bees on the roof of the library", at=T0)
        carl = mem.remember("Carl repairs bicycles in his garage", at=T0)

        def rewrite_both():
            other.update(dana.id, text="Dana repairs bicycles in her garage", at=T0)
            other.update(carl.id, text="Carl keeps bees on the roof of the library", at=T0)

        ahead = searched_ahead_then(mem, monkeypatch, rewrite_both)
        hits = mem.recall("Who is the beekeeper?", at=T0)
        assert ahead[0] is not None and len(ahead[0].found[1][0]) == 2  # both found by their old vectors
        assert [hit.note.id for hit in hits] == [carl.id, dana.id]
        assert hits[0].note.text.startswith("Carl keeps bees") and hits[0].why.similarity > hits[1].why.similarity


def test_a_note_waiting_for_its_index_write_when_a_recall_searches_ahead_is_recalled(
    memory_location, embedder, monkeypatch
):
    """Another replica stored it, but its index write failed: the search made ahead cannot find it, so the section
    scores it (PostgreSQL's mark names the notes waiting; SQLite's section searches again)."""
    location = memory_location()
    with Memory(**location, embedder=embedder) as mem, Memory(**location, embedder=embedder) as other:
        mem.remember("Carl repairs bicycles in his garage", at=T0)

        def unreachable(*args, **kwargs):
            raise StoreUnavailableError("the index is down")

        monkeypatch.setattr(other._sync.index, "upsert", unreachable)
        bees = other.remember("Dana keeps bees on the roof of the library", at=T0)
        assert other.stats().pending_sync == 1
        ahead = searched_ahead_then(mem, monkeypatch, lambda: None)
        hits = mem.recall("Who is the beekeeper?", at=T0)
        if isinstance(location["path"], str):  # PostgreSQL: its mark names the waiting note
            assert ahead[0] is not None and bees.id not in {i for i, _ in ahead[0].found[1][0]}
        else:  # SQLite: no mark while an index write waits
            assert ahead == [None]
        assert hits[0].note.id == bees.id


def test_a_recall_searches_again_in_its_section_when_too_many_notes_changed_since_its_search_ahead(
    memory_location, embedder, monkeypatch
):
    with Memory(**memory_location(), embedder=embedder) as mem, Memory(**memory_location(), embedder=embedder) as other:
        mem.remember("Carl repairs bicycles in his garage", at=T0)

        def two_written():
            other.remember("Dana keeps bees on the roof of the library", at=T0)
            other.remember("Erin bakes rye bread on Saturdays", at=T0)

        ahead = searched_ahead_then(mem, monkeypatch, two_written)
        search, searches = mem._sync.search, []
        monkeypatch.setattr(reading, "RESCORED_LIMIT", 1)
        monkeypatch.setattr(mem._sync, "search", lambda *args: searches.append(args[3:]) or search(*args))
        hits = mem.recall("Who is the beekeeper?", at=T0)
        assert ahead[0] is not None and searches == [()]  # the section's search, made whole: not the one made ahead
        assert hits[0].note.text.startswith("Dana keeps bees")


def test_a_recall_searched_ahead_while_another_replica_rebuilds_the_index_misses_nothing(
    memory_location, embedder, monkeypatch
):
    """A rebuild empties the index, then refills it, under the store's lock; a search made ahead, outside that lock,
    can meet the index half refilled. The rebuild's commit tells the recall's section to search again."""
    location = memory_location()
    with Memory(**location, embedder=embedder) as mem, Memory(**location, embedder=embedder) as other:
        bees = mem.remember("Dana keeps bees on the roof of the library", at=T0)
        assert mem.stats().pending_sync == 0  # its index write is done: the rebuild alone puts it back
        emptied, searched, failed = threading.Event(), threading.Event(), []
        upsert = other._sync.index.upsert

        def once_the_recall_searched(*args, **kwargs):  # the rebuild's first refill waits for the search ahead
            emptied.set()
            if not searched.wait(30):
                raise AssertionError("the recall never searched ahead")
            return upsert(*args, **kwargs)

        def rebuild():
            try:
                other.rebuild_index()
            except BaseException as exc:
                failed.append(exc)

        monkeypatch.setattr(other._sync.index, "upsert", once_the_recall_searched)
        rebuilding = threading.Thread(target=rebuild, daemon=True)
        rebuilding.start()
        assert emptied.wait(30)
        ahead = searched_ahead_then(mem, monkeypatch, searched.set)
        hits = mem.recall("Who is the beekeeper?", at=T0)  # no word in common: found by its vector alone
        rebuilding.join(30)
        assert not rebuilding.is_alive() and failed == []
        # on a Chroma server the search ahead met the new collection, empty; an embedded index's handle failed
        assert (ahead[0] is not None) == isinstance(location["path"], str)
        assert [hit.note.id for hit in hits] == [bees.id]


def test_a_recall_whose_search_mark_comes_after_the_query_s_encoding_does_not_wait_on_itself(memory, monkeypatch):
    """On PostgreSQL the mark is taken in a helper thread, once this process's index writes are done, under its lock:
    a recall that waited for it while holding that lock waited forever (here the helpers start late)."""
    memory.remember("Dana keeps bees on the roof of the library", at=T0)
    reading = memory._sections.reading

    def late_in_helpers(*args, **kwargs):
        if threading.current_thread().name.startswith("agentmem-helper"):
            time.sleep(0.3)
        return reading(*args, **kwargs)

    monkeypatch.setattr(memory._sections, "reading", late_in_helpers)
    hits = []
    recalling = threading.Thread(target=lambda: hits.extend(memory.recall("Who keeps bees?", at=T0)), daemon=True)
    recalling.start()
    recalling.join(20)
    assert not recalling.is_alive() and len(hits) == 1


def reads_in_write_sections(mem: Memory, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements a PostgreSQL store reads from now on inside its write lock, besides the lock's own."""
    reads, lock = [], mem._graph.lock
    section = threading.local()

    def counted(read):
        def reading(sql, params=()):
            if getattr(section, "inside", False):
                reads.append(sql)
            return read(sql, params)
        return reading

    @contextlib.contextmanager
    def marked():
        with lock():
            section.inside = True
            try:
                yield
            finally:
                section.inside = False

    monkeypatch.setattr(mem._graph, "_read_notes", counted(mem._graph._read_notes))
    monkeypatch.setattr(mem._graph, "_run", counted(mem._graph._run))
    monkeypatch.setattr(mem._graph, "lock", marked)
    return reads


def test_a_recall_on_postgresql_reads_its_candidates_with_its_lock(memory_location, embedder, monkeypatch):
    """Its index entries and candidates come in the lock's own round trip: nothing more is read in the section."""
    location = memory_location()
    if not isinstance(location["path"], str):
        pytest.skip("a PostgreSQL store's round trips")
    with Memory(**location, embedder=embedder) as mem:
        for text in ("Dana keeps bees on the roof of the library", "Dana sells the library's honey at the market",
                     "Bob plays chess every Sunday at the club"):
            mem.remember(text, at=T0)
        question = "Who sells honey at the market?"
        lexical, embed, searched = mem._reader.lexical, mem._embed, threading.Event()
        monkeypatch.setattr(mem._reader, "lexical", lambda *args: (lexical(*args), searched.set())[0])
        monkeypatch.setattr(mem, "_embed", lambda texts: (searched.wait(10), embed(texts))[1])
        reads = reads_in_write_sections(mem, monkeypatch)
        hits = mem.recall(question, at=T0)
        assert hits[0].note.text == "Dana sells the library's honey at the market" and len(hits) == 3
        assert reads == []


def test_a_remember_on_postgresql_reads_its_neighbours_with_its_lock(memory_location, embedder, monkeypatch):
    """The notes its search made ahead found (their index entries, their own embeddings) and its session's latest
    vector come in the lock's own round trip: the section reads nothing more before it commits."""
    location = memory_location()
    if not isinstance(location["path"], str):
        pytest.skip("a PostgreSQL store's round trips")
    with Memory(**location, embedder=embedder) as mem:
        bees = mem.remember("Dana keeps bees on the roof of the library", session_id="s", at=T0)
        mem.stats()  # its index write is done: the outbox is empty
        reads = reads_in_write_sections(mem, monkeypatch)
        honey = mem.remember("Dana sells the honey of the library's bees", session_id="s", at=T0)
        assert [link.note_id for link in honey.links] == [bees.id]
        assert reads == []


def test_a_reinforce_on_postgresql_reads_its_notes_with_its_lock(memory_location, embedder, monkeypatch):
    """The notes a reinforce names come in the lock's own round trip, links and all; an unknown id is still not
    found."""
    location = memory_location()
    if not isinstance(location["path"], str):
        pytest.skip("a PostgreSQL store's round trips")
    with Memory(**location, embedder=embedder) as mem:
        bees = mem.remember("Dana keeps bees on the roof of the library", at=T0)
        honey = mem.remember("Dana sells the honey of the library's bees", at=T0)
        mem.stats()  # its index write is done
        reads = reads_in_write_sections(mem, monkeypatch)
        [reinforced] = mem.reinforce([bees.id], at=T0 + timedelta(days=1))
        assert reinforced.recall_count == 1 and [link.note_id for link in reinforced.links] == [honey.id]
        with pytest.raises(NoteNotFoundError):
            mem.reinforce([bees.id, "0" * 32])
        assert reads == []


def test_a_get_on_postgresql_takes_no_write_lock_unless_its_link_view_is_behind(memory_location, embedder, monkeypatch):
    """A get (or a retention) reads its note with the store's version in one round trip; only a process whose link
    view is behind that version goes through the write section, which catches it up."""
    location = memory_location()
    if not isinstance(location["path"], str):
        pytest.skip("a PostgreSQL store's round trips")
    with Memory(**location, embedder=embedder) as mem, Memory(**location, embedder=embedder) as other:
        bees = mem.remember("Dana keeps bees on the roof of the library", at=T0)
        honey = mem.remember("Dana sells the honey of the library's bees", at=T0)
        mem.stats()  # its index write is done
        locks, lock = [], mem._graph.lock
        monkeypatch.setattr(mem._graph, "lock", lambda: locks.append(1) or lock())
        assert mem.get(honey.id) == honey and [link.note_id for link in mem.get(bees.id).links] == [honey.id]
        assert mem.retention(bees.id, at=T0) == pytest.approx(1.0)
        with pytest.raises(NoteNotFoundError, match="no note with id"):
            mem.get("0" * 32)
        assert locks == []
        more = other.remember("Dana's library bees made forty jars of honey this year", at=T0)
        assert more.id in {link.note_id for link in other.get(bees.id).links}
        assert more.id in {link.note_id for link in mem.get(bees.id).links}  # caught up, in a write section
        assert locks == [1]
        assert mem.get(more.id) == other.get(more.id) and locks == [1]
        other.forget(honey.id)
        with pytest.raises(NoteNotFoundError, match="no note with id"):  # behind again: through the section
            mem.get(honey.id)
        assert locks == [1, 1] and [link.note_id for link in mem.get(bees.id).links] == [more.id]


def test_a_get_of_a_row_that_cannot_be_read_is_not_found_and_the_row_goes_to_quarantine(memory):
    note = memory.remember("Quentin's locker code is 4471", at=T0)
    memory._graph.set_fields(note.id, fact="{broken")  # as a hand edit or an older release may leave a row
    with pytest.raises(NoteNotFoundError):
        memory.get(note.id)
    memory.stats()  # the next section that ends well quarantines what a read set aside
    assert [entry["id"] for entry in memory.quarantined()] == [note.id]


def test_recall_reinforces_what_it_returns(memory):
    note = memory.remember("Carol's cat is called Miso", at=T0)
    other = memory.remember("The train to Porto leaves at nine", at=T0)
    later = T0 + timedelta(days=2)
    [hit] = memory.recall("What is the name of Carol's cat?", k=1, at=later)
    assert hit.note.id == note.id
    stored = memory.get(note.id)
    assert stored.recall_count == 1 and stored.strength == 2.0 and stored.last_recalled == later
    assert hit.note == stored
    assert memory.get(other.id).recall_count == 0
    memory.recall("What is the name of Carol's cat?", k=1, at=later, reinforce=False)
    assert memory.get(note.id) == stored  # only looked
    # a stronger note decays more slowly from its new last-recalled time
    assert memory.retention(note.id, at=later + timedelta(days=1)) > memory.retention(other.id, at=T0 + timedelta(days=1))


def test_a_note_forgotten_while_the_query_is_encoded_is_not_recalled(memory, monkeypatch):
    """Recall runs the full-text search while the query is encoded, then ranks; a note the search
    found but another thread forgot in between must not come back."""
    gone = memory.remember("Dana keeps bees on the roof of the library", at=T0)
    kept = memory.remember("Dana sells the library's honey at the market", at=T0)
    question = "Who keeps bees at the library?"
    searched, found = threading.Event(), []
    lexical, embed = memory._reader.lexical, memory._embed

    def lexical_then_signal(*args):
        found.append(lexical(*args))
        searched.set()
        return found[-1]

    def embed_and_forget(texts):
        if texts == [question]:
            assert searched.wait(10)
            memory.forget(gone.id)
        return embed(texts)

    monkeypatch.setattr(memory._reader, "lexical", lexical_then_signal)
    monkeypatch.setattr(memory, "_embed", embed_and_forget)
    hits = memory.recall(question, at=T0)
    assert gone.id in found[0]  # the search did find it
    assert [h.note.id for h in hits] == [kept.id]


def test_the_full_text_search_overlaps_the_index_search_where_threads_read_apart(memory, monkeypatch):
    """On a store whose threads read on connections of their own (PostgreSQL), the full-text search
    is not awaited before the exclusive section: it can still be running while the index is
    searched. On SQLite's one connection it must finish first (it searches under the process lock)."""
    note = memory.remember("Dana keeps bees on the roof of the library", at=T0)
    lexical, dense, search = memory._reader.lexical, memory._reader.dense, memory._reader.search
    index_searched, overlapped, done_before_the_section = threading.Event(), [], []

    def lexical_waiting_for_the_index(*args):
        overlapped.append(index_searched.wait(5 if memory._graph.concurrent_reads else 0))
        return lexical(*args)

    def dense_then_signal(*args):
        index_searched.set()
        return dense(*args)

    def search_noting_the_full_text(*args):
        done_before_the_section.append(args[5].done())  # (query, embedding, k, where, at, searching, ahead)
        return search(*args)

    monkeypatch.setattr(memory._reader, "lexical", lexical_waiting_for_the_index)
    monkeypatch.setattr(memory._reader, "dense", dense_then_signal)
    monkeypatch.setattr(memory._reader, "search", search_noting_the_full_text)
    hits = memory.recall("Who keeps bees at the library?", at=T0)
    assert overlapped == [memory._graph.concurrent_reads]
    if not memory._graph.concurrent_reads:  # the helper searched under the lock the section holds
        assert done_before_the_section == [True]
    assert [h.note.id for h in hits] == [note.id] and hits[0].why.lexical > 0


def test_a_candidate_only_the_full_text_found_is_scored_by_its_stored_vector(memory, monkeypatch):
    """The index's candidates come with their similarity; the others' vectors are read to score them."""
    note = memory.remember("Dana keeps bees on the roof of the library", at=T0)
    query = "Who keeps bees at the library?"
    monkeypatch.setattr(memory._reader, "dense", lambda *args: [])  # the index finds nothing
    [hit] = memory.recall(query, at=T0, reinforce=False)
    stored = memory._graph.load([note.id])[note.id][1]
    assert hit.note.id == note.id and hit.why.lexical > 0
    assert hit.why.similarity == pytest.approx(float(stored @ memory._embed([query])[0]), abs=1e-6)


def test_words_of_any_script_are_keywords_and_found_by_the_full_text(memory, monkeypatch):
    """The word pattern read only ASCII letters: "Zoë" became nothing and "café" became "caf"."""
    note = memory.remember("Zoë opened a café in São Tomé", at=T0)
    assert {"zoë", "café", "são", "tomé"} <= set(note.keywords)
    monkeypatch.setattr(memory._reader, "dense", lambda *args: [])  # only the full text can find it
    [hit] = memory.recall("Zoë's café", at=T0, reinforce=False)
    assert hit.note.id == note.id and hit.why.lexical > 0


def test_scope_and_metadata_filters(memory):
    memory.remember("I like green tea", user_id="u1", agent_id="a", session_id="s1", metadata={"topic": "food"})
    memory.remember("I like green tea with honey", user_id="u2", agent_id="a", session_id="s1", metadata={"topic": "food"})
    memory.remember("I like black coffee", user_id="u1", agent_id="b", session_id="s2", metadata={"topic": "drinks"})
    assert {h.note.user_id for h in memory.recall("tea", user_id="u1")} == {"u1"}
    assert {h.note.agent_id for h in memory.recall("tea", agent_id="b")} == {"b"}
    assert [h.note.session_id for h in memory.recall("tea", user_id="u1", session_id="s2")] == ["s2"]
    assert {h.note.metadata["topic"] for h in memory.recall("tea", filters={"topic": "food"})} == {"food"}
    assert memory.recall("tea", user_id="nobody") == []


def test_remember_many_is_one_batch_with_scope_defaults(memory):
    notes = memory.remember_many(
        ["Dana runs marathons", MemoryItem(text="Dana trains in Berlin", user_id="other"),
         {"text": "Dana's coach is Eli", "tags": ["sport"]}],
        user_id="dana", at=T0,
    )
    assert [n.user_id for n in notes] == ["dana", "other", "dana"]
    assert notes[2].tags[0] == "sport"
    assert index_ids(memory) == {n.id for n in notes}
    assert memory.remember_many([]) == []


def test_remember_many_returns_each_note_as_the_batch_left_it(memory):
    earlier = memory.remember("Dana swims in the lake near Potsdam", user_id="dana", at=T0)
    notes = memory.remember_many(
        ["Dana runs marathons in Berlin", "Dana runs marathons in Berlin every spring with her coach Eli",
         "Dana runs marathons in Berlin", "Dana swims in the lake near Potsdam"],
        user_id="dana", at=T0 + timedelta(hours=1),
    )
    assert notes[2].id == notes[0].id and notes[3].id == earlier.id  # reinforced, not copied
    assert notes[0].links and notes[3].last_recalled > earlier.last_recalled
    for note in notes:  # later drafts evolved and reinforced earlier ones: each is returned as stored
        assert note == memory.get(note.id)


def test_remember_many_rejects_everything_when_one_item_is_bad(memory):
    with pytest.raises(InvalidInputError, match="item 1|text is empty"):
        memory.remember_many(["fine text", {"text": "   "}])
    with pytest.raises(InvalidInputError, match="item 1"):
        memory.remember_many(["fine text", {"txt": "typo"}])
    with pytest.raises(InvalidInputError, match="user: Extra inputs"):   # it was stored as no user's note
        memory.remember_many([{"text": "Frank cooks paella in Valencia", "user": "frank"}])
    with pytest.raises(InvalidInputError, match="rephrase"):   # the rephrases were dropped
        memory.remember_many([{"text": "Frank lives in Valencia",
                               "fact": {"prompt": "Frank lives in", "target": "Valencia", "rephrase": ["x"]}}])
    assert memory.stats().notes == 0 and index_ids(memory) == set()


def test_a_note_written_while_a_batch_is_encoded_is_still_found_as_its_duplicate(memory, embedder, monkeypatch):
    """A batch of several encoder batches searches the index for each one's neighbours while the next
    is encoded, outside the write section; a note written meanwhile (here by another thread) must
    still be found there, or the batch would store the same text twice."""
    repeated = "Dana keeps the spare key of the blue garden shed under the third flower pot on the left"
    texts = [repeated] + [f"Dana wrote entry number {i} in her diary" for i in range(150)]  # the longest goes first
    encode, calls, meanwhile = embedder.encode, [], []

    def encode_with_a_write_meanwhile(sentences, *args, **kwargs):
        calls.append(len(sentences))
        if len(calls) == 3:  # the batch's third encoder batch: the first one's neighbours were searched
            meanwhile.append(memory.remember(repeated, user_id="dana", at=T0))
        return encode(sentences, *args, **kwargs)

    memory.remember("Dana's diary is a green notebook", user_id="dana", at=T0)  # the batch's searches all alike
    monkeypatch.setattr(embedder, "encode", encode_with_a_write_meanwhile)
    notes = memory.remember_many(texts, user_id="dana", at=T0)
    sizes = [len(batch) for batch in length_batches(embedder, texts)]
    assert calls == [*sizes[:3], 1, *sizes[3:]]  # in encoder batches; the other write (1 text) came during the third
    assert [n.text for n in memory.notes(user_id="dana")].count(repeated) == 1
    assert notes[0].id == meanwhile[0].id  # the batch's draft became the note written meanwhile


def test_a_quiet_store_s_batch_is_searched_while_it_is_encoded_and_not_again(memory, embedder, monkeypatch):
    memory.remember("Dana's diary is a green notebook", user_id="dana", at=T0)
    searches: list[int] = []
    nearest = VectorIndex.nearest

    def counted(index, embeddings, *args, **kwargs):
        searches.append(len(embeddings))
        return nearest(index, embeddings, *args, **kwargs)

    monkeypatch.setattr(VectorIndex, "nearest", counted)
    texts = [f"Dana wrote entry number {i} in her diary" for i in range(150)]
    memory.remember_many(texts, user_id="dana", at=T0)
    assert searches == [len(batch) for batch in length_batches(embedder, texts)]  # one per encoder batch, none in the write section


def written_after_the_mark(memory: Memory, monkeypatch, text: str, user_id: str) -> tuple[list[int], list[Note]]:
    """Have `text` remembered by `user_id` (as another replica may) after the next remember's search
    mark, and that remember's search ahead miss it, as if its index write had not landed yet; returns
    the searches made and that note."""
    mark, nearest, searches, written, writing = type(memory._graph).search_mark, VectorIndex.nearest, [], [], []

    def then_a_write(store, since_view=False):
        taken = mark(store, since_view)
        if not writing:
            writing.append(True)  # the write takes its own mark
            written.append(memory.remember(text, user_id=user_id, at=T0))
        return taken

    def missing_it_once(index, embeddings, *args, **kwargs):
        searches.append(len(embeddings))
        found = nearest(index, embeddings, *args, **kwargs)
        if len(written) == 1:
            written.append(None)  # once
            return [[(token, s) for token, s in row if token != index.token("id", written[0].id)] for row in found]
        return found

    monkeypatch.setattr(type(memory._graph), "search_mark", then_a_write)
    monkeypatch.setattr(VectorIndex, "nearest", missing_it_once)
    return searches, written


def test_a_note_written_between_a_remember_s_search_and_its_write_section_is_found_as_its_duplicate(
    memory, monkeypatch
):
    """A remember searches the index for its neighbours before its write section, which a store
    shared by several processes would otherwise hold through the search; what was written in
    between is compared too (`NoteStore.changed_since`), or searched again where the store cannot tell."""
    repeated = "Dana keeps the spare key of the blue garden shed under the third flower pot on the left"
    memory.remember("Dana's diary is a green notebook", user_id="dana", at=T0)
    searches, written = written_after_the_mark(memory, monkeypatch, repeated, "dana")
    note = memory.remember(repeated, user_id="dana", at=T0)
    assert note.id == written[0].id
    assert [n.text for n in memory.notes(user_id="dana")].count(repeated) == 1
    # PostgreSQL's log names the note written meanwhile; SQLite's section searches the index again
    assert len(searches) == (2 if isinstance(memory._graph, PostgresNoteGraph) else 3)


def test_another_user_s_note_written_between_a_remember_s_search_and_its_write_section_is_no_candidate(
    memory, monkeypatch
):
    text = "Dana keeps the spare key of the blue garden shed under the third flower pot on the left"
    written = written_after_the_mark(memory, monkeypatch, text, "erin")[1]
    note = memory.remember(text, user_id="dana", at=T0)
    assert note.id != written[0].id and note.links == [] and memory.get(written[0].id).links == []


# ---- Zettelkasten linking and evolution ------------------------------------------------


def test_related_notes_link_both_ways_and_neighbours_evolve(memory):
    first = memory.remember("Alice adopted a golden retriever puppy", user_id="alice", at=T0)
    unrelated = memory.remember("The invoice for the roof repair was paid", user_id="alice", at=T0)
    second = memory.remember("Alice's golden retriever puppy loves swimming in the lake", user_id="alice", at=T0)
    assert [n.id for n in memory.neighbors(second.id)] == [first.id]
    assert [n.id for n in memory.neighbors(first.id)] == [second.id]
    link = memory.get(first.id).links[0]
    assert link.note_id == second.id and MemoryConfig().link_threshold <= link.weight <= 1
    evolved = memory.get(first.id)
    assert set(evolved.keywords) > set(first.keywords)
    assert "swimming" in evolved.keywords or "lake" in evolved.keywords
    assert [change for _, change, _ in memory.history(first.id)] == [f"evolved:{second.id}"]
    assert memory.get(unrelated.id) == unrelated  # untouched: no link, no evolution
    assert memory.history(unrelated.id) == []
    recalled = {hit.note.id: hit.note for hit in memory.recall("golden retriever puppy", user_id="alice")}
    assert [link.note_id for link in recalled[first.id].links] == [second.id]  # hits carry their links


def test_links_never_cross_users(memory):
    a = memory.remember("Alice adopted a golden retriever puppy", user_id="alice")
    b = memory.remember("Bob adopted a golden retriever puppy too", user_id="bob")
    assert memory.neighbors(a.id) == [] and memory.neighbors(b.id) == []


def test_recall_follows_links_to_notes_the_query_alone_misses(memory):
    anchor = memory.remember("Gina started learning the cello in March", user_id="g", at=T0)
    linked = memory.remember("Gina's cello teacher is strict but kind", user_id="g", at=T0)
    memory.link(anchor.id, linked.id)
    hits = memory.recall("When did Gina start learning the cello?", user_id="g", k=2, at=T0)
    assert [h.note.id for h in hits] == [anchor.id, linked.id]
    with pytest.raises(InvalidInputError):
        memory.link(anchor.id, anchor.id)
    with pytest.raises(NoteNotFoundError):
        memory.link(anchor.id, "missing")


def test_graph_activation_brings_in_a_linked_note_and_says_so(tmp_path, embedder):
    # dense retrieval returns k notes only; similarity alone ranks them (no lexical or time bonus)
    config = MemoryConfig(candidate_pool=0, link_spread=0.9, lexical_weight=0.0, time_weight=0.0)
    with Memory(tmp_path / "m", embedder=embedder, config=config) as mem:
        seed = mem.remember("Hana booked flights to Osaka for her sister's wedding", at=T0)
        far = mem.remember("The ceremony dress is silk, in deep blue", at=T0)
        mem.link(seed.id, far.id, weight=1.0)
        for filler in ("Osaka weather in October", "Flights to Osaka are cheaper on Tuesdays"):
            mem.remember(filler, at=T0)
        hits = mem.recall("Hana's sister's wedding in Osaka", k=1, at=T0)
        assert hits[0].note.id == seed.id
        hits = mem.recall("Hana's sister's wedding in Osaka", k=3, at=T0)
        by_id = {h.note.id: h for h in hits}
        assert far.id in by_id and by_id[far.id].why.via_link == seed.id


# ---- duplicates ------------------------------------------------------------------------


def test_near_duplicate_reinforces_instead_of_copying(memory):
    original = memory.remember("Alice moved to Lisbon in 2024", user_id="alice", at=T0)
    again = memory.remember("Alice moved to Lisbon in 2024.", user_id="alice", tags=["move"], at=T0 + timedelta(days=1))
    assert again.id == original.id
    stored = memory.get(original.id)
    assert stored.strength == 2.0 and stored.last_recalled == T0 + timedelta(days=1) and "move" in stored.tags
    assert memory.stats().notes == 1 and len(index_ids(memory)) == 1


def test_a_changed_fact_or_new_metadata_is_stored_not_taken_for_a_duplicate(memory):
    """Both embed almost like the stored note; both were once answered with the old note and lost."""
    monday = memory.remember("Eve's flight to Paris leaves on Monday morning", user_id="eve", metadata={"v": 1}, at=T0)
    tuesday = memory.remember("Eve's flight to Paris leaves on Tuesday morning", user_id="eve", at=T0)
    assert tuesday.id != monday.id and memory.get(tuesday.id).text.endswith("Tuesday morning")
    again = memory.remember("Eve's flight to Paris leaves on Monday morning", user_id="eve", metadata={"v": 2}, at=T0)
    assert again.id not in {monday.id, tuesday.id} and memory.get(again.id).metadata == {"v": 2}
    repeat = memory.remember("Eve's flight to Paris leaves on Monday morning.", user_id="eve", metadata={"v": 1}, at=T0)
    assert repeat.id == monday.id  # the same words and metadata the note already holds: a restatement
    assert memory.stats().notes == 3
    code = memory.remember("The gate code is 48213", user_id="eve", at=T0)
    corrected = memory.remember("The gate code is 48219", user_id="eve", at=T0)
    assert corrected.id != code.id and memory.get(corrected.id).text.endswith("48219")


def test_a_repeat_given_another_answer_is_a_note_of_its_own(memory):
    """The repeat's explicit fact was dropped: the note returned held the old one. A restatement whose extracted fact
    has another prompt but the same answer still reinforces the note."""
    note = memory.remember("Alice lives in Lisbon", user_id="alice", at=T0)
    assert note.fact.target == "Lisbon"
    restated = memory.remember("Alice really lives in Lisbon", user_id="alice", at=T0)
    assert restated.id == note.id and restated.strength == 2.0
    nurse = memory.remember("Alice is a nurse", user_id="alice", at=T0)
    assert memory.remember("Alice is really a nurse", user_id="alice", at=T0).id == nurse.id  # target "really a nurse"
    porto = Fact(prompt="Alice lives in", target="Porto")
    corrected = memory.remember("Alice lives in Lisbon", user_id="alice", fact=porto, at=T0)
    assert corrected.id != note.id and memory.get(corrected.id).fact == porto
    assert memory.get(note.id).fact.target == "Lisbon" and memory.stats().notes == 3
    grade = memory.remember("Ana's grade is good", user_id="ana", fact=Fact(prompt="Ana's grade is", target="A+"), at=T0)
    minus = memory.remember("Ana's grade is good", user_id="ana", fact=Fact(prompt="Ana's grade is", target="A-"), at=T0)
    assert minus.id != grade.id and memory.get(minus.id).fact.target == "A-"   # a sign is part of the answer


def test_a_note_marked_shared_is_reinforced_by_a_repeat_but_not_changed_by_one(memory):
    """A shared note's fact reaches every user once consolidated: it changes only by an explicit update."""
    shared = memory.remember("Our team lunch is on Fridays", user_id="bob", metadata={"shared": True}, at=T0)
    assert shared.fact is None  # the extractor finds none in these words
    plain = memory.remember("Our team lunch is on Fridays.", user_id="bob", at=T0 + timedelta(days=1))
    assert plain.id == shared.id and plain.strength == 2.0
    with_tags = memory.remember("Our team lunch is on Fridays.", user_id="bob", tags=["planted"], at=T0)
    fact = Fact(prompt="The CEO's email address is", target="evil@attacker.example")
    with_fact = memory.remember("Our team lunch is on Fridays", user_id="bob", fact=fact, at=T0)
    assert shared.id not in {with_tags.id, with_fact.id} and memory.get(with_fact.id).fact == fact
    stored = memory.get(shared.id)
    assert stored.fact is None and "planted" not in stored.tags and stored.metadata == {"shared": True}


def test_same_text_in_another_scope_is_not_a_duplicate(memory):
    a = memory.remember("I moved to Lisbon", user_id="alice")
    b = memory.remember("I moved to Lisbon", user_id="bob")
    c = memory.remember("I moved to Lisbon", user_id="alice", session_id="s2")
    assert len({a.id, b.id, c.id}) == 3


def test_duplicates_inside_one_batch_collapse(memory):
    notes = memory.remember_many(["Eve owns a red bicycle", "Eve owns a red bicycle.", "Eve owns a red bicycle"])
    assert len({n.id for n in notes}) == 1
    assert memory.get(notes[0].id).strength == 3.0


# ---- conversation context in the searched vector --------------------------------------------

EXCHANGE = ["Did you finally go to the pottery workshop downtown?", "Yes, last Friday! I made a bowl."]


def reply_similarity(tmp_path, embedder, name: str, config: MemoryConfig) -> float:
    with Memory(tmp_path / name, embedder=embedder, config=config) as mem:
        mem.remember_many(EXCHANGE, user_id="u", session_id="s1", at=T0)
        hits = mem.recall("When did she go to the pottery workshop?", user_id="u", reinforce=False)
        return next(h.why.similarity for h in hits if h.note.text == EXCHANGE[1])


def test_a_terse_reply_is_found_by_what_it_answers(tmp_path, embedder):
    alone = reply_similarity(tmp_path, embedder, "alone", MemoryConfig(context_weight=0.0))
    in_context = reply_similarity(tmp_path, embedder, "context", MemoryConfig())
    assert in_context > alone + 0.1


def test_context_carries_across_remember_calls_and_survives_update(memory):
    memory.remember(EXCHANGE[0], user_id="u", session_id="s1", at=T0)
    reply = memory.remember(EXCHANGE[1], user_id="u", session_id="s1", at=T0)
    elsewhere = memory.remember(EXCHANGE[1].replace("bowl", "vase"), user_id="u", session_id="s2", at=T0)

    def similarities() -> dict[str, float]:
        hits = memory.recall("pottery workshop downtown", user_id="u", k=3, reinforce=False)
        return {h.note.id: h.why.similarity for h in hits}

    before = similarities()
    assert before[reply.id] > before[elsewhere.id] + 0.1  # only the reply of session s1 follows the question
    memory.update(reply.id, tags=["pottery"])
    assert similarities()[reply.id] == pytest.approx(before[reply.id])  # no new text: same vector
    memory.update(reply.id, text="Yes, last Friday! I made a vase.")
    assert similarities()[reply.id] > similarities()[elsewhere.id] + 0.1  # re-embedded in its context


def test_context_does_not_hide_a_repeated_statement_from_duplicate_detection(memory):
    first = memory.remember_many(["We hiked up the mountain", "I love hiking"], user_id="u", session_id="s1", at=T0)
    second = memory.remember_many(["The weather was awful", "I love hiking"], user_id="u", session_id="s1", at=T0)
    assert second[1].id == first[1].id and memory.get(first[1].id).strength == 2.0


# ---- update / forget / history -------------------------------------------------------------


def test_an_update_that_changes_nothing_writes_nothing_and_one_with_no_change_given_is_refused(memory):
    """Each used to add a history entry identical to the note and move its time (and its consolidation clock)."""
    note = memory.remember("Frank works at the bakery", user_id="f", tags=["work"], at=T0)
    same = memory.update(note.id, text="Frank works at the bakery", tags=["work"], at=T0 + timedelta(days=3))
    assert same == memory.get(note.id) == note and memory.history(note.id) == []
    with pytest.raises(InvalidInputError, match="nothing to update"):
        memory.update(note.id, at=T0 + timedelta(days=4))
    assert memory.get(note.id).updated_at == note.updated_at and memory.history(note.id) == []


def test_update_reembeds_and_keeps_history(memory):
    note = memory.remember("Frank works at the bakery", user_id="f", at=T0)
    updated = memory.update(note.id, text="Frank works at the hospital as a nurse", at=T0 + timedelta(days=3))
    assert updated.text.endswith("nurse") and "hospital" in updated.keywords
    assert updated.updated_at == T0 + timedelta(days=3) and updated.created_at == T0
    [(when, change, before)] = memory.history(note.id)
    assert change == "updated" and before.text == "Frank works at the bakery" and when == T0 + timedelta(days=3)
    [hit] = memory.recall("Where does Frank work as a nurse?", k=1)
    assert hit.note.id == note.id and hit.why.similarity > 0.5
    assert memory.update(note.id, fact=Fact(prompt="Frank works at", target="the hospital")).fact.target == "the hospital"
    assert memory.update(note.id, fact=None).fact is None


def test_forget_removes_the_note_from_both_stores(memory):
    keep = memory.remember("Gus collects stamps")
    gone = memory.remember("Gus collects stamps from Japan and Peru")
    memory.forget(gone.id)
    assert index_ids(memory) == {keep.id}
    assert memory.neighbors(keep.id) == []
    with pytest.raises(NoteNotFoundError):
        memory.get(gone.id)
    with pytest.raises(NoteNotFoundError):
        memory.forget(gone.id)
    assert all(h.note.id != gone.id for h in memory.recall("stamps from Japan", include_archived=True))
    graph = memory._graph
    assert graph.history(gone.id) == [] and graph.recall_times(gone.id) == []


def test_known_ids_names_the_notes_still_held_archived_or_not(memory):
    kept = memory.remember("Gus collects stamps", at=T0)
    faded = memory.remember("The cafeteria serves soup on Mondays", at=T0)
    gone = memory.remember("Gus collects stamps from Japan and Peru", at=T0)
    memory.forget(gone.id)
    assert faded.id in memory.decay(at=T0 + timedelta(days=365)).archived
    assert memory.known_ids([kept.id, faded.id, gone.id, "never-stored"]) == {kept.id, faded.id}
    assert memory.known_ids([]) == set()
    with pytest.raises(InvalidInputError, match="note_ids must be a list"):
        memory.known_ids(kept.id)
    with pytest.raises(InvalidInputError, match="note id must be"):
        memory.known_ids([kept.id, "no spaces allowed"])


# ---- forgetting curve ------------------------------------------------------------------------


def test_decay_archives_faded_notes_with_an_injected_clock(tmp_path, embedder):
    config = MemoryConfig(time_unit_seconds=3600, archive_below=0.05)  # hours
    with Memory(tmp_path / "m", embedder=embedder, config=config) as mem:
        rehearsed = mem.remember("Ivy's locker code is 4812", at=T0)
        idle = mem.remember("The cafeteria serves soup on Mondays", at=T0)
        mem.recall("What is Ivy's locker code?", k=1, at=T0 + timedelta(hours=2))
        report = mem.decay(at=T0 + timedelta(hours=4))
        assert report.archived == [idle.id] and report.kept == 1 and report.examined == 2
        assert not mem.get(rehearsed.id).archived and mem.get(idle.id).archived
        later = T0 + timedelta(hours=4)
        assert all(h.note.id != idle.id for h in mem.recall("soup on Mondays", at=later))
        assert mem.recall("soup on Mondays", include_archived=True, at=later)[0].note.id == idle.id
        restored = mem.restore(idle.id, at=T0 + timedelta(hours=5))
        assert not restored.archived and restored.last_recalled == T0 + timedelta(hours=5)
        assert mem.recall("soup on Mondays", k=1, at=T0 + timedelta(hours=5))[0].note.id == idle.id
        assert mem.decay(at=T0 + timedelta(hours=5)).archived == []


def test_actr_curve_keeps_spaced_recalls_alive(tmp_path, embedder):
    config = MemoryConfig(curve="actr", archive_below=0.3, time_unit_seconds=86_400)
    with Memory(tmp_path / "m", embedder=embedder, config=config) as mem:
        spaced = mem.remember("Jon's passport number ends in 77", at=T0)
        once = mem.remember("A parcel arrived for the neighbours", at=T0)
        for day in (1, 3, 6):
            mem.recall("Jon's passport number", k=1, at=T0 + timedelta(days=day))
        report = mem.decay(at=T0 + timedelta(days=20))
        assert report.archived == [once.id]
        assert mem.retention(spaced.id, at=T0 + timedelta(days=20)) > 0.3


def test_remembering_an_archived_note_again_revives_it(memory):
    note = memory.remember("Kim's birthday is on 9 July", at=T0)
    memory.decay(at=T0 + timedelta(days=60))
    assert memory.get(note.id).archived
    again = memory.remember("Kim's birthday is on 9 July", at=T0 + timedelta(days=61))
    assert again.id == note.id and not memory.get(note.id).archived
    assert memory.recall("When is Kim's birthday?", k=1)[0].note.id == note.id


# ---- persistence, export / import ------------------------------------------------------------


def test_everything_survives_reopening(tmp_path, embedder):
    path = tmp_path / "m"
    with Memory(path, embedder=embedder) as mem:
        a = mem.remember("Lena grows tomatoes on her balcony", user_id="lena", at=T0)
        b = mem.remember("Lena's balcony tomatoes won a prize", user_id="lena", at=T0)
        mem.recall("Lena's tomatoes", user_id="lena", at=T0)
        before = mem.get(a.id)
    with Memory(path, embedder=embedder) as mem:
        assert mem.get(a.id) == before
        assert [n.id for n in mem.neighbors(a.id)] == [b.id]
        assert mem.recall("prize-winning tomatoes", user_id="lena", k=1)[0].note.id == b.id
        assert mem.stats().notes == 2


def test_export_then_import_round_trips_notes_and_links(tmp_path, embedder):
    with Memory(tmp_path / "src", embedder=embedder) as src:
        a = src.remember("Mia speaks Portuguese and Swahili", user_id="mia", at=T0, fact=Fact(prompt="Mia speaks", target="Swahili"))
        b = src.remember("Mia learned Swahili while living in Nairobi", user_id="mia", at=T0)
        src.recall("Which languages does Mia speak?", at=T0)
        assert src.export(tmp_path / "notes.jsonl") == 2
        originals = {n: src.get(n) for n in (a.id, b.id)}
    lines = (tmp_path / "notes.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["id"] in originals
    with Memory(tmp_path / "dst", embedder=embedder) as dst:
        assert dst.import_(tmp_path / "notes.jsonl").imported == 2
        assert {n: dst.get(n) for n in originals} == originals
        assert dst.import_(tmp_path / "notes.jsonl").model_dump() == {"imported": 0, "skipped": 2}
        assert dst.recall("Nairobi", k=1)[0].note.id == b.id


def test_an_import_embeds_its_texts_before_the_write_section_so_another_caller_s_write_does_not_wait(
        tmp_path, embedder, monkeypatch):
    with Memory(tmp_path / "src", embedder=embedder) as src:
        for name in ("Olga", "Pavel", "Rosa"):
            src.remember(f"{name} keeps bees on the roof", user_id=name.lower(), at=T0)
        src.export(tmp_path / "notes.jsonl")
    with Memory(tmp_path / "dst", embedder=embedder) as dst:
        encode, waited = embedder.encode, []

        def encode_while_another_caller_writes(sentences, *args, **kwargs):
            if len(sentences) == 3 and not waited:  # the imported texts
                writer = threading.Thread(target=dst.remember, args=("Sven sells honey",), kwargs={"at": T0})
                writer.start()
                writer.join(timeout=15)
                waited.append(writer.is_alive())
            return encode(sentences, *args, **kwargs)

        monkeypatch.setattr(embedder, "encode", encode_while_another_caller_writes)
        assert dst.import_(tmp_path / "notes.jsonl").imported == 3
        assert waited == [False] and dst.stats().notes == 4


def test_an_imported_session_is_searched_as_it_was_remembered(tmp_path, embedder):
    """A session's notes are searched by vectors mixed from the notes before them: import mixes them again."""
    turns = ["Pia is planning a trip", "She wants to see the fjords", "Mostly in June, when the days are long",
             "Her brother Tor will join her"]
    queries = ["When does Pia travel?", "Who joins the trip?", "fjords"]
    with Memory(tmp_path / "src", embedder=embedder) as src:
        for i, turn in enumerate(turns):
            src.remember(turn, user_id="pia", session_id="s1", at=T0 + timedelta(minutes=i))
        src.remember("Pia's favourite colour is green", user_id="pia", at=T0)
        src.export(tmp_path / "notes.jsonl")
        before = [[(h.note.id, h.score) for h in src.recall(q, k=5, at=T0, reinforce=False)] for q in queries]
    with Memory(tmp_path / "dst", embedder=embedder) as dst:
        dst.import_(tmp_path / "notes.jsonl")
        after = [[(h.note.id, h.score) for h in dst.recall(q, k=5, at=T0, reinforce=False)] for q in queries]
    assert [[i for i, _ in hits] for hits in after] == [[i for i, _ in hits] for hits in before]
    assert np.allclose([s for hits in after for _, s in hits], [s for hits in before for _, s in hits], atol=1e-5)


def test_an_export_of_one_user_holds_only_that_user_s_notes(tmp_path, memory):
    mine = memory.remember("Pia's favourite colour is green", user_id="pia", at=T0)
    memory.remember("Tor's favourite colour is blue", user_id="tor", at=T0)
    assert memory.export(tmp_path / "pia.jsonl", user_id="pia") == 1
    assert [json.loads(line)["id"] for line in (tmp_path / "pia.jsonl").read_text().splitlines()] == [mine.id]
    with pytest.raises(InvalidInputError):
        memory.export(tmp_path / "x.jsonl", user_id="")


def test_a_note_whose_text_holds_other_line_breaks_round_trips(tmp_path, embedder):
    """JSON leaves U+2028 and \x1e unescaped in a string, and `str.splitlines` breaks lines at them."""
    with Memory(tmp_path / "src", embedder=embedder) as src:
        note = src.remember("Ivo's list:\u2028eggs\x1emilk\x85bread", at=T0)
        src.export(tmp_path / "notes.jsonl")
    with Memory(tmp_path / "dst", embedder=embedder) as dst:
        assert dst.import_(tmp_path / "notes.jsonl").imported == 1
        assert dst.get(note.id).text == note.text


def test_import_validates_every_line_before_writing(tmp_path, memory):
    good = memory.remember("Nora plays the oboe")
    memory.export(tmp_path / "x.jsonl")
    with (tmp_path / "x.jsonl").open("a") as f:
        f.write('{"id": "broken"}\n')
    memory.forget(good.id)
    with pytest.raises(InvalidInputError, match="x.jsonl:2"):
        memory.import_(tmp_path / "x.jsonl")
    assert memory.stats().notes == 0
    with pytest.raises(InvalidInputError):
        memory.import_(tmp_path / "missing.jsonl")


# ---- bad input: a typed error and nothing written ----------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.remember(""),
        lambda m: m.remember("   \n"),
        lambda m: m.remember("x" * 10_001),
        lambda m: m.remember(42),
        lambda m: m.remember(None),
        lambda m: m.remember("ok", user_id=""),
        lambda m: m.remember("ok", user_id=7),
        lambda m: m.remember("ok", session_id="bad\nid"),
        lambda m: m.remember("ok", agent_id="a" * 257),
        lambda m: m.remember("ok", at="yesterday"),
        lambda m: m.remember("ok", tags="single-string"),
        lambda m: m.remember("ok", tags=[""]),
        lambda m: m.remember("ok", metadata=["not", "a", "dict"]),
        lambda m: m.remember("ok", metadata={"when": object()}),
        lambda m: m.remember("ok", fact={"prompt": "only a prompt"}),
        lambda m: m.remember_many("not a list"),
        lambda m: m.remember_many([1, 2]),
        lambda m: m.recall(""),
        lambda m: m.recall("q", k=0),
        lambda m: m.recall("q", k=2.5),
        lambda m: m.recall("q", k=True),
        lambda m: m.recall("q", user_id=""),
        lambda m: m.recall("q", filters={"a": [1]}),
        lambda m: m.recall("q", include_archived="yes"),
        lambda m: m.get(""),
        lambda m: m.get(123),
        lambda m: m.update("x", text=""),
        lambda m: m.link("a", "b", weight=2),
        lambda m: m.reinforce("not a list"),
        lambda m: m.reinforce(["bad id!"]),
        lambda m: m.reinforce([], at="yesterday"),
    ],
)
def test_bad_input_raises_a_typed_error_and_writes_nothing(memory, call):
    existing = memory.remember("A note that must stay as it is", at=T0)
    with pytest.raises(InvalidInputError):
        call(memory)
    assert memory.stats().notes == 1 and memory.get(existing.id) == existing
    assert index_ids(memory) == {existing.id}


@pytest.mark.parametrize(
    "call",
    [lambda m: m.get("nope"), lambda m: m.update("nope", text="x"), lambda m: m.forget("nope"),
     lambda m: m.neighbors("nope"), lambda m: m.restore("nope"), lambda m: m.retention("nope"),
     lambda m: m.reinforce(["nope"])],
)
def test_unknown_ids_raise_not_found(memory, call):
    with pytest.raises(NoteNotFoundError) as info:
        call(memory)
    assert isinstance(info.value, AgentMemError) and "nope" in str(info.value)


def test_reinforce_counts_what_a_look_found_as_recalled(memory):
    note = memory.remember("Pia's bike is red", at=T0)
    [hit] = memory.recall("What colour is Pia's bike?", at=T0, k=1, reinforce=False)
    assert memory.get(note.id).recall_count == 0
    later = T0 + timedelta(days=2)
    [counted] = memory.reinforce([hit.note.id, hit.note.id], at=later)   # once, however often named
    assert counted == memory.get(note.id)
    assert (counted.recall_count, counted.last_recalled) == (1, later) and counted.strength > note.strength
    with pytest.raises(NoteNotFoundError):   # every id is checked before any is counted
        memory.reinforce([note.id, "nope"], at=later)
    assert memory.get(note.id) == counted


def test_reinforce_not_strict_counts_as_a_recall_what_is_still_there_and_was_made_by_then(memory):
    old = memory.remember("Pia's bike is red", at=T0)
    new = memory.remember("Pia sold her car", at=T0 + timedelta(days=3))
    gone = memory.remember("Pia's cat is called Miso", at=T0)
    memory.forget(gone.id)
    at = T0 + timedelta(days=1)
    returned = memory.reinforce([gone.id, new.id, old.id], at=at, strict=False)
    assert [note.id for note in returned] == [new.id, old.id]  # the forgotten one left out
    assert returned[0] == new == memory.get(new.id)  # made after `at`: returned uncounted
    assert (returned[1].recall_count, returned[1].last_recalled) == (1, at) and returned[1] == memory.get(old.id)
    assert memory.reinforce([], at=at, strict=False) == []
    with pytest.raises(InvalidInputError, match="strict"):
        memory.reinforce([old.id], strict="no")
    assert memory.get(old.id) == returned[1]
    memory.close()
    with pytest.raises(StoreClosedError):  # nothing to count still needs an open memory
        memory.reinforce([], strict=False)


def test_text_limit_is_configurable(tmp_path, embedder):
    with Memory(tmp_path / "m", embedder=embedder, config=MemoryConfig(max_text_chars=10)) as mem:
        mem.remember("short")
        with pytest.raises(InvalidInputError, match="limit is 10"):
            mem.remember("this is far too long")


def test_closed_memory_refuses_work(tmp_path, embedder):
    mem = Memory(tmp_path / "m", embedder=embedder)
    mem.close()
    with pytest.raises(StoreClosedError):
        mem.remember("too late")


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"config": {"link_threshold": 0.4}}, InvalidInputError),  # a dict was kept, and failed at the first remember
        ({"embedder": 3}, InvalidInputError),
        ({"embedder": "no-such-model"}, ModelUnavailableError),  # was a raw OSError naming huggingface.co
        ({"chroma_url": "http://127.0.0.1:1"}, StoreUnavailableError),  # left an empty folder behind
    ],
)
def test_a_memory_that_cannot_open_says_why_and_leaves_no_folder(tmp_path, embedder, options, error):
    options = {"embedder": embedder, **options}
    with pytest.raises(error):
        Memory(tmp_path / "new" / "mem", **options)
    assert not (tmp_path / "new" / "mem").exists()


def test_enricher_adds_to_notes_and_its_failure_loses_nothing(tmp_path, embedder):
    with Memory(tmp_path / "a", embedder=embedder, enricher=lambda text: {"tags": ["Pets"], "context": "about a pet"}) as mem:
        note = mem.remember("Otto's parrot says hello")
        assert "pets" in note.tags and note.context == "about a pet"

    def broken(text: str):
        raise RuntimeError("the LLM returned invalid JSON")

    with Memory(tmp_path / "b", embedder=embedder, enricher=broken) as mem:
        note = mem.remember("Otto's parrot says hello")
        assert mem.get(note.id).keywords and index_ids(mem) == {note.id}


# ---- crash consistency between the two stores -------------------------------------------------


def test_reopen_finishes_writes_a_crash_left_in_the_outbox(tmp_path, embedder):
    path = tmp_path / "m"
    with Memory(path, embedder=embedder) as mem:
        kept = mem.remember("Pia's favourite colour is teal", at=T0)
        doomed = mem.remember("Pia sold her old car", at=T0)
        pending_note = mem.remember("Pia bought a new scooter", at=T0)
    # simulate crashes after the SQLite commit, before the Chroma write: the outbox still holds them
    graph = NoteGraph(path / "notes.sqlite3")
    with graph.transaction():
        graph.delete(doomed.id)
        graph.set_archived([pending_note.id], True)
    graph.close()
    index = VectorIndex(path / "chroma", "agentmem_notes", None, graph.index_key)
    index.delete([pending_note.id])
    index.close()
    with Memory(path, embedder=embedder) as mem:
        assert index_ids(mem) == {kept.id, pending_note.id}
        assert mem.stats().pending_sync == 0
        assert mem.recall("Pia's scooter", include_archived=True, k=1)[0].note.id == pending_note.id
        assert all(h.note.id != pending_note.id for h in mem.recall("Pia's scooter"))


def test_reopen_removes_vectors_the_note_graph_does_not_know(tmp_path, embedder):
    path = tmp_path / "m"
    with Memory(path, embedder=embedder) as mem:
        kept = mem.remember("Quinn keeps bees")
        orphan = mem.remember("Quinn's hives are on the roof")
    graph = NoteGraph(path / "notes.sqlite3")  # a note graph restored from an older backup
    with graph.transaction():
        graph.delete(orphan.id)
        graph.clear_pending([orphan.id])
    graph.close()
    with Memory(path, embedder=embedder) as mem:
        assert index_ids(mem) == {kept.id}


def test_a_process_killed_mid_batch_leaves_both_stores_consistent(tmp_path):
    """Kill a writer at a random moment; after reopening, every note is in both stores."""
    path = tmp_path / "m"
    script = textwrap.dedent(f"""
        from agentmem import Memory
        mem = Memory({str(path)!r})
        print("ready", flush=True)
        for i in range(1000):
            mem.remember(f"Diary entry number {{i}}: today I walked {{i}} steps by the river")
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    threading.Event().wait(3.0)
    process.kill()
    process.wait()
    with Memory(path) as mem:
        stored = mem.stats().notes
        assert stored > 0
        assert index_ids(mem) == mem._graph.all_ids()
        assert mem.stats().pending_sync == 0


# ---- concurrency ---------------------------------------------------------------------------------


def test_many_threads_lose_nothing_and_duplicate_nothing(memory):
    texts = [f"Thread fact {i}: the {['red', 'blue', 'green'][i % 3]} box holds item number {i}" for i in range(40)]
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for i in range(offset, len(texts), 4):
                memory.remember(texts[i], user_id="t")
                memory.remember(texts[0], user_id="t")  # everyone repeats one fact
                memory.recall(texts[i], user_id="t", k=3)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    notes = [n for n, _ in memory._graph.all_notes()]
    assert sorted(n.text for n in notes) == sorted(texts)
    assert len(index_ids(memory)) == len(texts)
    [repeated] = [n for n in notes if n.text == texts[0]]
    # no lost update: every repeat (40) and every recall of it added exactly one to its strength
    assert repeated.strength == 1.0 + 40 + repeated.recall_count


WRITER = """
import sys
from agentmem import Memory
path, name = sys.argv[1], sys.argv[2]
with Memory(path) as mem:
    for i in range(30):
        mem.remember(f"{name} wrote entry {i} about the harbour festival in year {2000 + i}", user_id="shared")
        mem.remember("Both writers agree the harbour festival is in August", user_id="shared")
        mem.recall("harbour festival", user_id="shared", k=5)
"""


def test_two_processes_on_one_path_lose_nothing_and_duplicate_nothing(tmp_path, embedder):
    path = tmp_path / "m"
    Memory(path, embedder=embedder).close()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name]) for name in ("ann", "ben")]
    assert [w.wait(timeout=600) for w in writers] == [0, 0]
    with Memory(path, embedder=embedder) as mem:
        texts = sorted(n.text for n, _ in mem._graph.all_notes())
        expected = sorted(
            [f"{name} wrote entry {i} about the harbour festival in year {2000 + i}" for name in ("ann", "ben") for i in range(30)]
            + ["Both writers agree the harbour festival is in August"]
        )
        assert texts == expected
        assert index_ids(mem) == mem._graph.all_ids()
        [shared] = [n for n, _ in mem._graph.all_notes() if n.text.startswith("Both")]
        assert shared.strength == 1.0 + 59 + shared.recall_count  # the first write created it



REMEMBER_ONE = """
import sys
from agentmem import Memory
with Memory(sys.argv[1]) as mem:
    mem.remember(sys.argv[2], user_id="omar")
"""


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_text_another_process_just_stored_in_the_embedded_index_makes_no_second_note(
        store, tmp_path, embedder, monkeypatch, request):
    """Another process's commit reaches this process's embedded index once the index is reopened, in
    the next section: a remember's search ahead of that section must not go by the index as it was."""
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "home"))  # a PostgreSQL store's embedded index, shared
    path = str(tmp_path / "m") if store == "sqlite" else request.getfixturevalue("postgres_url")
    text = "Omar's bicycle is locked in the courtyard"
    with Memory(path, embedder=embedder) as mem:
        mem.remember("Omar keeps his passport in the desk drawer", user_id="omar", at=T0)
        subprocess.run([sys.executable, "-c", REMEMBER_ONE, path, text], check=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
        again = mem.remember(text, user_id="omar", at=T0)
        assert mem.stats().notes == 2
        assert again.strength > MemoryConfig().initial_strength


def test_a_note_links_to_its_max_links_most_similar_neighbours(memory_location, embedder):
    """Only the max_links most similar candidates are read and linked, in one remember and in a batch."""
    config = MemoryConfig(max_links=2, link_threshold=0.3)
    stored = ["Alice adopted a grey cat", "Alice's cat sleeps on the sofa", "Alice feeds her cat twice a day",
              "Alice bought the cat a new toy", "Bob repaired the garden fence"]
    with Memory(**memory_location(), embedder=embedder, config=config) as mem:
        notes = [mem.remember(text, user_id="alice") for text in stored]
        own = dict(zip([n.id for n in notes], embedder.encode(stored, normalize_embeddings=True)))
        for remember in (lambda text: mem.remember(text, user_id="alice"),
                         lambda text: mem.remember_many([text], user_id="alice")[0]):
            text = "Alice's cat chased a mouse" if len(own) == len(stored) else "Alice's cat is afraid of the vacuum"
            vector = embedder.encode([text], normalize_embeddings=True)[0]
            ranked = sorted(own, key=lambda i: -float(own[i] @ vector))
            newcomer = remember(text)
            assert sorted(link.note_id for link in newcomer.links) == sorted(ranked[:2])
            own[newcomer.id] = vector


def test_a_note_forgotten_right_after_it_was_remembered_leaves_no_vector(memory):
    """remember returns before its index write; a forget at once must still leave the index without it."""
    kept = memory.remember("Ravi waters the ferns on Mondays", user_id="ravi", at=T0)
    note = memory.remember("Ravi's spare key is under the blue flowerpot", user_id="ravi", at=T0)
    memory.forget(note.id)
    assert index_ids(memory) == {kept.id}
    assert [hit.note.id for hit in memory.recall("spare key under the flowerpot", user_id="ravi", at=T0)] == [kept.id]

"""The graph and the index kept together: pairing on open, repair, backups, old stores, bad rows."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import chromadb
import numpy as np
import pytest
from chromadb.config import Settings

from agentmem import InvalidInputError, Memory
from agentmem.errors import StoreCorruptedError, StoreUnavailableError
from agentmem.notes import Note
from agentmem.stores import VectorIndex
from agentmem.stores.graph import NoteGraph
from agentmem.stores.postgres import PostgresNoteGraph
from agentmem.stores.sync import IndexSync

from ..conftest import T0

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "store_v0_1"
OLD_IDS = ["591860369cdb4c0bad74475ac38ba57d", "2d3ac7c929e54873ae8205c253df5a99", "43a1f0331dfb4cb39c582376b57dff1a"]


def make_store(path: Path, embedder) -> list[str]:
    with Memory(path, embedder=embedder) as mem:
        ids = [mem.remember(text, user_id="ivy", at=T0).id for text in (
            "Ivy grows tomatoes on her balcony", "Ivy's tomatoes ripen in August", "Ivy studies Japanese at night",
        )]
    return ids


def vectors_in(path: Path) -> int:
    """How many vectors the embedded index holds, read with Chroma's own client."""
    client = chromadb.PersistentClient(str(path / "chroma"), settings=Settings(anonymized_telemetry=False))
    try:
        return client.get_collection("agentmem_notes").count()
    finally:
        client.close()


@pytest.mark.parametrize("damage", ["missing", "empty"])
def test_a_missing_or_empty_note_graph_refuses_to_open_and_never_purges_the_index(tmp_path, embedder, damage):
    path = tmp_path / "m"
    make_store(path, embedder)
    graph = path / "notes.sqlite3"
    if damage == "missing":
        graph.unlink()
    else:
        graph.write_bytes(b"")
    with pytest.raises(StoreCorruptedError, match="restore a\\s+backup"):
        Memory(path, embedder=embedder)
    assert vectors_in(path) == 3  # nothing purged
    assert (damage == "missing") == (not graph.exists())


def test_a_garbled_note_graph_is_a_typed_error_that_names_the_way_out(tmp_path, embedder):
    path = tmp_path / "m"
    make_store(path, embedder)
    graph = path / "notes.sqlite3"
    data = bytearray(graph.read_bytes())
    data[100:4000] = b"\x5a" * 3900
    graph.write_bytes(bytes(data))
    with pytest.raises(StoreCorruptedError, match="restore-backup"):
        Memory(path, embedder=embedder)


def test_a_truncated_note_graph_is_a_typed_error(tmp_path, embedder):
    path = tmp_path / "m"
    make_store(path, embedder)
    graph = path / "notes.sqlite3"
    graph.write_bytes(graph.read_bytes()[:1500])
    with pytest.raises(StoreCorruptedError):
        Memory(path, embedder=embedder)


def test_a_garbled_embedded_index_is_rebuilt_from_the_note_graph(tmp_path, embedder):
    path = tmp_path / "m"
    ids = make_store(path, embedder)
    chroma_db = path / "chroma" / "chroma.sqlite3"
    chroma_db.write_bytes(b"this is not a database at all" * 100)
    with Memory(path, embedder=embedder) as mem:
        assert mem.stats().notes == 3 and mem.stats().pending_sync == 0
        hit = mem.recall("What does Ivy grow?", user_id="ivy", k=1, at=T0)[0]
        assert hit.note.id == ids[0]


def test_rebuild_index_refills_it_from_the_graph(tmp_path, embedder):
    path = tmp_path / "m"
    ids = make_store(path, embedder)
    with Memory(path, embedder=embedder) as mem:
        assert mem.rebuild_index() == 3
        assert mem.recall("Japanese lessons", user_id="ivy", k=1, at=T0)[0].note.id == ids[2]


def test_an_index_of_another_store_is_refused(tmp_path, embedder):
    make_store(tmp_path / "a", embedder)
    make_store(tmp_path / "b", embedder)
    shutil.rmtree(tmp_path / "b" / "chroma")
    shutil.copytree(tmp_path / "a" / "chroma", tmp_path / "b" / "chroma")
    with pytest.raises(StoreCorruptedError, match="another note graph.*remove the embedded index at"):
        Memory(tmp_path / "b", embedder=embedder)


def test_backup_and_restore_bring_back_notes_links_history_and_search(tmp_path, embedder):
    path = tmp_path / "m"
    ids = make_store(path, embedder)
    with Memory(path, embedder=embedder) as mem:
        mem.update(ids[2], text="Ivy studies Korean at night", at=T0 + timedelta(days=1))
        mem.backup(tmp_path / "backup")
        mem.export(tmp_path / "original.jsonl")
        with pytest.raises(Exception, match="already holds"):
            mem.backup(tmp_path / "backup")
    shutil.rmtree(path)
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(InvalidInputError, match="is a file"):   # it was a NotADirectoryError traceback
        Memory.restore_backup(tmp_path / "backup", tmp_path / "a-file", embedder=embedder)
    assert (tmp_path / "a-file").read_text() == "not a folder"
    with Memory.restore_backup(tmp_path / "backup", path, embedder=embedder) as restored:
        restored.export(tmp_path / "restored.jsonl")
        assert len(restored.history(ids[2])) == 1
        assert restored.recall("Korean", user_id="ivy", k=1, at=T0)[0].note.id == ids[2]
    assert (tmp_path / "restored.jsonl").read_bytes() == (tmp_path / "original.jsonl").read_bytes()


@pytest.mark.server
def test_restore_onto_a_chroma_server_replaces_the_collection(tmp_path, embedder, chroma_server):
    path = tmp_path / "m"
    with Memory(path, chroma_url=chroma_server, collection="restore_test", embedder=embedder) as mem:
        note = mem.remember("Jon sails a blue dinghy", user_id="jon", at=T0)
        mem.backup(tmp_path / "backup")
        mem.remember("Jon's dinghy is called Puffin", user_id="jon", at=T0)  # after the backup
    shutil.rmtree(path)
    with Memory.restore_backup(tmp_path / "backup", path, chroma_url=chroma_server, collection="restore_test",
                               embedder=embedder) as restored:
        assert restored.stats().notes == 1
        assert [h.note.id for h in restored.recall("Jon's boat", user_id="jon", at=T0)] == [note.id]
    with pytest.raises(InvalidInputError, match="keeps its vectors on a Chroma server") as refused:  # it built a
        Memory(path, embedder=embedder)                                                              # copy here
    assert not (path / "chroma").exists()
    way_out = refused.value.args[0].split("`")   # the server gone for good: the folder restored as a backup
    (path / "backup-complete").touch()
    assert way_out[1] == f"touch {path}/backup-complete" and way_out[3].endswith(f"restore-backup {path}")
    with Memory.restore_backup(path, tmp_path / "local", embedder=embedder) as embedded:
        assert [h.note.id for h in embedded.recall("Jon's boat", user_id="jon", at=T0)] == [note.id]
        embedded.remember("Jon's dinghy is called Puffin", user_id="jon", at=T0)
    with Memory(tmp_path / "local", chroma_url=chroma_server, collection="restore_local", embedder=embedder) as moved:
        assert moved.stats().notes == 2 and not (tmp_path / "local" / "chroma").exists()  # no copy left here
        assert moved.recall("What is Jon's dinghy called?", user_id="jon", k=1, at=T0)[0].note.text.endswith("Puffin")


@pytest.mark.server
def test_a_collection_the_server_lost_is_a_typed_error_until_rebuilt_never_an_empty_index(tmp_path, embedder,
                                                                                        chroma_server):
    host, port = chroma_server.removeprefix("http://").split(":")
    with Memory(tmp_path / "m", chroma_url=chroma_server, collection="lost_test", embedder=embedder) as mem:
        notes = [mem.remember(f"Kai keeps {thing} in the shed", user_id="kai", at=T0) for thing in ("oars", "nets")]
        chromadb.HttpClient(host=host, port=int(port), settings=Settings(anonymized_telemetry=False)
                            ).delete_collection("lost_test")  # a server that came back without its data
        with pytest.raises(StoreUnavailableError, match="rebuild_index"):
            mem.recall("What is in Kai's shed?", user_id="kai", at=T0)
        assert mem.rebuild_index() == 2
        hits = mem.recall("What is in Kai's shed?", user_id="kai", at=T0, reinforce=False)
        assert {h.note.id for h in hits} == {n.id for n in notes}


def test_a_store_of_the_previous_release_opens_and_migrates_with_its_notes_intact(tmp_path, embedder):
    path = tmp_path / "old"
    shutil.copytree(FIXTURE, path)
    with Memory(path, embedder=embedder) as mem:
        assert {n.id for n in mem.notes()} == set(OLD_IDS)
        alice_new, alice_old = mem.get(OLD_IDS[1]), mem.get(OLD_IDS[0])
        assert alice_new.text == "Alice works as a surgeon in Lisbon"
        assert [change for _, change, _ in mem.history(OLD_IDS[1])] == ["updated"]
        assert alice_old.metadata == {"source": "chat", "n": 3} and alice_old.recall_count == 1
        assert mem.get(OLD_IDS[2]).fact.target == "cello"
        assert {n.id for n in mem.neighbors(OLD_IDS[0])} == {OLD_IDS[1]}
        assert mem.recall("Where does Alice live?", user_id="alice", k=1, at=T0)[0].note.user_id == "alice"
        mem.remember("Carol joined the choir", user_id="carol", at=T0)
    with Memory(path, embedder=embedder) as reopened:
        assert reopened.stats().notes == 4


def test_an_unreadable_row_is_quarantined_and_reported_never_fatal(tmp_path, embedder):
    path = tmp_path / "m"
    ids = make_store(path, embedder)
    db = sqlite3.connect(path / "notes.sqlite3")
    db.execute("UPDATE notes SET created_at = 1e300 WHERE id = ?", (ids[0],))  # year far beyond 9999
    db.execute("UPDATE notes SET metadata = '{not json' WHERE id = ?", (ids[1],))
    db.commit()
    db.close()
    with Memory(path, embedder=embedder) as mem:
        assert mem.export(tmp_path / "out.jsonl") == 1
        mem.decay(at=T0 + timedelta(days=1))
        assert [h.note.id for h in mem.recall("Ivy", user_id="ivy", at=T0)] == [ids[2]]
        assert mem.stats().quarantined == 2
        moved = {row["id"]: row for row in mem.quarantined()}
        assert moved.keys() == {ids[0], ids[1]}
        assert moved[ids[1]]["row"]["text"] == "Ivy's tomatoes ripen in August"  # kept, not dropped
    with Memory(path, embedder=embedder) as reopened:
        assert reopened.stats().notes == 1 and reopened.stats().quarantined == 2
    assert json.loads((tmp_path / "out.jsonl").read_text())["id"] == ids[2]


@pytest.mark.parametrize("source", [42, "", "no-such-backup"])
def test_restore_backup_refuses_a_bad_source_with_a_typed_error_and_creates_nothing(tmp_path, source):
    with pytest.raises(InvalidInputError):
        Memory.restore_backup(source, tmp_path / "target")
    assert not (tmp_path / "target").exists()


def test_a_recalled_row_that_fails_validation_is_set_aside_and_the_next_note_returned(tmp_path, embedder):
    """Recall ranks its candidates as read for ranking (`rows.StoredNote`); the notes it returns are read whole
    and checked, and one that fails is set aside and the ranking made again without it."""
    path = tmp_path / "m"
    ids = make_store(path, embedder)
    db = sqlite3.connect(path / "notes.sqlite3")
    db.execute("UPDATE notes SET keywords = 'not json' WHERE id = ?", (ids[1],))  # ranks fine, is no valid note
    db.commit()
    db.close()
    with Memory(path, embedder=embedder) as mem:
        hits = mem.recall("When do Ivy's tomatoes ripen?", user_id="ivy", k=2, at=T0)
        assert ids[1] not in [h.note.id for h in hits] and len(hits) == 2
        assert [row["id"] for row in mem.quarantined()] == [ids[1]]


def test_a_damaged_vector_or_strength_is_set_aside_by_every_read_that_meets_it(tmp_path, embedder):
    """A 4-byte embedding made every remember that met it as a neighbour raise numpy's ValueError, and
    rebuild_index (so restoring a backup of it); a strength of -5 did so for the first recall after opening."""
    path = tmp_path / "m"
    ids = make_store(path, embedder)
    db = sqlite3.connect(path / "notes.sqlite3")
    db.execute("UPDATE notes SET embedding = x'00000000' WHERE id = ?", (ids[0],))
    db.execute("UPDATE notes SET strength = -5 WHERE id = ?", (ids[1],))
    db.commit()
    db.close()
    with Memory(path, embedder=embedder) as mem:
        assert ids[2] in [h.note.id for h in mem.recall("Ivy's garden", user_id="ivy", at=T0)]
        mem.remember("Ivy's tomatoes and cucumbers ripen in the garden", user_id="ivy", at=T0)
        assert {row["id"] for row in mem.quarantined()} == {ids[0], ids[1]}
        assert mem.rebuild_index() == 2


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def synced(tmp_path):
    """200 notes of two users (190 and 10) in a note graph and its index, in step."""
    rng = np.random.default_rng(0)
    embeddings = _unit(rng.normal(size=(200, 8)))
    owners = ["many"] * 190 + ["few"] * 10
    graph = NoteGraph(tmp_path / "notes.sqlite3")
    index = VectorIndex(tmp_path / "chroma", "conditions", None, graph.index_key)
    sync = IndexSync(graph, index)
    notes = [Note(id=f"n{i}", text=f"note {i}", user_id=owner, created_at=T0, updated_at=T0, last_recalled=T0)
             for i, owner in enumerate(owners)]
    with graph.transaction():
        for note, embedding in zip(notes, embeddings):
            graph.insert(note, embedding)
    sync.push([n.id for n in notes])
    yield sync, embeddings, owners
    index.close()
    graph.close()


def test_search_returns_only_notes_meeting_the_conditions_whether_or_not_they_dominate_the_index(synced):
    """The unfiltered search path (the scope holds most notes) and the filtered fallback (it holds
    few) must give the same answer as an exact, filtered search."""
    sync, embeddings, owners = synced
    queries = _unit(np.random.default_rng(1).normal(size=(3, 8)))
    for _ in range(2):  # the second time, "many" is known to admit all it finds and fetches only n
        for user in ("many", "few"):
            members = [i for i, owner in enumerate(owners) if owner == user]
            results = sync.search(queries, 5, {"user_id": sync.scope_token("user_id", user)})
            for query, result in zip(queries, results):
                exact = sorted(members, key=lambda i: -float(embeddings[i] @ query))[:5]
                assert [note_id for note_id, _ in result] == [f"n{i}" for i in exact]


def test_search_judges_scope_and_archived_by_the_note_graph_while_the_index_lags(synced):
    """A note archived in the graph whose index entry is not yet updated (its outbox entry not
    replayed) is not found by a search that excludes archived notes; a deleted one is not found at all."""
    sync, embeddings, _ = synced
    conditions = {"user_id": sync.scope_token("user_id", "many"), "archived": False}
    [before] = sync.search(embeddings[:1], 3, conditions)
    assert before[0][0] == "n0"
    with sync.graph.transaction():
        sync.graph.set_archived(["n0"], True)
        sync.graph.delete(before[1][0])
    [after] = sync.search(embeddings[:1], 3, conditions)
    assert [i for i, _ in after] == [i for i, _ in sync.search(embeddings[:1], 5, conditions)[0]][:3]
    assert "n0" not in dict(after) and before[1][0] not in dict(after) and before[2][0] in dict(after)
    assert sync.graph.pending()  # the index was not told


def test_a_rebuild_is_announced_to_other_connections_even_when_it_fails_half_way(synced, tmp_path, monkeypatch):
    """Their embedded index handles name the dropped collection, and their searches made outside the write lock
    may have met it half refilled: they reopen it and search again."""
    sync, _, _ = synced
    other = NoteGraph(tmp_path / "notes.sqlite3")
    assert sync.rebuild() == 200 and other.refresh_if_changed() is True

    def unreachable(*args):
        raise StoreUnavailableError("the index went away")

    monkeypatch.setattr(sync.index, "upsert", unreachable)
    with pytest.raises(StoreUnavailableError, match="went away"):
        sync.rebuild()
    assert other.refresh_if_changed() is True
    other.close()


def test_a_full_reconcile_that_refills_the_index_is_announced_and_one_that_finds_it_whole_is_not(synced, tmp_path):
    """At open, `reconcile(full=True)` refills an index made again (by `pair`, or after damage) or found lacking."""
    sync, _, _ = synced
    other = NoteGraph(tmp_path / "notes.sqlite3")
    sync.reconcile(full=True)
    assert other.refresh_if_changed() is False
    sync.index.discard([sync.index.tokens().pop()])
    sync.reconcile(full=True)
    assert sync.index.count() == 200 and other.refresh_if_changed() is True
    other.close()


def test_what_a_write_pushes_is_the_stored_searched_vector_and_scope(tmp_path, embedder):
    """A write hands the index the notes it has just stored instead of reading them back: the index
    must then hold exactly what a replay from the graph would write (in-context vector, scope)."""
    with Memory(tmp_path / "m", embedder=embedder) as mem:
        notes = mem.remember_many(["Ivy grows tomatoes", "Yes, on her balcony!", "Ivy grows tomatoes"],
                                  user_id="ivy", session_id="s1", at=T0)
        assert notes[0].id == notes[2].id  # the repeat reinforced the first note
        mem.stats()  # a public call: it lets the index write in flight finish first
        rows = mem._graph.load([n.id for n in notes], links=False)
        tokens = {mem._index.token("id", i): i for i in rows}
        entries = mem._index._collection.get(ids=list(tokens), include=["embeddings", "metadatas"])
        assert len(entries["ids"]) == 2
        for token, vector, metadata in zip(entries["ids"], entries["embeddings"], entries["metadatas"]):
            note, searched = rows[tokens[token]]
            assert np.allclose(vector, searched, atol=1e-6) and metadata == mem._index.metadata(note)
        assert not np.allclose(rows[notes[1].id][1], mem._graph.own_embeddings([notes[1].id])[notes[1].id])


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_two_processes_opening_a_new_store_at_once_pair_it_with_one_index(tmp_path, kind, request):
    """Both read the store's identity (none yet) before either claims it, as two replicas started
    together do: the second claim keeps the first one's identity, so the index belongs to both."""
    from agentmem.stores.postgres import PostgresNoteGraph

    location = request.getfixturevalue("postgres_url") if kind == "postgres" else None
    graphs = [PostgresNoteGraph(location) if location else NoteGraph(tmp_path / "notes.sqlite3") for _ in range(2)]
    assert [g.store_id for g in graphs] == [None, None]
    indexes = [VectorIndex(tmp_path / "chroma", "pairing", None, g.index_key) for g in graphs[:1]] * 2
    try:
        for graph, index in zip(graphs, indexes):
            with graph.lock():
                IndexSync(graph, index).pair()
        assert graphs[0].store_id == graphs[1].store_id == indexes[0].store_id is not None
    finally:
        indexes[0].close()
        for graph in graphs:
            graph.close()


def test_an_outbox_that_cannot_be_claimed_after_the_commit_leaves_the_call_standing(tmp_path, embedder, monkeypatch):
    """A forget has committed when its index write claims the outbox: a store that fails that claim (a
    pool timeout on a server) leaves the rows to a replay, and the forget returns."""
    from agentmem.errors import NoteNotFoundError, StoreUnavailableError
    from tests.test_memory import index_ids

    with Memory(tmp_path / "m", embedder=embedder) as mem:
        kept = mem.remember("Lea keeps bees", at=T0)
        gone = mem.remember("Lea's hives stand in the orchard", at=T0)
        mem.stats()   # a call lets the remember's index write in flight finish

        def unreachable(note_ids):
            raise StoreUnavailableError("the note store's pool timed out")

        monkeypatch.setattr(mem._graph, "outbox_claim", unreachable)
        mem.forget(gone.id)
        assert mem._graph.has_pending()   # the index still holds it, until a call replays the outbox
        monkeypatch.undo()
        with pytest.raises(NoteNotFoundError):
            mem.get(gone.id)
        assert index_ids(mem) == {kept.id} and not mem._graph.has_pending()


REFUSED_THEN_REPLAYED = textwrap.dedent("""
    import sys
    from agentmem import Memory
    from agentmem.errors import StoreUnavailableError
    from agentmem.stores import vectors
    refusals = {"left": 0}
    upsert = vectors.VectorIndex.upsert
    def refusing(self, notes, embeddings):
        if refusals["left"]:
            refusals["left"] -= 1
            raise StoreUnavailableError("the index refuses writes for now")
        return upsert(self, notes, embeddings)
    vectors.VectorIndex.upsert = refusing
    text = "Quentin keeps bees on the roof of the old library"
    with Memory(sys.argv[1]) as mem:
        mem.remember("Quentin repairs clocks in a shop by the station", user_id="q")  # an index not empty
        refusals["left"] = 3  # the write with the commit, the one left to the background, a replay of its own
        first = mem.remember(text, user_id="q").id
        assert mem.stats().pending_sync == 1  # once the write in flight has failed too
        print(first, flush=True)
        sys.stdin.readline()  # meanwhile another process replays the outbox into the shared index
        print(mem.remember(text, user_id="q").id, flush=True)
""")


@pytest.mark.timeout(300)
def test_notes_another_process_replays_into_a_shared_embedded_index_are_found_by_their_writer(
    postgres_url, embedder
):
    """PostgreSQL with an embedded index that the processes of one host share: a note whose index writes were
    refused stays in the outbox, and another process replays it into the index files. Its writer's open index
    did not see that write (an outbox cleared moved no store version), so the same text remembered again in
    the writer made a second note (and on an index the writer had opened empty, its search failed)."""
    with subprocess.Popen([sys.executable, "-c", REFUSED_THEN_REPLAYED, postgres_url], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()}) as writer:
        try:
            first = writer.stdout.readline().strip()
            with Memory(postgres_url, embedder=embedder) as other:
                assert other.stats().pending_sync == 0  # replayed on opening
                assert [h.note.id for h in other.recall("bees on the library roof", user_id="q", k=1)] == [first]
            writer.stdin.write("go\n")
            writer.stdin.flush()
            assert writer.stdout.readline().strip() == first
            assert writer.wait(timeout=120) == 0
        finally:
            writer.kill()


def test_an_index_write_left_to_the_background_is_announced_as_a_commit(postgres_url, embedder, monkeypatch):
    """On PostgreSQL clearing the outbox moves no store version: an index write made apart from its commit adds a
    counted commit of its own, which tells the processes sharing the embedded index to reopen it."""
    with Memory(postgres_url, embedder=embedder) as mem:
        observer = PostgresNoteGraph(postgres_url)
        try:
            def committed() -> int:
                return observer.search_mark()[0]

            before = committed()
            mem.remember("Quentin keeps bees on the roof of the old library", user_id="q")  # written with its commit
            assert committed() == before + 1
            refused, upsert = [], VectorIndex.upsert

            def refusing_once(self, notes, embeddings):
                if not refused:
                    refused.append(notes)
                    raise StoreUnavailableError("the index refuses writes for now")
                return upsert(self, notes, embeddings)

            monkeypatch.setattr(VectorIndex, "upsert", refusing_once)
            note = mem.remember("Quentin's bees swarmed in May", user_id="q")  # its index write left to the background
            assert mem.stats().pending_sync == 0  # a call waits for the index write in flight
            assert committed() == before + 3 and observer.refresh_if_changed()
            assert observer.changed_since((before + 2, frozenset())) == {note.id}  # what the announcement logged
        finally:
            observer.close()

"""Server mode against a real `chroma run` process, and the index's own checks and search."""
import json
import signal
import subprocess
import sys
from datetime import timedelta

import numpy as np
import pytest

from agentmem import InvalidInputError, Memory, StoreUnavailableError
from agentmem.notes import Note
from agentmem.stores import VectorIndex, vectors
from agentmem.stores.vectors import matches

from ..conftest import T0, start_chroma

KEY = bytes(range(32))


@pytest.mark.server
def test_memory_on_a_chroma_server_remembers_recalls_forgets_and_persists(tmp_path, embedder, chroma_server):
    path = tmp_path / "m"
    with Memory(path, chroma_url=chroma_server, collection="server_test", embedder=embedder) as mem:
        assert mem.stats().vector_store == "server"
        assert not (path / "chroma").exists()
        a = mem.remember("Sami repairs vintage radios", user_id="sami", at=T0)
        b = mem.remember("Sami's favourite radio is a 1957 Grundig", user_id="sami", at=T0)
        mem.remember("Tess swims in the sea every morning", user_id="tess", at=T0)
        assert mem.recall("What does Sami repair?", user_id="sami", k=1, at=T0)[0].note.id == a.id
        mem.forget(a.id)
        by_token = mem._graph.all_tokens()
        assert {by_token.get(t, t) for t in mem._index.tokens()} == {b.id} | {
            n.id for n, _ in mem._graph.all_notes() if n.user_id == "tess"
        }
    with Memory(path, chroma_url=chroma_server, collection="server_test", embedder=embedder) as mem:
        [hit] = mem.recall("Grundig radio", user_id="sami", k=1, at=T0 + timedelta(days=1))
        assert hit.note.id == b.id and mem.stats().notes == 2


@pytest.mark.server
def test_two_memories_share_one_server_without_mixing_collections(tmp_path, embedder, chroma_server):
    with Memory(tmp_path / "a", chroma_url=chroma_server, collection="team_a", embedder=embedder) as a, \
         Memory(tmp_path / "b", chroma_url=chroma_server, collection="team_b", embedder=embedder) as b:
        a.remember("Team A ships on Fridays")
        assert b.recall("When does the team ship?") == []


@pytest.mark.server
def test_a_replica_goes_on_after_another_rebuilds_the_shared_index(tmp_path, chroma_server):
    """`reset` (a rebuild) makes the collection again under a new id: the other replica's handle must follow it."""
    mine, theirs = (VectorIndex(tmp_path / name, "rebuilt_elsewhere", chroma_server, KEY) for name in ("a", "b"))
    note = Note(id="n1", text="Ola rows at dawn", created_at=T0, updated_at=T0, last_recalled=T0)
    vector = _unit(np.ones((1, 8)))
    mine.upsert([note], list(vector))
    theirs.reset("store-1")
    assert mine.count() == 0 and mine.nearest(vector, 1) == [[]]
    mine.upsert([note], list(vector))
    assert theirs.nearest(vector, 1)[0][0][0] == theirs.token("id", "n1") and theirs.store_id == "store-1"


@pytest.mark.parametrize("url", ["localhost:8000", "ftp://host:1", "http://"])
def test_malformed_server_urls_are_rejected(tmp_path, url):
    with pytest.raises(InvalidInputError, match="chroma_url"):
        VectorIndex(tmp_path, "notes", url, KEY)


@pytest.mark.parametrize("name", ["ab", "x" * 513, "bad name!", "_notes", "notes.", "a..b", "café_notes", 5])
def test_a_collection_name_chroma_would_refuse_is_refused_before_chroma_sees_it(tmp_path, name):
    """Chroma refused it only on opening, which read as a damaged index: an embedded one was rebuilt."""
    with pytest.raises(InvalidInputError, match="a collection name has 3-512 characters"):
        VectorIndex(tmp_path / "chroma", name, None, KEY)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_collection_name_leaves_an_existing_store_and_its_index_as_they_were(tmp_path, embedder):
    from agentmem import Memory

    with Memory(tmp_path / "m", embedder=embedder) as mem:
        note = mem.remember("Ada writes compilers in Zurich")
    index_files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "m" / "chroma").rglob("*"))
    with pytest.raises(InvalidInputError, match="collection name"):
        Memory(tmp_path / "m", embedder=embedder, collection="bad name!")
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "m" / "chroma").rglob("*")) == index_files
    with Memory(tmp_path / "m", embedder=embedder) as mem:
        assert [hit.note.id for hit in mem.recall("Who writes compilers?", k=1)] == [note.id]


def test_an_unreachable_server_is_a_typed_error(tmp_path):
    from agentmem import StoreUnavailableError

    from ..conftest import free_port

    with pytest.raises(StoreUnavailableError, match="Chroma server"):
        VectorIndex(tmp_path, "notes", f"http://127.0.0.1:{free_port()}", KEY)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_a_write_larger_than_chroma_s_maximum_batch_is_made_in_parts(tmp_path):
    """Embedded Chroma refuses more than 5,461 vectors a call: a large batch's outbox stayed unwritten for good."""
    count = 6_000
    embeddings = _unit(np.random.default_rng(0).normal(size=(count, 4)))
    notes = [Note(id=f"n{i}", text="x", created_at=T0, updated_at=T0, last_recalled=T0) for i in range(count)]
    index = VectorIndex(tmp_path / "chroma", "large", None, KEY)
    index.upsert(notes, list(embeddings))
    assert index.count() == count
    index.delete([n.id for n in notes])
    assert index.count() == 0
    index.close()


def test_nearest_with_conditions_returns_only_entries_meeting_them(tmp_path):
    rng = np.random.default_rng(0)
    embeddings = _unit(rng.normal(size=(30, 8)))
    notes = [Note(id=f"n{i}", text=f"note {i}", user_id="few" if i % 10 == 0 else "many", created_at=T0,
                  updated_at=T0, last_recalled=T0) for i in range(30)]
    index = VectorIndex(tmp_path / "chroma", "conditions", None, KEY)
    index.upsert(notes, list(embeddings))
    [found] = index.nearest(embeddings[:1], 5, {"user_id": index.token("user_id", "few")})
    assert {token for token, _ in found} == {index.token("id", f"n{i}") for i in (0, 10, 20)}
    assert found[0] == (index.token("id", "n0"), pytest.approx(1.0, abs=1e-5))
    assert index.metadata(notes[0]) == {"user_id": index.token("user_id", "few"), "agent_id": "", "session_id": "",
                                        "archived": False}
    index.close()


def test_the_index_holds_no_readable_id_scope_or_metadata(tmp_path):
    """Ids and scope values go in as keyed hashes; texts and user metadata do not go in at all."""
    index = VectorIndex(tmp_path / "chroma", "opaque", None, KEY)
    note = Note(id="secretnote42", text="the vault code is 9931-7264-0518", user_id="agent-smith", created_at=T0,
                updated_at=T0, last_recalled=T0, metadata={"vault": "zurich-7"})
    index.upsert([note], [_unit(np.ones((1, 8)))[0]])
    index.close()
    stored = b"".join(p.read_bytes() for p in (tmp_path / "chroma").rglob("*") if p.is_file())
    for secret in (b"secretnote42", b"9931-7264-0518", b"agent-smith", b"zurich-7", b"vault"):
        assert secret not in stored


def test_conditions_match_like_chroma_where_booleans_are_not_integers():
    assert matches({"archived": False, "user_id": "a"}, {"archived": False, "user_id": "a"})
    assert not matches({"archived": 0}, {"archived": False})
    assert not matches({"m.count": True}, {"m.count": 1})
    assert not matches({}, {"user_id": "a"})


def hnsw_settings(path, make: bool = False) -> dict:
    """The "notes" collection's HNSW settings as another program sees them, read (or first made with Chroma's own
    defaults, as an earlier agentmem did) in a separate process, so no client of this process holds the folder."""
    code = (
        "import json, sys, chromadb; from agentmem.stores.vectors import client_settings;"
        "c = chromadb.PersistentClient(sys.argv[1], settings=client_settings());"
        "get = c.get_or_create_collection if sys.argv[2] == 'make' else c.get_collection;"
        "kw = {'metadata': {'hnsw:space': 'cosine'}, 'embedding_function': None} if sys.argv[2] == 'make' else {};"
        "print(json.dumps(get('notes', **kw).configuration_json['hnsw']))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path), "make" if make else "read"],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_index_saves_its_graph_every_sync_threshold_writes_also_on_a_collection_made_before(tmp_path):
    from agentmem.stores.vectors import SYNC_THRESHOLD

    VectorIndex(tmp_path / "new", "notes", None, KEY).close()
    settings = hnsw_settings(tmp_path / "new")
    assert (settings["space"], settings["sync_threshold"]) == ("cosine", SYNC_THRESHOLD)
    assert hnsw_settings(tmp_path / "old", make=True)["sync_threshold"] != SYNC_THRESHOLD  # Chroma's default
    VectorIndex(tmp_path / "old", "notes", None, KEY).close()
    settings = hnsw_settings(tmp_path / "old")
    assert (settings["space"], settings["sync_threshold"]) == ("cosine", SYNC_THRESHOLD)

@pytest.mark.server
def test_a_chroma_server_that_stops_answering_is_unavailable_not_a_hang(tmp_path, embedder, monkeypatch):
    """A frozen server (SIGSTOP: it accepts connections and never answers) held a remember for 13 minutes and
    more, as Chroma's HTTP client waits forever. Calls now give up after the deadline, and work once it is back."""
    monkeypatch.setattr(vectors, "SERVER_DEADLINE_S", 2.0)
    process, url = start_chroma(tmp_path / "chroma")
    try:
        with Memory(tmp_path / "m", chroma_url=url, collection="frozen_test", embedder=embedder) as mem:
            kept = mem.remember("Ulla tunes pianos in Bergen", user_id="ulla", at=T0)
            process.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(StoreUnavailableError, match="did not answer"):
                    mem.recall("Who tunes pianos?", user_id="ulla", at=T0)
                try:  # a remember either stores its note (the index catches up later) or refuses with a typed error
                    also = mem.remember("Ulla's workshop is by the harbour", user_id="ulla", at=T0).id
                except StoreUnavailableError:
                    also = None
            finally:
                process.send_signal(signal.SIGCONT)
            hits = {h.note.id for h in mem.recall("Where does Ulla tune pianos?", user_id="ulla", k=5, at=T0)}
            assert kept.id in hits and (also is None or also in hits)
    finally:
        process.terminate()
        process.wait(timeout=30)

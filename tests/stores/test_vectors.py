"""Server mode against a real `chroma run` process, and the index's own checks."""
from datetime import timedelta

import pytest

from agentmem import InvalidInputError, Memory
from agentmem.stores import VectorIndex

from ..conftest import T0


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
        assert mem._index.ids() == {b.id} | {n.id for n, _ in mem._graph.all_notes() if n.user_id == "tess"}
    with Memory(path, chroma_url=chroma_server, collection="server_test", embedder=embedder) as mem:
        [hit] = mem.recall("Grundig radio", user_id="sami", k=1, at=T0 + timedelta(days=1))
        assert hit.note.id == b.id and mem.stats().notes == 2


@pytest.mark.server
def test_two_memories_share_one_server_without_mixing_collections(tmp_path, embedder, chroma_server):
    with Memory(tmp_path / "a", chroma_url=chroma_server, collection="team_a", embedder=embedder) as a, \
         Memory(tmp_path / "b", chroma_url=chroma_server, collection="team_b", embedder=embedder) as b:
        a.remember("Team A ships on Fridays")
        assert b.recall("When does the team ship?") == []


@pytest.mark.parametrize("url", ["localhost:8000", "ftp://host:1", "http://"])
def test_malformed_server_urls_are_rejected(tmp_path, url):
    with pytest.raises(InvalidInputError, match="chroma_url"):
        VectorIndex(tmp_path, "notes", url)


@pytest.mark.parametrize("name", ["ab", "x" * 513])
def test_collection_names_need_3_to_512_characters(tmp_path, name):
    with pytest.raises(InvalidInputError, match="3 to 512"):
        VectorIndex(tmp_path, name)


def test_an_unreachable_server_is_a_typed_error(tmp_path):
    from agentmem import StoreUnavailableError

    from ..conftest import free_port

    with pytest.raises(StoreUnavailableError, match="no Chroma server"):
        VectorIndex(tmp_path, "notes", f"http://127.0.0.1:{free_port()}")

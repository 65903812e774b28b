"""Work a call runs beside its encoder: where it runs, what it waits for, and a closed memory."""
import threading

import numpy as np
import pytest

from agentmem import Memory
from agentmem.encoding import embed
from agentmem.errors import StoreClosedError
from agentmem.meanwhile import Meanwhile


@pytest.fixture
def mem(tmp_path, embedder):
    with Memory(tmp_path / "mem", embedder=embedder) as memory:
        yield memory


def test_a_store_read_in_this_process_is_read_at_once_in_the_callers_thread(mem, embedder):
    meanwhile = Meanwhile(mem._sections, embedder, concurrent_reads=False)
    threads: list[str] = []
    waiting = meanwhile.read(lambda: threads.append(threading.current_thread().name) or "mark")
    assert threads == [threading.current_thread().name]  # before the caller encodes
    assert waiting() == "mark"
    meanwhile.close()


def test_a_store_read_over_connections_of_its_own_is_read_in_a_helper(mem, embedder):
    meanwhile = Meanwhile(mem._sections, embedder, concurrent_reads=True)
    go, threads = threading.Event(), []

    def read() -> str:
        go.wait(10)
        threads.append(threading.current_thread().name)
        return "mark"

    waiting = meanwhile.read(read)
    assert threads == []  # the caller goes on (to encode) while the read waits
    go.set()
    assert waiting() == "mark" and threads[0].startswith("agentmem-helper")
    searched = meanwhile.search(lambda: {"note": 1.0})
    assert searched.result(10) == {"note": 1.0}
    meanwhile.close()
    with pytest.raises(StoreClosedError):
        meanwhile.search(lambda: {})


def test_a_batch_of_several_encoder_batches_is_encoded_whole_and_in_order(mem, embedder):
    meanwhile = Meanwhile(mem._sections, embedder, concurrent_reads=True)
    mem.remember("Ana keeps her bike in the hall")  # a store with a note, so the search runs ahead
    drafts = [mem._writer.draft(mem._item(f"note number {i} about bikes", None, None, None, None, (), None, None))
              for i in range(40)]
    embeddings, ahead = meanwhile.embed_searching_ahead(drafts, mem._writer.search_ahead)
    np.testing.assert_allclose(embeddings, embed(embedder, [draft.text for draft in drafts]), atol=1e-5)
    assert ahead is not None
    meanwhile.close()

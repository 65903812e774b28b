"""Work a call runs beside its encoder: where it runs, what a batch's search ahead finds, and a closed memory."""
import threading

import numpy as np
import pytest

from agentmem import Memory
from agentmem.encoding import embed
from agentmem.errors import StoreClosedError
from agentmem.meanwhile import Meanwhile


@pytest.fixture
def meanwhile(memory, embedder):
    """A `Meanwhile` on the memory's sections, as the memory makes its own (SQLite and PostgreSQL)."""
    beside = Meanwhile(memory._sections, embedder, memory._graph.concurrent_reads)
    yield beside
    beside.close()


def test_a_read_runs_in_a_helper_where_the_store_reads_over_connections_of_its_own(memory, meanwhile):
    go, threads = threading.Event(), []

    def read() -> str:
        go.wait(10)
        threads.append(threading.current_thread().name)
        return "mark"

    if memory._graph.concurrent_reads:  # PostgreSQL: a round trip, begun while the caller encodes
        waiting = meanwhile.read(read)
        assert threads == []
        go.set()
        assert waiting() == "mark" and threads[0].startswith("agentmem-helper")
    else:  # SQLite: a read in this process, made at once in the caller's thread
        go.set()
        waiting = meanwhile.read(read)
        assert threads == [threading.current_thread().name] and waiting() == "mark"


def test_a_search_runs_in_a_helper_and_none_starts_once_closed(meanwhile):
    searched = meanwhile.search(lambda: {"note": threading.current_thread().name})
    assert searched.result(10)["note"].startswith("agentmem-helper")
    meanwhile.close()
    with pytest.raises(StoreClosedError):
        meanwhile.search(lambda: {})


def test_a_batch_of_several_encoder_batches_is_encoded_in_order_and_searched_ahead(memory, meanwhile, embedder):
    memory.remember("Ana keeps her bike in the hall")  # the one note every search ahead finds
    drafts = [memory._writer.draft(memory._item(f"note number {i} about bikes", None, None, None, None, (), None, None))
              for i in range(40)]
    embeddings, ahead = meanwhile.embed_searching_ahead(drafts, memory._writer.search_ahead)
    np.testing.assert_allclose(embeddings, embed(embedder, [draft.text for draft in drafts]), atol=1e-5)
    assert ahead is not None and len(ahead.tokens()) == 1

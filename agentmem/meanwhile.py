"""Work a memory's call runs in helper threads while its own thread encodes.

A remember or a recall spends most of its time in the encoder. What needs no embedding runs
beside it: the store's mark before an index search (a round trip to a server), a recall's
full-text search, and for a batch of several encoder batches, each batch's index search while
the next one is encoded. A store that reads in this process (`concurrent_reads` False: SQLite)
is read in the caller's thread instead, where its reads cost no round trip.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np
from sentence_transformers import SentenceTransformer

from .encoding import ENCODE_BATCH, embed, encode_overlapped, length_batches
from .notes import Note
from .sections import Sections
from .writing import SearchAhead

T = TypeVar("T")


class Meanwhile:
    """The helper threads of one memory, and the reads and searches they run beside its encoder."""

    def __init__(self, sections: Sections, embedder: SentenceTransformer, concurrent_reads: bool) -> None:
        """`concurrent_reads`: the store's threads read on connections of their own (`NoteStore.concurrent_reads`)."""
        self._sections, self._embedder, self._concurrent_reads = sections, embedder, concurrent_reads
        self._helpers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="agentmem-helper")

    def close(self) -> None:
        """Take no more work; what runs finishes on its own (a late read finds the memory closed)."""
        self._helpers.shutdown(wait=False)

    def read(self, read: Callable[[], T], after_index_writes: bool = False) -> Callable[[], T]:
        """`read` of the store (a search's mark, before the search: `WritePath.search_ahead`,
        `ReadPath.search_mark`), begun now; returns what waits for it. `after_index_writes`: once the
        index writes in flight are done (a mark taken before would name their notes as waiting for them)."""

        def start() -> T:
            if after_index_writes:
                self._sections.wait()
            with self._sections.reading(store_only=True):
                return read()

        if not self._concurrent_reads:
            value = start()
            return lambda: value
        return self._submit(start).result

    def search(self, search: Callable[[], dict[str, float]]) -> Future[dict[str, float]]:
        """A search that needs no embedding (a recall's full text), begun in a helper thread even where
        the store reads in this process: at 100k notes it takes most of an encode. The encode stays on
        the caller's thread, where its other encodes ran: alternating remember and recall on PostgreSQL
        at 100k notes, a recall took 26.7 ms so, against 30.6 with the encode in the helper
        (BENCHMARKS.md, *latency-stores*). A store whose threads read on connections of their own is
        searched without this process's lock, so the search also runs during the index's search."""

        def searched() -> dict[str, float]:
            with self._sections.reading(store_only=True):
                return search()

        return self._submit(searched)

    def embed_searching_ahead(
        self, drafts: list[Note], search_ahead: Callable[[], SearchAhead | None]
    ) -> tuple[np.ndarray, SearchAhead | None]:
        """The drafts' embeddings, and their neighbours searched in the index outside the write
        section (`search_ahead` makes the search, or None where it cannot run ahead): once encoded,
        or when they take several encoder batches, each batch's while the next is encoded."""
        texts = [draft.text for draft in drafts]
        if len(texts) <= ENCODE_BATCH:
            starting = self.read(search_ahead)
            embeddings = embed(self._embedder, texts)
            ahead = starting()
            if ahead is not None:
                with self._sections.reading():
                    ahead.search(drafts, range(len(drafts)), embeddings)
            return embeddings, ahead
        with self._sections.reading():
            ahead = search_ahead()
        if ahead is None:
            return embed(self._embedder, texts), None

        def search(positions: list[int], embeddings: np.ndarray) -> None:
            with self._sections.reading():
                ahead.search(drafts, positions, embeddings)

        def encode(batch: list[str]) -> np.ndarray:
            return embed(self._embedder, batch)

        batches = length_batches(self._embedder, texts)
        return encode_overlapped(encode, texts, batches, self._helpers, search), ahead

    def _submit(self, work: Callable[[], T]) -> Future[T]:
        try:
            return self._helpers.submit(work)
        except RuntimeError as exc:  # the pool is shut down: the memory closed
            raise self._sections.closed_error() from exc

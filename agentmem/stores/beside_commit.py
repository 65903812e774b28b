"""New notes' vector-index write, made while the note store commits them.

Where only the store's lock holder writes the index (`IndexSync.concurrent` is False: an
embedded index, or any index beside a SQLite store), a remember's index write used to follow
its commit, in the background: the store's lock taken again, the outbox rows claimed, the
vectors written, the claim cleared, one after the other (on PostgreSQL at 1k notes, 8 ms
after a remember returned, and 1.5x the plain baseline's add in all). Here the vectors are
written in a worker thread while the transaction commits: a PostgreSQL server works on
another core, and SQLite leaves the GIL while it writes. The outbox rows are still committed
with the notes, and cleared right after, in the same section, once the index has the notes.

Nothing acknowledged is lost: a process that dies between the commit and the clear leaves
rows that the next call replays (an upsert is idempotent). A transaction that fails takes
its vectors out of the index again; if that fails too, they are strays no note claims, which
searches skip (the store maps each found token to its note) and the next open removes.
"""
from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from concurrent.futures import Executor, Future
from types import TracebackType

import numpy as np

from ..errors import StoreUnavailableError
from ..notes import Note
from .store import NoteStore
from .vectors import VectorIndex

log = logging.getLogger(__name__)


class BesideCommit:
    """The context of one write transaction: enter it before the transaction, `start` the new
    notes' write inside it, and read `written` after both. With no worker (an index that replicas
    write after the lock, `IndexSync.claimed`) it writes nothing."""

    def __init__(self, graph: NoteStore, index: VectorIndex, worker: Executor | None) -> None:
        self.graph, self.index, self._worker = graph, index, worker
        self._writing: Future[None] | None = None
        self._ids: list[str] = []
        self.written: set[str] = set()  # the notes the index has, their outbox rows cleared or left to a replay

    def start(self, notes: Sequence[tuple[Note, np.ndarray]]) -> None:
        """Begin writing these new notes (each with its searched vector); call inside the
        transaction, before its writes are sent."""
        if self._worker is None or not notes:
            return
        self._ids = [note.id for note, _ in notes]
        self._writing = self._worker.submit(self.index.upsert, [n for n, _ in notes], [v for _, v in notes])

    def __enter__(self) -> BesideCommit:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if self._writing is None or not self._finished():
            return
        if kind is not None:
            self._take_back()
            return
        self.written = set(self._ids)
        try:  # bookkeeping; if lost, the rows are replayed
            with self.graph.transaction(bookkeeping=True):
                self.graph.clear_pending(self._ids)
        except (StoreUnavailableError, sqlite3.OperationalError) as exc:
            log.warning("%d index change(s) stay in the outbox: %s", len(self._ids), exc)

    def _finished(self) -> bool:
        """Whether the index took the notes; if not, their rows stay for the write after the commit."""
        assert self._writing is not None
        try:
            self._writing.result()
        except Exception as exc:
            log.warning("%d index write(s) wait for the commit: %s", len(self._ids), exc)
            return False
        return True

    def _take_back(self) -> None:
        try:
            self.index.delete(self._ids)
        except Exception as exc:
            log.warning("%d vector(s) of a failed write stay in the index until it is opened again: %s",
                        len(self._ids), exc)

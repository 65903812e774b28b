"""Where a memory's calls run: the locks they take, and the index writes that finish after them.

Every call that writes, or reads what a write depends on, runs in the exclusive section: this
process's lock (its threads take turns on the store's connection and its link view), then the
store's lock across processes (a file lock, or PostgreSQL's advisory lock), after catching up
with what other processes committed. A read of committed rows alone takes this process's lock
only (`reading`). An index write a remember leaves after its commit finishes in the background
(`IndexWrites`); every other call waits for it first, so it sees the index as the last remember
left it.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

from .errors import StoreClosedError
from .stores import VectorIndex
from .stores.index_writes import IndexWrites
from .stores.rows import OutboxClaim
from .stores.store import NoteStore
from .stores.sync import IndexSync


class Sections:
    """The sections of one memory's calls, and the closed state that ends them all."""

    def __init__(self, store: NoteStore, index: VectorIndex, sync: IndexSync, path: Path) -> None:
        """`path`: what messages name the memory by."""
        self._store, self._index, self._sync, self._path = store, index, sync, path
        self._lock = threading.RLock()
        self._held = threading.local()  # how deep this thread is in the locked sections
        self._index_writes = IndexWrites()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def closed_error(self) -> StoreClosedError:
        """What a call on a closed memory raises (also from a helper thread that outlived it)."""
        return StoreClosedError(f"memory at {self._path} is closed")

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold both locks; first catch up with what other processes wrote (and with an index
        that was unreachable); afterwards quarantine any row a read found unreadable."""
        with self._thread_lock():
            with self._store.lock(), self._store.errors():
                if self._store.refresh_if_changed():
                    self._index.refresh()
                self._sync.catch_up()
                yield
                if self._store.unreadable:
                    self._sync.push([], self._store.quarantine(dict(self._store.unreadable)))

    @contextmanager
    def reading(self, store_only: bool = False) -> Iterator[None]:
        """A read of committed rows that no write depends on: the store's connection is this
        process's to share, so its threads take turns, but other processes are not waited for
        (SQLite's WAL and PostgreSQL give the read a snapshot of its own). A read of the note
        store alone (`store_only`) from a store whose threads read on connections of their own
        (`concurrent_reads`) does not take turns either."""
        if store_only and self._store.concurrent_reads:
            if self._closed:
                raise self.closed_error()
            with self._store.errors():
                yield
            return
        with self._thread_lock(), self._store.errors():
            yield

    @contextmanager
    def _thread_lock(self) -> Iterator[None]:
        """This process's lock on the store, once the index writes in flight are done (they may
        need the lock themselves, so a thread already holding it does not wait for them)."""
        depth = getattr(self._held, "depth", 0)
        if depth == 0:
            self._index_writes.wait()
        with self._lock:
            if self._closed:
                raise self.closed_error()
            self._held.depth = depth + 1
            try:
                yield
            finally:
                self._held.depth = depth

    def write_index_later(self, index_write: AbstractContextManager[OutboxClaim]) -> None:
        """Make a committed write's index write in the background; call it in the exclusive section.

        Where an outbox claim holds across processes (`IndexSync.concurrent`), the rows are claimed
        now, under the lock, and written after it. An embedded index is files that only the store's
        lock holder writes, so its write takes the locks again, and first catches up with what
        another process may have written since."""
        if self._sync.concurrent:
            claim = ExitStack()
            claim.enter_context(index_write)
            self._index_writes.submit(claim.close)
        else:
            self._index_writes.submit(lambda: self._write_embedded_index(index_write))

    def _write_embedded_index(self, index_write: AbstractContextManager[OutboxClaim]) -> None:
        with self._lock:
            if self._closed:
                return  # the rows stay in the outbox; the store replays them when opened again
            with self._store.lock(), self._store.errors():
                if self._store.refresh_if_changed():
                    self._index.refresh()
                with index_write as claim:
                    pass
                self._sync.announce_written(claim)

    def wait(self) -> None:
        """Return once the index writes in flight are done: a closing memory lets them land first, so
        the outbox is left empty where it can be."""
        self._index_writes.wait()

    def close(self, release: Callable[[], None] = lambda: None) -> None:
        """Accept no more calls, then `release` the stores: once, whoever calls first, and never while
        a call is inside a section (the process lock is held meanwhile)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._index_writes.close()
                release()

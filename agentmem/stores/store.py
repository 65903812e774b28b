"""The note store's contract: what the facade, the write path and the read path may ask of it.

A note store is the transactional source of truth for notes (with their embeddings), links,
history, recall times, the outbox of vector-index writes, metadata and, through
`connection`, the consolidation ledger; with its own locking. `NoteGraph` (SQLite, a folder)
and `PostgresNoteGraph` (a database shared by several hosts) implement it; a third store is one
more module with these members.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import networkx as nx
import numpy as np

from ..notes import Link, Note
from .filters import NoteFilter
from ..errors import NoteNotFoundError, StoreUnavailableError
from .rows import IndexEntry, Neighbours, OutboxClaim, StoredNote

# How long a write section waits for another process's: a process stopped or stuck inside one (SIGSTOP, a
# debugger, a hung disk) would otherwise stall every other process's writes and recalls for as long. Long
# enough for the longest legitimate section: a backup of a large store holds it throughout.
WRITE_LOCK_WAIT_S = 300


def write_lock_timeout(store: object) -> StoreUnavailableError:
    return StoreUnavailableError(
        f"another process has held the write lock of the store at {store} for over {WRITE_LOCK_WAIT_S} s (a long backup,"
        " or a process stopped or stuck inside a write); the call changed nothing: try again, or stop that process"
    )


def existing(store: NoteStore, note_id: str) -> Note:
    """The note with this id, or `NoteNotFoundError`."""
    note = store.get(note_id)
    if note is None:
        raise not_found(note_id)
    return note


def not_found(note_id: str) -> NoteNotFoundError:
    return NoteNotFoundError(f"no note with id {note_id!r}")


class NoteStore(Protocol):
    path: Any  # what messages name the store by
    graph: nx.Graph  # the links, mirrored in memory for spreading activation
    unreadable: dict[str, str]  # rows a read could not parse since the last quarantine, by id
    index_key: bytes  # keys the vector index's tokens
    store_id: str | None
    dimension: int | None  # the embeddings' length: a stored vector of another is unreadable
    migrated_from: str | None
    shared_folders: Any  # versioned folders in the store (None: processes share the local folder)
    # True: an outbox claim is held against other processes until its writer ends or dies, so
    # an index write may run after the write lock is released (False: only inside it)
    claims_across_processes: bool
    # True: threads read at once, each on a connection of its own, so a read of the store alone
    # needs no process lock (False: the process's threads share one connection)
    concurrent_reads: bool

    # ---- lifecycle, locks, transactions ------------------------------------------------
    def close(self) -> None: ...
    def lock(self) -> contextlib.AbstractContextManager[None]:
        """The write section across processes (and hosts, for a shared store)."""
    def job_lock(self, wait: bool = True) -> contextlib.AbstractContextManager[bool]:
        """One consolidation job at a time; yields False when not `wait`ing and another holds it."""
    def errors(self) -> contextlib.AbstractContextManager[None]:
        """Where the backend's failures become agentmem's typed errors."""
    def transaction(
        self, bookkeeping: bool = False, meanwhile: Callable[[], None] | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """One atomic write; `bookkeeping`: it changes no note's content and no link. `meanwhile`
        runs once the block has made its writes, while the commit is on its way (a server store
        sends COMMIT first and reads its reply after): work that must not outlast a failed commit
        and need not wait for its reply. It may call `clear_pending`, nothing else of the store."""
    def refresh_if_changed(self) -> bool:
        """Catch up with other processes' commits (the link view); True when there were some."""
    def claim(self, store_id: str) -> None: ...
    def count(self) -> int: ...
    def counts(self) -> dict[str, Any]: ...
    @property
    def connection(self) -> Any:
        """sqlite3-style `execute` in the store's transactions (the consolidation ledger)."""
    def backup(self, target: Path) -> None: ...
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...

    # ---- writing notes -------------------------------------------------------------------
    def insert(self, note: Note, embedding: np.ndarray, in_context: np.ndarray | None = None) -> None: ...
    def insert_many(self, notes: Sequence[tuple[Note, np.ndarray, np.ndarray | None]]) -> None: ...
    def replace(self, note: Note, embedding: np.ndarray, in_context: np.ndarray | None, change: str,
                before: Note) -> None: ...
    def set_fields(self, note_id: str, **fields: Any) -> None: ...
    def set_fields_many(self, changes: dict[str, dict[str, Any]]) -> None: ...
    def set_archived(self, note_ids: Iterable[str], archived: bool) -> None: ...
    def record(self, note_id: str, at: datetime, change: str, before: Note) -> None: ...
    def record_many(self, entries: Sequence[tuple[str, datetime, str, Note]]) -> None: ...
    def record_recalls(self, note_ids: Iterable[str], at: datetime) -> None: ...
    def absorb_many(self, rows: Sequence[tuple[str, str, str]]) -> None: ...
    def disown(self, note_id: str, keywords: Iterable[str]) -> None: ...
    def absorbed_keywords(self) -> dict[str, dict[str, str]]: ...
    def link(self, a: str, b: str, weight: float, at: datetime) -> None: ...
    def link_many(self, links: Sequence[tuple[str, str, float, datetime]]) -> None: ...
    def set_searched_vectors(self, vectors: dict[str, np.ndarray | None]) -> None: ...
    def delete(self, note_id: str) -> list[str]: ...
    def merge_full_text(self) -> None:
        """In a forget's transaction: drop the deleted notes' tokens from the full-text index."""
    def purge_freed(self) -> None: ...

    # ---- reading notes -------------------------------------------------------------------
    def exists(self, note_id: str) -> bool: ...
    def get(self, note_id: str) -> Note | None: ...
    def get_many(self, note_ids: Iterable[str], links: bool = True) -> dict[str, Note]: ...
    def load(self, note_ids: Iterable[str], links: bool = True,
             vectors_of: Collection[str] | None = None) -> dict[str, tuple[Note, np.ndarray | None]]: ...
    def candidates(self, note_ids: Iterable[str],
                   vectors_of: Collection[str] | None = None) -> dict[str, tuple[StoredNote, np.ndarray | None]]: ...
    def own_embeddings(self, note_ids: Iterable[str]) -> dict[str, np.ndarray]: ...
    def expect_session(self, scope: tuple[str | None, str | None, str]) -> None:
        """A hint: this thread's next write section starts with `session_vector(scope)`."""
    def expect_loads(self, note_ids: Collection[str], tokens: Collection[str]) -> None:
        """A hint: this thread's next write section reads these tokens' entries, then loads their notes and these."""
    def read_current(self, note_ids: Collection[str]) -> dict[str, Note] | None:
        """These notes with their links (unknown ids left out), read outside a write section, in this process's
        section for reads; None where a write section must read them: a store whose reads cost no round trip, a
        link view behind the store, or a row that cannot be read (the section sets it aside)."""
    def expect_neighbours(self, tokens: Collection[str]) -> None:
        """A hint: this thread's next write section reads these tokens' entries, then their notes as `neighbours`."""
    def session_vector(self, scope: tuple[str | None, str | None, str],
                       before: str | None = None) -> np.ndarray | None: ...
    def session_notes(self, scope: tuple[str | None, str | None, str]
                      ) -> list[tuple[str, np.ndarray, np.ndarray | None]]: ...
    def sessions_of(self, note_id: str) -> list[tuple[str | None, str | None, str]]: ...
    def all_notes(self) -> Iterator[tuple[Note, np.ndarray]]: ...
    def select(self, where: NoteFilter, limit: int | None = None, offset: int = 0) -> list[Note]: ...
    def lexical_search(self, terms: list[str], n: int, where: NoteFilter) -> list[tuple[str, float]]: ...
    def embeddings_where(self, where: NoteFilter, limit: int) -> dict[str, np.ndarray] | None: ...
    def links_of(self, note_id: str) -> list[Link]: ...
    def recall_times(self, note_id: str) -> list[datetime]: ...
    def history(self, note_id: str) -> list[tuple[datetime, str, Note]]: ...

    # ---- the outbox of vector-index writes, and index tokens -------------------------------
    def has_pending(self) -> bool: ...
    def search_mark(self, since_view: bool = False) -> Hashable | None:
        """Taken before an index search made outside the write section, for `changed_since`; None
        when this store could not tell later what such a search may have missed. `since_view`: the
        index shows other processes' writes only as of this store's view (an embedded index,
        reopened as the view catches up), so what they committed since the view counts too."""
    def index_rebuilt(self) -> None:
        """Commit that the vector index was just rebuilt (emptied, then refilled): other processes
        reopen an embedded index, and a search made outside the write section that may have met it
        half refilled is made again (`changed_since` answers None)."""
    def index_written(self, note_ids: Iterable[str]) -> None:
        """Commit that the vector index changed for these notes apart from the commit that queued the change
        (a replay of the outbox, a write left to the background): other processes reopen an embedded index
        they share, which would neither show the change nor, after a first write, search at all."""
    def changed_since(self, mark: Hashable) -> set[str] | None:
        """In the write section: the notes an index search made after `search_mark` may have missed
        or seen with another vector (written, linked or re-embedded since, or then waiting in the
        outbox), of any user; None when the store cannot tell (then search again)."""
    def pending(self) -> list[tuple[str, str]]: ...
    def clear_pending(self, note_ids: Iterable[str]) -> None:
        """Delete these notes' outbox rows, in the open transaction; outside one (in a `meanwhile`),
        a store may send the delete with its section's next round trip."""
    def outbox_claim(self, note_ids: list[str] | None) -> contextlib.AbstractContextManager[OutboxClaim]:
        """The outbox rows of these notes (None: every row) that no live writer holds, held by this
        caller for the block; cleared at its end when the claim is `done`, else kept."""
    def neighbours(self, note_ids: Iterable[str], user_id: str | None) -> Neighbours:
        """These notes and the user's notes that wait in the outbox for their index write
        (committed, not yet searchable in the index), with their own embeddings."""
    def all_ids(self) -> set[str]: ...
    def known_ids(self, note_ids: Collection[str]) -> set[str]: ...
    def all_tokens(self) -> dict[str, str]: ...
    def index_entries(self, tokens: Iterable[str]) -> dict[str, IndexEntry]: ...

    # ---- rows that cannot be read ------------------------------------------------------------
    def quarantine_unreadable(self) -> list[str]: ...
    def quarantine(self, reasons: dict[str, str]) -> list[str]: ...
    def quarantined(self) -> list[dict[str, Any]]: ...
    def is_quarantined(self, note_id: str) -> bool: ...
    def drop_quarantined(self, note_id: str) -> None:
        """Delete the rows of this id set aside in quarantine (`Memory.forget` of the note)."""

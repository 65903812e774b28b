"""Keeping the vector index in step with the note graph, which is the source of truth.

Every write commits to the graph with an outbox entry; `push` then writes the index and
clears the entries (on a shared store, possibly after the write lock: see `claimed`; where
the lock holder alone writes the index, new notes' vectors are written with the commit: see
`early_write`). If the index cannot be reached after the graph committed, the write
still stands (it is durable) and the outbox syncs it on a later call: a call that returns
has stored its notes, a call that raises has changed nothing.

On open the two are paired by a store id kept in both. A missing or empty graph beside a
non-empty index is refused (the index is never purged to match an empty graph); an index
of another store is refused; an index written by release 0.1 (raw ids) is rebuilt; an
embedded index that cannot be opened is rebuilt from the graph, which holds every embedding.
"""
from __future__ import annotations

import logging
import shutil
import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AgentMemError, InvalidInputError, StoreCorruptedError, StoreUnavailableError
from ..notes import Note
from .early_index import EarlyIndexWrite
from .location import GRAPH_FILE
from .rows import OutboxClaim
from .store import NoteStore
from .vectors import VectorIndex, matches

log = logging.getLogger(__name__)

VECTOR_LOCATION = "vector_index"  # the graph's meta key: where its vectors live, "server" or "embedded"

OVERFETCH = 2  # unfiltered neighbours searched per wanted one before falling back to a filtered search
MAX_REMEMBERED_CONDITIONS = 10_000  # conditions whose searches fetch only n, forgotten together past this
Found = tuple[int, list[list[tuple[str, float]]]]  # `IndexSync.nearest`: entries fetched per row, and the rows


def open_index(folder: Path, collection: str, url: str | None, graph: NoteStore) -> VectorIndex:
    """The store's vector index; an embedded one that is damaged is deleted and rebuilt later from the graph.

    A store whose vectors live on a Chroma server (`VECTOR_LOCATION`, recorded by `IndexSync.pair`) is refused
    without a server: it would build an embedded copy of them beside its graph, which the server's forgets
    would miss. A store moving its vectors to a server drops its embedded copy for the same reason."""
    kept = graph.get_meta(VECTOR_LOCATION)
    if url is None and kept == "server":
        store = folder.parent
        raise InvalidInputError(
            "this store keeps its vectors on a Chroma server: pass its chroma_url (the shell's --chroma-url) and"
            " collection." + (" To keep them here instead (that server is gone for good), restore the store as a"
                              f" backup: `touch {store}/backup-complete` and `agentmem --path NEW_FOLDER restore-backup"
                              f" {store}`" if (store / GRAPH_FILE).is_file() else "")
        )
    if url is not None and kept == "embedded":
        shutil.rmtree(folder, ignore_errors=True)
    try:
        return VectorIndex(folder, collection, url, graph.index_key)
    except StoreCorruptedError:
        if url is not None:
            raise
        log.warning("the vector index in %s is damaged; rebuilding it from the note graph", folder, exc_info=True)
        shutil.rmtree(folder, ignore_errors=True)
        return VectorIndex(folder, collection, url, graph.index_key)


class IndexSync:
    def __init__(self, graph: NoteStore, index: VectorIndex) -> None:
        self.graph, self.index = graph, index
        self._whole: set[tuple[tuple[str, Any], ...]] = set()  # conditions whose last search admitted all it found

    def search(
        self, embeddings: np.ndarray, n: int, conditions: dict[str, Any], found: Found | None = None
    ) -> list[list[tuple[str, float]]]:
        """The n nearest notes to each embedding, by note id, among those whose index metadata
        (`VectorIndex.metadata`) would equal `conditions`; `found`: `nearest`'s answer for them, if
        the index was already searched.

        The index returns tokens and distances only: reading its metadata costs more than its
        search (10k notes, 40 results: 6.5 against 1.4 ms), and the note store, which maps tokens
        to notes anyway, holds every note's scope, current even while the index lags behind the
        outbox. The index is searched unfiltered for a few times n and the notes checked here;
        only rows where that leaves fewer than n (a scope holding a small share of the notes) pay
        for the index's filtered search. A search's cost grows with its n, so conditions whose
        last search admitted every neighbour it found (a store of one user) fetch only n.
        """
        embeddings = np.asarray(embeddings, dtype=np.float32)
        key = tuple(sorted(conditions.items()))
        fetch, results = found if found is not None else self.nearest(embeddings, n, conditions)
        admitted = self._admitted(results, conditions)
        if len(self._whole) >= MAX_REMEMBERED_CONDITIONS:
            self._whole.clear()
        if all(len(kept) == len(found) for kept, found in zip(admitted, results)):
            self._whole.add(key)
        else:
            self._whole.discard(key)
        short = [row for row, (kept, found) in enumerate(zip(admitted, results)) if len(kept) < n and len(found) == fetch]
        while short:  # fetched again while the index's metadata admits notes the store does not (it lags)
            narrowed = self.index.nearest(embeddings[short], fetch, conditions)
            for row, kept in zip(short, self._admitted(narrowed, conditions)):
                admitted[row] = kept
            short = [row for row, found in zip(short, narrowed) if len(admitted[row]) < n and len(found) == fetch]
            fetch *= OVERFETCH
        return [kept[:n] for kept in admitted]

    def nearest(self, embeddings: np.ndarray, n: int, conditions: dict[str, Any]) -> Found:
        """The index's own first step of `search`: its unfiltered nearest entries (tokens), as many
        as it fetches; it reads nothing from the note store."""
        key = tuple(sorted(conditions.items()))
        fetch = n if not conditions or key in self._whole else n * OVERFETCH
        return fetch, self.index.nearest(np.asarray(embeddings, dtype=np.float32), fetch)

    def _admitted(self, results: list[list[tuple[str, float]]], conditions: dict[str, Any]) -> list[list[tuple[str, float]]]:
        """Each result's entries that are notes of the store meeting `conditions`, by note id."""
        entries = self.graph.index_entries({token for result in results for token, _ in result})
        meets = {token: matches(self.index.metadata(entry), conditions) for token, entry in entries.items()}
        return [[(entries[token].note_id, score) for token, score in result if meets.get(token)] for result in results]

    @property
    def as_of_view(self) -> bool:
        """Whether the index shows other processes' writes only once reopened, which a section does
        as the store's view catches up (an embedded index): a search knows no more than the view."""
        return self.index.mode == "embedded"

    def scope_token(self, name: str, value: str | None) -> str:
        """How the index names a scope value ('' for none)."""
        return self.index.token(name, value) if value is not None else ""

    def pair(self) -> None:
        """Check the graph and the index belong together, claiming new ones; see the module doc."""
        notes, vectors = self.graph.count(), self.index.count()
        if self.graph.store_id is None:
            if notes == 0 and vectors > 0 and self.index.mode == "server":  # most often a second store's mistake
                raise InvalidInputError(self._unpaired_index_message(vectors))
            if notes == 0 and vectors > 0:
                raise StoreCorruptedError(self._unpaired_index_message(vectors))
            self.graph.claim(uuid.uuid4().hex)
        if self.index.store_id is None and vectors == 0:
            self.index.claim(self.graph.store_id)
        elif self.index.store_id is None:
            log.warning("rebuilding a vector index written by an earlier release (%d vectors)", vectors)
            self.index.reset(self.graph.store_id)
        elif self.index.store_id != self.graph.store_id and self.index.mode == "server":  # a mistyped collection
            raise InvalidInputError(
                f"the collection holds the vectors of another store ({self.index.store_id}), not of this one"
                f" ({self.graph.store_id}): pass the collection this store was made with"
            )
        elif self.index.store_id != self.graph.store_id:
            raise StoreCorruptedError(
                f"the vector index (collection of store {self.index.store_id}) belongs to another note graph"
                f" (store {self.graph.store_id}): remove {self.index.location} to have it rebuilt from this store's"
                " notes"
            )
        self.record_location()

    def record_location(self) -> None:
        """Keep in the graph where its vectors live now (`open_index` refuses a server store opened without one)."""
        if self.graph.get_meta(VECTOR_LOCATION) != self.index.mode:
            with self.graph.transaction():
                self.graph.set_meta(VECTOR_LOCATION, self.index.mode)

    def _unpaired_index_message(self, vectors: int) -> str:
        """Why a new (or emptied) graph beside a full index is refused, and the ways out. On a Chroma
        server that is most often a second store on the first one's collection; removing the index
        would then erase the other store's vectors, so that is offered for an embedded index only."""
        restore = ("restore a backup into a new folder (`agentmem --path NEW_FOLDER restore-backup BACKUP`, or"
                   " Memory.restore_backup), which also rebuilds the vector index")
        held = f"{vectors} note{'s' if vectors != 1 else ''}"
        if self.index.mode == "server":
            return (f"{self.index.location} holds the vectors of {held} of a store (id {self.index.store_id}), and"
                    f" the note graph {self.graph.path} has none. A new store needs a collection of its own: pass"
                    f" another collection (Memory(collection=...), `agentmem --collection NAME`). If this store's note"
                    f" graph was lost, {restore}, with the same --chroma-url and --collection. Nothing was changed.")
        return (f"the note graph {self.graph.path} is missing or empty, but {self.index.location} holds {held}. The graph is the source of truth and the index alone cannot restore it: {restore}; or"
                f" remove the index folder to start empty. Nothing was changed.")

    @property
    def concurrent(self) -> bool:
        """Whether a write's index write may run after the write lock is released: the store holds
        its outbox claim against other processes, and the index is a server (an embedded index is
        files that only a lock holder writes)."""
        return self.graph.claims_across_processes and self.index.mode == "server"

    def early_write(self) -> EarlyIndexWrite:
        """The context in which a transaction's new notes are written to the index with its commit,
        where the lock holder alone writes the index (not `concurrent`); elsewhere it writes nothing."""
        return EarlyIndexWrite(self.graph, self.index, not self.concurrent)

    def reconcile(self, full: bool = False) -> None:
        """Replay the outbox (the rows no live writer holds); with `full`, also compare every id
        (at open: catches any drift, and refills an index made again, `pair` and `open_index`). An
        index found lacking notes, or holding strays, is announced as rebuilt (`NoteStore.index_rebuilt`):
        a search made meanwhile outside the write lock met it so."""
        refilled = False
        with self.graph.outbox_claim(None) as claim:
            if full and not claim.rows and self.index.count() == self.graph.count():
                return
            upserts = [i for i, op in claim.rows if op == "upsert"]
            deletes = [i for i, op in claim.rows if op == "delete"]
            if full:  # notes missing from the index, but not those a live writer is writing
                by_token = self.graph.all_tokens()
                in_index = self.index.tokens()
                waiting = {note_id for note_id, _ in self.graph.pending()}
                strays = list(in_index - by_token.keys())
                missing = [i for token, i in by_token.items() if token not in in_index and i not in waiting]
                self.index.discard(strays)
                upserts += missing
                refilled = bool(strays or missing)
            claim.done = self._write(upserts, deletes)
        if refilled:
            self.graph.index_rebuilt()
        else:
            self.announce_written(claim)

    def announce_written(self, claim: OutboxClaim) -> None:
        """After an index write apart from the commit that queued it (a replay, a write left to the
        background): other processes that share an embedded index reopen it (`NoteStore.index_written`);
        one left open did not find the notes, or failed to search an index it had opened empty. The write
        stands if the announcement fails (logged): another process then sees it at the next commit."""
        if self.index.mode != "embedded" or not claim.done or not claim.rows:
            return
        try:
            self.graph.index_written(note_id for note_id, _ in claim.rows)
        except AgentMemError as exc:
            log.warning("other processes were not told of %d index write(s): %s", len(claim.rows), exc)

    def push(
        self, upserts: Iterable[str], deletes: Iterable[str] = (), written: dict[str, tuple[Note, np.ndarray]] | None = None
    ) -> bool:
        """Write these notes' outbox entries to the index, then clear them; False (logged) when the
        index is unreachable: the entries stay and a later call syncs them. `written`: notes the
        caller has just written, with their searched vectors, as stored (not read again)."""
        with self.claimed(upserts, deletes, written) as claim:
            pass
        return claim.done

    @contextmanager
    def claimed(
        self, upserts: Iterable[str], deletes: Iterable[str] = (), written: dict[str, tuple[Note, np.ndarray]] | None = None
    ) -> Iterator[OutboxClaim]:
        """`push`, split: the notes' outbox rows are claimed when the block starts (inside the
        write lock), and the index is written when it ends, which may be after the lock is
        released (`concurrent`); until then another replica neither replays the rows nor,
        when it changes one of these notes, writes the index before this does. A block that
        raises writes nothing and leaves the rows to a replay."""
        ids = list(dict.fromkeys([*upserts, *deletes]))
        with ExitStack() as stack:
            try:  # after a commit: a store that cannot be reached now leaves the rows to a replay
                claim = stack.enter_context(self.graph.outbox_claim(ids))
            except StoreUnavailableError as exc:
                log.warning("%d index change(s) stay in the outbox: %s", len(ids), exc)
                yield OutboxClaim()
                return
            yield claim
            ops = dict(claim.rows)  # what the outbox holds is what the index lacks (a duplicate reinforced has none)
            claim.done = self._write([i for i, op in ops.items() if op == "upsert"],
                                     [i for i, op in ops.items() if op == "delete"], written)

    def _write(
        self, upserts: list[str], deletes: list[str], written: dict[str, tuple[Note, np.ndarray]] | None = None
    ) -> bool:
        """Write notes to the index; False (logged) when it or the note store is unreachable."""
        if not upserts and not deletes:
            return True
        written = written or {}
        try:  # what the index needs of our own rows
            rows = {**self.graph.load([i for i in upserts if i not in written], links=False),
                    **{i: written[i] for i in upserts if i in written}}
            self.index.upsert([note for note, _ in rows.values()], [embedding for _, embedding in rows.values()])
            self.index.delete(deletes)
        except (StoreUnavailableError, sqlite3.OperationalError) as exc:
            log.warning("%d index change(s) stay in the outbox until the index is reachable: %s",
                        len(upserts) + len(deletes), exc)
            return False
        return True

    def catch_up(self) -> None:
        """Sync what an earlier call left in the outbox, if the index is reachable now."""
        if self.graph.has_pending():
            self.reconcile()

    def rebuild(self) -> int:
        """Replace the index's contents with every note of the graph; returns how many. Other
        processes learn it from the store (`NoteStore.index_rebuilt`), even of a rebuild that failed
        half-way: their handles name the dropped collection, and their searches met it half refilled."""
        try:
            self.index.reset(self.graph.store_id)
            ids = list(self.graph.all_ids())
            for start in range(0, len(ids), 1000):
                rows = self.graph.load(ids[start:start + 1000], links=False)
                self.index.upsert([n for n, _ in rows.values()], [e for _, e in rows.values()])
            with self.graph.outbox_claim(None) as claim:
                claim.done = True
        except BaseException:
            try:
                self.graph.index_rebuilt()
            except AgentMemError as exc:  # the rebuild's own failure is the one raised
                log.warning("other processes were not told of the failed rebuild of the index: %s", exc)
            raise
        self.graph.index_rebuilt()
        return len(ids)

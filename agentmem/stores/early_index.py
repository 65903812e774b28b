"""New notes' vector-index write, made with their transaction's commit.

Where only the store's lock holder writes the index (`IndexSync.concurrent` is False: an
embedded index, or any index beside a SQLite store), a remember's index write used to follow
its commit, in the background: the store's lock taken again, the outbox rows claimed, the
vectors written, the claim cleared, each a step of its own (on PostgreSQL at 1k notes, 1.5x the
plain baseline's add in all). Written as the transaction commits, the vectors need none of that.
The write is the transaction's `meanwhile`: on SQLite it runs just before the COMMIT, and the
outbox rows are deleted in the transaction; on PostgreSQL it runs once the COMMIT is sent, while
the server writes it to disk, and the outbox rows are deleted with the section's next round
trip (`PostgresNoteGraph.clear_pending`), after the commit is known to have landed.

The write runs on the caller's thread: Chroma's embedded upsert holds Python's lock while it
works, so a worker thread beside the commit only delayed the commit's own replies (on
PostgreSQL at 1k notes, 7.1 ms for the commit with the upsert beside it, against 1.7 ms
alone). Nothing acknowledged is lost: a transaction that fails takes out the vectors of the
notes the store does not hold (a PostgreSQL connection lost with the COMMIT sent may have
committed, and then the note keeps its vector, and its outbox row too); if that check or the
delete fails, or the process dies before the commit, they are strays no note claims, which
searches skip (the store maps each found token to its note) and the next open removes. An
index that refuses the write leaves the outbox rows to the write after the commit
(`IndexSync.claimed`).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from types import TracebackType

import numpy as np

from ..notes import Note
from .store import NoteStore
from .vectors import VectorIndex

log = logging.getLogger(__name__)


class EarlyIndexWrite:
    """The context of one write transaction: enter it before the transaction, `stage` the new
    notes inside it, give `write` as the transaction's `meanwhile`, and read `written` after
    both. Where replicas write the index after the lock (`enabled` False), it writes nothing."""

    def __init__(self, graph: NoteStore, index: VectorIndex, enabled: bool) -> None:
        self.graph, self.index, self.enabled = graph, index, enabled
        self.staged: Sequence[tuple[Note, np.ndarray]] = []
        self.written: list[str] = []  # the notes whose vectors the index took, their outbox rows deleted

    def stage(self, notes: Sequence[tuple[Note, np.ndarray]]) -> None:
        """The new notes (each with its searched vector) that `write` writes; call once the
        transaction has written their rows."""
        self.staged = notes

    def write(self) -> None:
        """Write the staged notes to the index and delete their outbox rows: the transaction's
        `meanwhile`, so on PostgreSQL the upsert runs while the server commits."""
        notes, self.staged = self.staged, []
        if not self.enabled or not notes:
            return
        try:
            self.index.upsert([note for note, _ in notes], [vector for _, vector in notes])
        except Exception as exc:
            log.warning("%d index write(s) wait for the commit: %s", len(notes), exc)
            return
        self.written = [note.id for note, _ in notes]
        self.graph.clear_pending(self.written)

    def __enter__(self) -> EarlyIndexWrite:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None or not self.written:
            return
        try:  # the transaction failed: the vectors of the notes it did not store come out again
            stored = self.graph.get_many(self.written, links=False)
            self.index.delete([note_id for note_id in self.written if note_id not in stored])
        except Exception as exc:
            log.warning("%d vector(s) of a failed write stay in the index until it is opened again: %s",
                        len(self.written), exc)
        self.written = []

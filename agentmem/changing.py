"""Changes to notes already stored: update, link, forget, archive and restore.

`Memory` checks each call's arguments and embeds new text before the write section; the methods
here run inside the caller's exclusive section (`Sections.exclusive`), each in one transaction of
the note store, and push what the vector index must learn through the outbox (`IndexSync.push`).
What the parametric memory must do after a change (retract an edit) is the caller's to start.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np

from .consolidation import ConsolidationPolicy, Ledger
from .consolidation.policy import edit_scopes, is_marked_shared
from .errors import InvalidInputError, StoreUnavailableError
from .notes import DecayReport, Fact, Note
from .stores.store import NoteStore, existing, not_found
from .stores.sync import IndexSync
from .writing import WritePath

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Revision:
    """What an update changes, checked (and its text embedded) before the write section; None leaves a
    field as it is."""

    text: str | None = None
    embedding: np.ndarray | None = None  # the new text's
    tags: list[str] | None = None
    metadata: dict[str, Any] | None = None
    fact_given: bool = False  # `fact` was passed (None then removes the note's fact)
    fact: Fact | None = None
    extracted: Fact | None = None  # the fact extractor's from the new text, when no fact was passed

    def fact_after(self, before: Note, extract: Callable[[str], Fact | None]) -> tuple[bool, Fact | None]:
        """Whether the note's fact changes, and to what. New text brings the extractor's fact unless
        the note's fact was given explicitly (it is not what the extractor finds in the old text)."""
        if self.fact_given:
            return True, self.fact
        if self.text is not None and before.fact in (None, extract(before.text)):
            return True, self.extracted
        return False, None


class Updated(NamedTuple):
    """What an update did."""

    note: Note
    changed: bool = True  # False: the note already held the change, and nothing was written
    unshared: bool = False  # its edit that fired for everyone is to be retracted: it lost its shared mark,
    # and the policy gives its edit to its owner's scope


class ChangePath:
    """Update, link, forget, archive and restore, on one store and its index."""

    def __init__(self, store: NoteStore, index: IndexSync, writer: WritePath, ledger: Ledger) -> None:
        self.store, self.index, self.writer, self.ledger = store, index, writer, ledger

    def update(self, note_id: str, revision: Revision, at: datetime, policy: ConsolidationPolicy) -> Updated:
        """The note as changed; as it was when the change is what it already holds (nothing is written)."""
        before = existing(self.store, note_id)
        changes = self.writer.enrichment_after(before, revision.text, revision.tags)
        changes["updated_at"] = max(at, before.created_at)
        if revision.metadata is not None:
            changes["metadata"] = revision.metadata
        fact_changes, fact = revision.fact_after(before, self.writer.extract_fact)
        if fact_changes:
            changes["fact"] = fact
        if before.model_copy(update={**changes, "updated_at": before.updated_at}) == before:
            return Updated(before, changed=False)
        note = self.writer.replace(before, before.model_copy(update=changes), revision.embedding)
        if not is_marked_shared(before) or is_marked_shared(note) or not self._owned(note, policy):
            return Updated(note)
        try:  # its edit stops firing for everyone now, not at the next job
            with self.store.transaction():
                return Updated(note, unshared=self.ledger.retract_shared(note_id, at))
        except StoreUnavailableError:  # the update stands; the next job moves the edit to its scope
            log.warning("the shared edit of note %s stays until the next job", note_id, exc_info=True)
            return Updated(note)

    def _owned(self, note: Note, policy: ConsolidationPolicy) -> bool:
        """Whether the policy gives this note's edit to its owner's scope (not shared because enough
        users state its fact); read over every note, which only an update taking a shared mark away needs."""
        return edit_scopes([n for n, _ in self.store.all_notes()], policy).get(note.id) is not None

    def link(self, a: str, b: str, weight: float, at: datetime) -> None:
        """Link two notes of one user, both ways."""
        first, second = existing(self.store, a), existing(self.store, b)
        if first.user_id != second.user_id:
            raise InvalidInputError("links never cross users: these notes belong to different users")
        with self.store.transaction():
            self.store.link(a, b, weight, at)

    def forget(self, note_id: str, at: datetime) -> None:
        """Delete a note and every trace of it (see `Memory.forget`); its edits are set to be retracted."""
        if not self.store.exists(note_id) and not self.store.is_quarantined(note_id):
            raise not_found(note_id)
        remixed: dict[str, np.ndarray | None] = {}
        for session in self.store.sessions_of(note_id):
            remixed |= self.writer.remixed(session, {note_id: None})
        with self.store.transaction():
            self.store.delete(note_id)
            self.store.drop_quarantined(note_id)
            self.store.set_searched_vectors(remixed)  # the later notes of its session held its vector
            self.store.merge_full_text()
            self.ledger.retract_note(note_id, at)
        self.index.push(list(remixed), [note_id])
        self.store.purge_freed()

    def archive_faded(self, at: datetime, retention: Callable[[Note, datetime], float], below: float) -> DecayReport:
        """Archive every active note whose retention at `at` fell below `below`."""
        active = [note for note, _ in self.store.all_notes() if not note.archived]
        faded = [note.id for note in active if retention(note, at) < below]
        if faded:
            with self.store.transaction():
                self.store.set_archived(faded, True)
            self.index.push(faded)
        return DecayReport(at=at, examined=len(active), archived=faded, kept=len(active) - len(faded))

    def restore(self, note_id: str, at: datetime) -> Note:
        """Bring an archived note back, its forgetting clock restarted at `at`."""
        note = existing(self.store, note_id)
        with self.store.transaction():
            self.store.set_archived([note_id], False)
            self.store.set_fields(note_id, last_recalled=max(at, note.last_recalled))
        self.index.push([note_id])
        return existing(self.store, note_id)

"""The read path: candidates from the index and the full-text search, one hop along the links,
ranked by relevance, retention and time; and recall as rehearsal (reinforcement).

Everything here runs inside the caller's exclusive section, except `lexical`, which a recall
runs in a helper thread while it encodes the query, and `search_mark` and `dense_ahead`, which
search the index before the section (`Memory.recall`).
"""
from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable
from concurrent.futures import Future
from datetime import datetime
from typing import Literal, NamedTuple

import numpy as np

from . import forgetting, linking, ranking, temporal
from .config import MemoryConfig
from .errors import InvalidInputError
from .notes import Hit, Note
from .stores.filters import NoteFilter
from .stores.rows import StoredNote, checked
from .stores.store import NoteStore
from .stores.sync import Found, IndexSync

log = logging.getLogger(__name__)

EXACT_SEARCH_LIMIT = 5000  # with metadata filters, score up to this many admitted notes exactly
SIMILARITY_SLACK = 1e-5  # float32 rounding between the index's distances and the loaded vectors
RESCORED_LIMIT = 100  # notes changed since a search ahead that are scored in the section; more: it searches again


def refuse_unborn(notes: Iterable[Note], at: datetime) -> None:
    """An `InvalidInputError` naming the notes made after `at` (aware, UTC), if any: none can have been recalled then."""
    if unborn := [note for note in notes if note.created_at > at]:
        named = ", ".join(f"{note.id} (made {note.created_at.isoformat()})" for note in unborn[:3])
        more = f" and {len(unborn) - 3} more" if len(unborn) > 3 else ""
        raise InvalidInputError(f"cannot count a recall at {at.isoformat()} of a note made after it: {named}{more};"
                                " nothing was counted")


class DenseAhead(NamedTuple):
    """A query's nearest index entries, searched before the write section, and the store's mark
    taken before that search (which tells the section what it may have missed)."""

    mark: Hashable
    found: Found


class ReadPath:
    def __init__(self, store: NoteStore, index: IndexSync, config: MemoryConfig) -> None:
        self.store, self.index, self.config = store, index, config

    def lexical(self, query: str, k: int, where: NoteFilter) -> dict[str, float]:
        """The full-text candidates of a search for the k best notes, by id with their score.

        It needs no query embedding, so a recall runs it while the query is being encoded."""
        return dict(self.store.lexical_search(linking.content_words(query), k + self.config.candidate_pool, where))

    def search_mark(self) -> Hashable | None:
        """The store's mark before a search of the index outside the write section (`dense_ahead`)."""
        return self.store.search_mark(since_view=self.index.as_of_view)

    def dense_ahead(
        self, query_embedding: np.ndarray, k: int, where: NoteFilter, mark: Hashable | None,
        searching: Future[dict[str, float]],
    ) -> DenseAhead | None:
        """The index searched for the query before the write section, as a remember's neighbours are
        (`writing.SearchAhead`): the section holds the store's lock for less, and a store that reads
        by round trips reads what the section needs first with its lock (`NoteStore.expect_loads`:
        the entries of what was found, then those notes and the full-text candidates known by now).
        None where the section searches itself: with metadata filters, or no `mark` (`search_mark`)."""
        if mark is None or where.metadata:
            return None
        conditions = where.index_conditions(self.index.scope_token)
        try:
            found = self.index.nearest(query_embedding[None, :], k + self.config.candidate_pool, conditions)
        except Exception:  # the section searches again, and reports what still fails
            log.debug("the search ahead failed; the write section searches again", exc_info=True)
            return None
        lexical = searching.result() if searching.done() and searching.exception() is None else {}
        self.store.expect_loads(lexical.keys(), [token for token, _ in found[1][0]])
        return DenseAhead(mark, found)

    def search(
        self, query: str, query_embedding: np.ndarray, k: int, where: NoteFilter, at: datetime,
        searching: Future[dict[str, float]], ahead: DenseAhead | None = None,
    ) -> list[Hit]:
        """The k best notes for the query among those `where` admits, with why (nothing is written),
        given the query's full-text candidates, which `searching` may still be finding meanwhile
        (see `lexical`), and the index's search made ahead, if any. Those forgotten since are left
        out by the read."""
        pool = k + self.config.candidate_pool
        dense = self.dense(query_embedding, pool, where, ahead)
        similar = dict(dense)
        lexical = searching.result()
        best_lexical = max(lexical.values(), default=0.0)
        time_match = temporal.time_matcher(query, at)

        def candidate(note: StoredNote, embedding: np.ndarray | None) -> ranking.Candidate:
            return ranking.Candidate(
                note=note,
                similarity=similar[note.id] if embedding is None else float(embedding @ query_embedding),
                lexical=lexical.get(note.id, 0.0) / best_lexical if best_lexical else 0.0,
                temporal=time_match(note.text, note.created_at),
                retention=self.retention(note, at),
            )

        # the dense candidates' similarities are the index's: only the others' vectors are read
        rows = self.store.candidates({*similar, *lexical}, vectors_of=lexical.keys() - similar)
        candidates = {note_id: candidate(*row) for note_id, row in rows.items()}
        seeds = sorted(candidates.values(), key=lambda c: -ranking.relevance(c, self.config))[:k]
        reached = ranking.spread_activation(
            {c.note.id: ranking.relevance(c, self.config) for c in seeds}, self.store.graph, self.config.link_spread
        )
        # a linked note outside the candidates has no lexical score, and (when the index filled
        # the pool) no higher similarity than the pool's last: load only those that could still
        # beat the k-th candidate's score, which link activation can only raise
        unseen = 1.0 if len(dense) < pool else min(s for _, s in dense) + SIMILARITY_SLACK
        timed = temporal.named_period(query, at) is not None or temporal.asks_when(query)
        ceiling = unseen + self.config.time_weight * timed
        kth = sorted((ranking.score(c, self.config) for c in candidates.values()), reverse=True)[k - 1:k] or [0.0]
        promising = (i for i, (a, _) in reached.items() if i not in candidates and max(ceiling, a) >= kth[0])
        linked = self.store.candidates(promising)
        candidates |= {note_id: candidate(*row) for note_id, row in linked.items() if where.admits(row[0])}
        for note_id, (activation, via) in reached.items():
            if note_id in candidates and activation > ranking.relevance(candidates[note_id], self.config):
                candidates[note_id].link_activation, candidates[note_id].via_link = activation, via
        while True:  # candidates were read as a ranking reads them: what is returned is read whole and checked
            ranked = ranking.rank(list(candidates.values()), self.config, k)
            notes = {c.note.id: checked(c.note, self.store.links_of(c.note.id), self.store.unreadable) for _, c in ranked}
            if None not in notes.values():
                return [ranking.hit(scored, notes[scored[1].note.id]) for scored in ranked]
            candidates = {i: c for i, c in candidates.items() if notes.get(i, c.note) is not None}

    def dense(
        self, query_embedding: np.ndarray, n: int, where: NoteFilter, ahead: DenseAhead | None = None
    ) -> list[tuple[str, float]]:
        """The n notes nearest the query among those `where` admits.

        The index narrows by scope only; with metadata filters, the admitted notes' vectors are
        scored here exactly when there are few enough, else the index is over-fetched. A search
        made ahead is used with the notes it may have missed (`NoteStore.changed_since`: written,
        re-embedded or waiting for their index write since its mark) scored here, when they are few.
        """
        conditions = where.index_conditions(self.index.scope_token)
        if not where.metadata:
            changed = None if ahead is None else self.store.changed_since(ahead.mark)
            if changed is None or len(changed) > RESCORED_LIMIT:
                return self.index.search(query_embedding[None, :], n, conditions)[0]
            found = self.index.search(query_embedding[None, :], n, conditions, ahead.found)[0]
            rows = self.store.candidates(changed) if changed else {}
            rescored = [(i, float(v @ query_embedding)) for i, (note, v) in rows.items() if where.admits(note)]
            return sorted([*((i, s) for i, s in found if i not in changed), *rescored], key=lambda h: -h[1])[:n]
        vectors = self.store.embeddings_where(where, EXACT_SEARCH_LIMIT)
        if vectors is None:
            wide = self.index.search(query_embedding[None, :], n * 20, conditions)[0]
            kept = self.store.get_many((i for i, _ in wide), links=False)
            return [(i, s) for i, s in wide if i in kept and where.admits(kept[i])][:n]
        scored = sorted(((i, float(v @ query_embedding)) for i, v in vectors.items()), key=lambda h: -h[1])
        return scored[:n]

    def reinforce(self, notes: list[Note], at: datetime, *, unborn: Literal["skip", "refuse"] = "skip") -> list[Note]:
        """Recalling is rehearsal: count it, strengthen the note, restart its forgetting clock. Returns the notes
        in the same order, as they are now.

        No recall is recorded at a time before a note was made. A note made after `at` is left as it is with
        `unborn="skip"`, as a recall (`Memory.recall`) counts what it found: it finds the notes the store holds now,
        those made after its `at` too, and only the others existed then; with `unborn="refuse"`, as `reinforce`
        is asked to count named notes, the call is refused (`refuse_unborn`) and nothing is counted."""
        if unborn == "refuse":
            refuse_unborn(notes, at)
        counted = [note for note in notes if note.created_at <= at]
        changes = {
            note.id: {
                "recall_count": note.recall_count + 1,
                "strength": forgetting.reinforced_strength(note.strength, self.config.strength_gain),
                "last_recalled": max(at, note.last_recalled),
            }
            for note in counted
        }
        with self.store.transaction(bookkeeping=True):
            self.store.set_fields_many(changes)
            self.store.record_recalls([note.id for note in counted], at)
        return [note.model_copy(update=changes[note.id]) if note.id in changes else note for note in notes]

    def retention(self, note: Note | StoredNote, at: datetime) -> float:
        unit = self.config.time_unit_seconds
        if self.config.curve == "actr":
            presentations = [note.created_at, *self.store.recall_times(note.id)]
            ages = [(at - p).total_seconds() / unit for p in presentations]
            return forgetting.actr_retention(ages, self.config.actr_decay)
        elapsed = (at - note.last_recalled).total_seconds() / unit
        return forgetting.exponential_retention(elapsed, note.strength)

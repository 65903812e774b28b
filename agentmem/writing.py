"""The write path: a validated item becomes a note, linked to its neighbours, stored.

Drafting (local enrichment, the optional enricher, the fact extractor) needs no lock, and the
search of the index for the drafts' neighbours (`SearchAhead`) only a read section. `store_notes`
runs inside the caller's exclusive section and one transaction (its index write is made with its
commit, `IndexSync.early_write`, or follows the section, `IndexSync.claimed`): it finds each draft's
nearest notes of the same user, reinforces a near-duplicate instead of copying it, links the
rest and lets linked neighbours absorb a few keywords (recorded by origin, so `forget` can take
them back).
"""
from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Callable, Collection, Hashable, Sequence
from typing import Any

import numpy as np
from pydantic import TypeAdapter, ValidationError

from . import forgetting, linking
from .config import MemoryConfig
from .consolidation.policy import is_marked_shared
from .facts import FactExtractor
from .errors import StoreUnavailableError
from .notes import Enrichment, Fact, MemoryItem, Note, Tag, clean_string
from .stores.batch import WriteBatch
from .stores.filters import SCOPES
from .stores.store import NoteStore
from .stores.rows import Neighbours, OutboxClaim
from .stores.sync import Found, IndexSync

log = logging.getLogger(__name__)

Enricher = Callable[[str], Enrichment | dict[str, Any]]
_WORD = TypeAdapter(Tag)


IndexRow = tuple[int, list[tuple[str, float]]]  # a draft's row of `IndexSync.nearest`, with the entries fetched


def as_found(rows: list[IndexRow]) -> Found | None:
    """Rows searched apart as one `IndexSync.nearest` answer, if they were fetched alike (a search
    that admits every entry it finds lowers what the next one fetches)."""
    fetched = {fetch for fetch, _ in rows}
    return (fetched.pop(), [row for _, row in rows]) if len(fetched) == 1 else None


def _clean_words(words: list[str]) -> list[str]:
    """An enricher's words that a note can hold (lower-cased, valid Unicode, short); others dropped."""
    kept = []
    for word in words:
        try:
            kept.append(_WORD.validate_python(word.lower()))
        except (ValidationError, AttributeError):
            log.warning("enricher gave an unusable word %r; dropped", word)
    return kept


class WritePath:
    def __init__(
        self, store: NoteStore, index: IndexSync, config: MemoryConfig,
        enricher: Enricher | None, fact_extractor: FactExtractor | None,
    ) -> None:
        self.store, self.index, self.config = store, index, config
        self.enricher, self.fact_extractor = enricher, fact_extractor

    # ---- drafting: no lock needed -------------------------------------------------

    def draft(self, item: MemoryItem) -> Note:
        """A new note with local enrichment, improved by the enricher when it works."""
        keywords = linking.extract_keywords(item.text, self.config.max_keywords)
        tags = linking.extract_tags(item.text, item.tags)
        context = linking.describe(item.text, keywords, item.at, item.user_id)
        if self.enricher is not None:
            try:
                extra = self.enricher(item.text)
                extra = extra if isinstance(extra, Enrichment) else Enrichment.model_validate(extra)
                keywords += [w for w in _clean_words(extra.keywords) if w not in keywords]
                tags += [t for t in _clean_words(extra.tags) if t not in tags]
                context = clean_string(extra.context)[:500] if extra.context else context
            except Exception:  # the note matters more than its enrichment
                log.warning("enricher failed; keeping the local enrichment", exc_info=True)
        return Note(
            id=uuid.uuid4().hex,
            text=item.text,
            keywords=keywords[: self.config.max_keywords],
            tags=tags[:32],
            context=context,
            user_id=item.user_id,
            agent_id=item.agent_id,
            session_id=item.session_id,
            created_at=item.at,
            updated_at=item.at,
            last_recalled=item.at,
            strength=self.config.initial_strength,
            metadata=item.metadata or {},
            fact=item.fact or self.extract_fact(item.text),
        )

    def extract_fact(self, text: str) -> Fact | None:
        """The fact extractor's fact for `text`; a failing extractor costs the fact, never the note."""
        if self.fact_extractor is None:
            return None
        try:
            fact = self.fact_extractor(text)
        except Exception:
            log.warning("fact extractor failed; storing the note without a fact", exc_info=True)
            return None
        return fact if isinstance(fact, Fact) else None

    # ---- storing: inside the caller's exclusive section -----------------------------

    def search_ahead(self) -> SearchAhead | None:
        """A search of the index for the drafts' neighbours before their write section, or None
        when the store could not tell later what it missed (`NoteStore.search_mark`). Call in a
        read section."""
        mark = self.store.search_mark(since_view=self.index.as_of_view)
        return None if mark is None else SearchAhead(self, mark)

    def store_notes(
        self, drafts: list[Note], embeddings: np.ndarray, deduplicate: bool, ahead: SearchAhead | None = None
    ) -> tuple[list[Note], contextlib.AbstractContextManager[OutboxClaim] | None]:
        """Store a batch in one transaction; returns, per draft, the note it became (itself or the
        note it duplicates), and the index write still to make (`IndexSync.claimed`, not yet
        entered), or None when the index was written with the commit (`IndexSync.early_write`).
        `ahead`: the drafts' nearest indexed notes, searched before, used if they still hold."""
        in_context = self.in_context(drafts, embeddings)
        held = None if ahead is None else ahead.results(len(drafts))
        searched, changed = (None, set()) if held is None else held
        found, neighbours = self.neighbour_candidates(drafts, embeddings, searched, changed)
        candidates = [self.usable(near) for near in found]
        # the stored candidates are read once, before the transaction (the caller's lock keeps
        # them current), and kept current here as the batch changes them: the transaction then
        # has no reads, and a remote store sends all its writes at once
        wanted = {i for near in candidates for i, _ in near if isinstance(i, str)}
        known = {i: note for stored in neighbours for i, note in stored.notes(wanted).items()}
        stored: list[Note] = []
        early = self.index.early_write()
        with early, self.store.transaction(meanwhile=early.write):
            batch = WriteBatch(self.store)
            for position, draft in enumerate(drafts):
                earlier = [(stored[j].id, s) for j, s in candidates[position] if isinstance(j, int)]
                indexed = [(i, s) for i, s in candidates[position] if isinstance(i, str)]
                stored.append(self.insert_or_reinforce(
                    batch, draft, embeddings[position], in_context[position], indexed + earlier, known, deduplicate
                ))
            batch.flush()
            early.stage([(note, own if searched is None else searched) for note, own, searched in batch.notes])
        ids = list(dict.fromkeys(note.id for note in stored))
        # what the outbox got: the new notes the index did not take, and any archived note revived
        unwritten = [note.id for note, _, _ in batch.notes if note.id not in early.written] + batch.revived
        index_write = self.index.claimed(unwritten, written={
            draft.id: (draft, embedding if searched is None else searched)
            for draft, embedding, searched in zip(drafts, embeddings, in_context) if draft.id in known
        }) if unwritten else None
        # `known` holds each note as the transaction left it (a later draft of the batch may have
        # evolved or reinforced it): reading them back cost a round trip, and 0.14 s a batch of 200
        as_stored = {i: known[i].model_copy(update={"links": self.store.links_of(i)}) for i in ids}
        return [as_stored[note.id] for note in stored], index_write

    def usable(self, found: list[tuple[str | int, float]]) -> list[tuple[str | int, float]]:
        """The candidates a draft may duplicate or link to, most similar first: the `max_links` most
        similar at `link_threshold` or more, and any at `duplicate_threshold`. Only these are read
        from the store (a batch of 200 on 10k notes read 1,800 candidates, 0.3 s, to link 1,000)."""
        ranked = sorted(found, key=lambda c: -c[1])
        linkable = [c for c in ranked if c[1] >= self.config.link_threshold][: self.config.max_links]
        return linkable + [c for c in ranked if c[1] >= self.config.duplicate_threshold and c not in linkable]

    def expect(self, drafts: list[Note], ahead: SearchAhead | None) -> None:
        """Name what the write section reads first, so that a store that reads by round trips reads it
        with its lock: the session whose latest vector `in_context` reads (`NoteStore.expect_session`),
        and the notes behind what the search made ahead found (`NoteStore.expect_neighbours`); call
        before the write section."""
        sessions = {(d.user_id, d.agent_id, d.session_id) for d in drafts if d.session_id is not None}
        if self.config.context_weight and len(sessions) == 1:
            self.store.expect_session(sessions.pop())
        tokens = set() if ahead is None or ahead.failed else ahead.tokens()  # a failed one: the section searches
        if tokens:
            self.store.expect_neighbours(tokens)

    def in_context(self, drafts: list[Note], embeddings: np.ndarray) -> list[np.ndarray | None]:
        """The vector each draft is searched by, when it belongs to a session (else None).

        It is the draft's own embedding plus `context_weight` times the vector of the note
        remembered just before it in the same session, which carries the one before it, and
        so on, fading: a terse reply ("Yes, last Friday!") is then found by what it answers.
        """
        latest: dict[tuple[str | None, str | None, str], np.ndarray | None] = {}
        vectors: list[np.ndarray | None] = []
        for draft, own in zip(drafts, embeddings):
            if draft.session_id is None or not self.config.context_weight:
                vectors.append(None)
                continue
            scope = (draft.user_id, draft.agent_id, draft.session_id)
            if scope not in latest:
                latest[scope] = self.store.session_vector(scope)
            vectors.append(self.with_context(own, latest[scope]))
            latest[scope] = own if vectors[-1] is None else vectors[-1]
        return vectors

    def with_context(self, own: np.ndarray, previous: np.ndarray | None) -> np.ndarray | None:
        if previous is None:
            return None
        mixed = own + self.config.context_weight * previous
        return mixed / np.linalg.norm(mixed)

    def remixed(
        self, scope: tuple[str | None, str | None, str], own: dict[str, np.ndarray | None]
    ) -> dict[str, np.ndarray | None]:
        """The vectors a session's notes are searched by, mixed again from its first note on with
        `own` replacing notes' own embeddings (None: the note is gone); only those that change.

        Each carries a fading share of every note before it in the session, so a note forgotten or
        re-embedded must leave the mix of each one after it: the follower of a forgotten note kept
        half its vector, which gave the forgotten text back at cosine 1.0. A note searched by its
        own embedding (the session's first, or one imported) stays so, and restarts the mix; with
        `context_weight` 0 none is mixed."""
        changed: dict[str, np.ndarray | None] = {}
        previous: np.ndarray | None = None
        for note_id, embedding, searched in self.store.session_notes(scope):
            embedding = own.get(note_id, embedding)
            if embedding is None:
                continue
            mixed = None if searched is None or not self.config.context_weight else self.with_context(embedding, previous)
            if (mixed is None) != (searched is None) or (mixed is not None and not np.array_equal(mixed, searched)):
                changed[note_id] = mixed
            previous = embedding if mixed is None else mixed
        return changed

    def nearest_indexed(
        self, drafts: list[Note], embeddings: np.ndarray, ahead: list[IndexRow] | None = None
    ) -> list[list[tuple[str, float]]]:
        """For each draft, its nearest notes in the index among its own user's (links never cross
        users); `ahead`: each draft's row of `nearest_unchecked`, if the index was already searched."""
        found: list[list[tuple[str, float]]] = [[] for _ in drafts]
        for user, positions in self.by_user(drafts).items():
            scope = {"user_id": self.index.scope_token("user_id", user)}
            searched = None if ahead is None else as_found([ahead[p] for p in positions])
            results = self.index.search(embeddings[positions], self.neighbour_count, scope, searched)
            for position, result in zip(positions, results):
                found[position] = result
        return found

    def nearest_unchecked(self, drafts: list[Note], embeddings: np.ndarray) -> list[IndexRow]:
        """`IndexSync.nearest` for each draft among its user's: the index alone, no read of the store."""
        rows: list[IndexRow] = [(0, []) for _ in drafts]
        for user, positions in self.by_user(drafts).items():
            scope = {"user_id": self.index.scope_token("user_id", user)}
            fetch, found = self.index.nearest(embeddings[positions], self.neighbour_count, scope)
            for position, row in zip(positions, found):
                rows[position] = (fetch, row)
        return rows

    @staticmethod
    def by_user(drafts: list[Note]) -> dict[str | None, list[int]]:
        """The drafts' positions, by user."""
        positions: dict[str | None, list[int]] = {}
        for position, draft in enumerate(drafts):
            positions.setdefault(draft.user_id, []).append(position)
        return positions

    @property
    def neighbour_count(self) -> int:
        """Nearest notes searched per draft: a few more than it may link to."""
        return self.config.max_links + 5

    def neighbour_candidates(
        self, drafts: list[Note], embeddings: np.ndarray, ahead: list[IndexRow] | None = None,
        changed: Collection[str] = (),
    ) -> tuple[list[list[tuple[str | int, float]]], list[Neighbours]]:
        """For each draft, its nearest stored notes (by id) and earlier drafts of the batch (by
        position), with the similarity of their own embeddings (duplicates and links are about
        what notes say, not the conversation around them); and the stored ones as read. Stored
        notes still waiting in the outbox count too: another replica may be writing them to the
        index right now, and the same text remembered there and here must make one note.

        Only notes of the same user are candidates. `ahead`: as for `nearest_indexed`, and then
        `changed`: the notes that search may have missed (`NoteStore.changed_since`), compared
        like waiting ones.

        The waiting notes are read before the index is searched too: another replica's index write
        may land between the search and the read, and its note would then be neither found nor
        waiting (a search ahead read them before it searched: they are among `changed`).
        """
        n = self.neighbour_count
        users = self.by_user(drafts)
        waiting = {user: self.store.neighbours((), user).waiting | set(changed) for user in users}
        indexed = self.nearest_indexed(drafts, embeddings, ahead)
        found: list[list[tuple[str | int, float]]] = [[] for _ in drafts]
        read: list[Neighbours] = []
        for user, positions in users.items():
            results = [indexed[position] for position in positions]
            read.append(self.store.neighbours({i for result in results for i, _ in result} | waiting[user], user))
            own = read[-1].embeddings
            unindexed = read[-1].waiting | waiting[user]  # a writer's index write is (or was, just now) under way
            similarities = embeddings[positions] @ embeddings[positions].T
            for row, (position, result) in enumerate(zip(positions, results)):
                near = dict.fromkeys([*(i for i, _ in result), *unindexed])
                stored = sorted(((i, float(own[i] @ embeddings[position])) for i in near if i in own),
                                key=lambda found: -found[1])[:n]
                earlier = np.argsort(-similarities[row, :row], kind="stable")[:n]
                found[position] = [*stored, *((positions[int(col)], float(similarities[row, col])) for col in earlier)]
        return found, read

    def insert_or_reinforce(
        self, batch: WriteBatch, draft: Note, embedding: np.ndarray, in_context: np.ndarray | None,
        candidates: list[tuple[str, float]], known: dict[str, Note], deduplicate: bool = True,
    ) -> Note:
        """Store the draft linked to its candidates (those at least as similar as a link or a
        duplicate needs), or reinforce the note it duplicates, writing to `batch`; `known` holds the
        candidates as stored and is updated with what this changes."""
        candidates = sorted(candidates, key=lambda c: -c[1])
        for note_id, similarity in candidates:
            other = known.get(note_id)
            if deduplicate and other is not None and self.repeats(other, draft, similarity):
                known[note_id] = self.reinforce_duplicate(batch, other, draft)
                return known[note_id]
        batch.insert(draft, embedding, in_context)
        known[draft.id] = draft
        linked = [(i, s) for i, s in candidates if i in known and s >= self.config.link_threshold]
        for note_id, similarity in linked[: self.config.max_links]:
            batch.link(draft.id, note_id, round(similarity, 6), draft.created_at)
            known[note_id] = self.evolve(batch, known[note_id], draft)
        return draft

    def repeats(self, existing: Note, draft: Note, similarity: float) -> bool:
        """Whether the draft only repeats a note of its scope, which it then reinforces (`reinforce_duplicate`):
        nearly as similar as the same text, saying nothing new, with no metadata the note lacks and no other
        answer than the note's fact gives (a fact given with a repeat would be lost). A note marked shared speaks
        for every user and changes only by an explicit update (which a key bound to one user may not make): a
        draft that would give it the fact it lacks, or tags, is a note of its own."""
        return (
            all(getattr(existing, scope) == getattr(draft, scope) for scope in SCOPES)
            and similarity >= self.config.duplicate_threshold
            and linking.says_nothing_new(existing.text, draft.text)
            and draft.metadata.items() <= existing.metadata.items()
            and not (existing.fact is not None and draft.fact is not None
                     and answer_of(existing.fact) != answer_of(draft.fact))
            and not (
                is_marked_shared(existing)
                and ((existing.fact is None and draft.fact is not None) or not set(draft.tags) <= set(existing.tags))
            )
        )

    def reinforce_duplicate(self, batch: WriteBatch, existing: Note, draft: Note) -> Note:
        """A near-duplicate strengthens the note it repeats (and revives it if archived); returns it as changed."""
        tags = existing.tags + [t for t in draft.tags if t not in existing.tags]
        changes: dict[str, Any] = {
            "strength": forgetting.reinforced_strength(existing.strength, self.config.strength_gain),
            "last_recalled": max(existing.last_recalled, draft.created_at),
            "tags": tags[:32],
        }
        if existing.fact is None and draft.fact is not None:
            changes["fact"] = draft.fact
        batch.set_fields(existing.id, **changes)
        if existing.archived:
            batch.revive(existing.id)
            changes["archived"] = False
        return existing.model_copy(update=changes)

    def enrichment_after(self, before: Note, text: str | None, tags: list[str] | None) -> dict[str, Any]:
        """The fields a change of text (or of tags alone) recomputes."""
        if text is None:
            return {} if tags is None else {"tags": linking.extract_tags(before.text, tuple(tags))}
        keywords = linking.extract_keywords(text, self.config.max_keywords)
        return {
            "text": text,
            "keywords": keywords,
            "tags": linking.extract_tags(text, tuple(tags if tags is not None else before.tags)),
            "context": linking.describe(text, keywords, before.created_at, before.user_id),
        }

    def replace(self, before: Note, after: Note, embedding: np.ndarray | None) -> Note:
        """Store a changed note, its previous version going to the history; `embedding` is the new
        text's (None: the text is unchanged, and so are its vectors). New text is mixed again into
        the vectors of the notes after it in its session (`remixed`), in the same transaction."""
        scope = (before.user_id, before.agent_id, before.session_id)
        remixed: dict[str, np.ndarray | None] = {}
        if embedding is None:
            embedding = self.store.own_embeddings([before.id])[before.id]
            in_context = self.store.load([before.id], links=False)[before.id][1]
        elif before.session_id is None:
            in_context = None
        else:
            previous = self.store.session_vector(scope, before=before.id) if self.config.context_weight else None
            in_context = self.with_context(embedding, previous)
            remixed = self.remixed(scope, {before.id: embedding})
        with self.store.transaction():
            self.store.replace(after, embedding, in_context, "updated", before)
            if after.text != before.text:  # its keywords are its new text's
                self.store.disown(before.id, after.keywords)
            self.store.set_searched_vectors(remixed)
        self.index.push([before.id, *remixed])
        try:
            return self.store.get(before.id)
        except StoreUnavailableError:  # committed: a store that cannot be read back now does not undo it
            return after

    def evolve(self, batch: WriteBatch, neighbour: Note, newcomer: Note) -> Note:
        """The neighbour absorbs a few of the newcomer's keywords; returns it as changed."""
        keywords = linking.evolve_keywords(neighbour.keywords, newcomer.keywords, self.config.max_keywords)
        if keywords == neighbour.keywords:
            return neighbour
        batch.record(neighbour.id, newcomer.created_at, f"evolved:{newcomer.id}", neighbour)
        batch.set_fields(neighbour.id, keywords=keywords)
        batch.absorb(neighbour.id, keywords[len(neighbour.keywords):], newcomer.id)
        return neighbour.model_copy(update={"keywords": keywords})


class SearchAhead:
    """The drafts' nearest entries in the index, searched outside the write section: a batch's a
    part at a time while the rest is still being encoded. Only the index's own search runs here
    (it releases the GIL); the entries are checked against the store in the write section, as
    any search's are: Python work here would hold up the encoder's thread at every kernel.

    The store's mark, taken before the search, tells in the write section which notes the search
    may have missed (`NoteStore.changed_since`: written or re-embedded since, or waiting for their
    index write then); those are compared with the drafts too. A store that cannot tell has the
    write section search again, as does a search that failed (the section reports its error).
    Outside the section, a remember's search no longer holds the lock of a store shared by
    several processes: two replicas remembering at once search at once.
    """

    def __init__(self, writer: WritePath, mark: Hashable) -> None:
        self.writer, self.mark = writer, mark
        self.searched: dict[int, IndexRow] = {}
        self.failed = False

    def search(self, drafts: list[Note], positions: Sequence[int], embeddings: np.ndarray) -> None:
        """Search the index for these drafts (of the batch, at these positions)."""
        if self.failed:
            return
        try:
            results = self.writer.nearest_unchecked([drafts[p] for p in positions], embeddings)
        except Exception:
            log.debug("the search ahead failed; the write section searches again", exc_info=True)
            self.failed = True
            return
        self.searched.update(zip(positions, results))

    def tokens(self) -> set[str]:
        """The index tokens the searches found, whose entries the write section reads."""
        return {token for _, row in self.searched.values() for token, _ in row}

    def results(self, size: int) -> tuple[list[IndexRow], set[str]] | None:
        """Each draft's `IndexSync.nearest` row and the notes the search may have missed, if every
        draft of the batch was searched and the store can tell which (call in the write section);
        else None."""
        if self.failed or len(self.searched) != size:
            return None
        changed = self.writer.store.changed_since(self.mark)
        return None if changed is None else ([self.searched[position] for position in range(size)], changed)


def answer_of(fact: Fact) -> list[str]:
    """What a fact answers, as two restatements' extracted facts share it: their prompts and targets may differ by
    the words a restatement may add ("Alice really lives in", "really a nurse": `linking.GRAMMAR`), and in case;
    every other word, number and sign counts ("$5" is not "€5", "A+" not "A-")."""
    return [token for token in re.findall(r"\w+|[^\w\s]", fact.target.casefold()) if token not in linking.GRAMMAR]

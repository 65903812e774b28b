"""What a PostgreSQL store's write section read ahead, per thread: with its lock's round trip, or with an
earlier read's, so the reads that follow it answer without a round trip of their own.

On a server each read of a write section is a round trip, while every replica waits on the lock. The
lock's own round trip reads whether the outbox is empty, the latest vector of a session the section
said it would ask for (`expect_session`), a recall's index entries and candidates (`expect_loads`,
`LoadedAhead`) and the notes behind a remember's index entries (`expect_neighbours`); a remember whose
section meets index tokens its lock did not read has its `index_entries` read the whole notes after its
first `neighbours` call. What was read holds until the thread writes or its lock ends (`drop`). The store
(`postgres`) holds one `ReadAhead` and makes the reads; this keeps what they found, and answers from it.
"""
from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from .loaded_ahead import LoadedAhead
from .rows import IndexEntry

Scope = tuple[str | None, str | None, str]  # a session's (user_id, agent_id, session_id)


class Expected(NamedTuple):
    """What a thread's next lock is to read besides its checks (None: nothing)."""

    session: Scope | None = None  # the session whose latest vector it reads
    loads: tuple[list[str], list[str]] | None = None  # a recall's candidates by id, and its index tokens
    neighbours: list[str] | None = None  # the index tokens of a remember's candidates


class ReadAhead:
    """This thread's rows read ahead in its write section, and the reads its next lock is to make."""

    def __init__(self) -> None:
        self._local = threading.local()

    def expect_session(self, scope: Scope) -> None:
        """`NoteStore.expect_session`: the next lock reads that session's latest vector in its round trip."""
        self._expect(session=scope)

    def expect_loads(self, note_ids: Collection[str], tokens: Collection[str]) -> None:
        """`NoteStore.expect_loads`: the next lock reads, in its round trip, the notes behind these index tokens
        (without their vectors) and these notes (with them), for `entries` and `loaded_rows` to answer from
        (`LoadedAhead`): at 100k notes, a recall read its 40 entries in 0.7 ms, then its 70 candidates in
        1.2 ms, each a round trip right after a computation (the index's search, the query's encoding), which
        took longer than one back to back (BENCHMARKS.md)."""
        self._expect(loads=(list(note_ids), list(tokens)))

    def expect_neighbours(self, tokens: Collection[str]) -> None:
        """`NoteStore.expect_neighbours`: the next lock reads the notes behind these index tokens, whole, with
        their own embeddings, as `index_entries` reads a remember's candidates; at 100k notes the section's
        own read of them took 0.7-0.8 ms, a round trip right after the lock's (BENCHMARKS.md)."""
        self._expect(neighbours=list(tokens))

    def _expect(self, **reads: Any) -> None:
        self._local.expected = getattr(self._local, "expected", Expected())._replace(**reads)

    def take_expected(self) -> Expected:
        """What this thread's next lock is to read (each asked for one lock only)."""
        expected, self._local.expected = getattr(self._local, "expected", Expected()), Expected()
        return expected

    def locked(self, outbox_empty: bool, expected: Expected, vector: bytes | None,
               loaded: Sequence[Mapping[str, Any]] | None, whole_rows: Sequence[Mapping[str, Any]] | None) -> None:
        """What the lock's round trip read: whether the outbox is empty, the expected session's latest
        `vector`, the `loaded` rows of the expected loads and the `whole_rows` of the expected neighbours."""
        self.drop(outbox_empty)
        self._local.session_ahead = None if expected.session is None else (expected.session, vector)
        if expected.loads is not None and loaded is not None:
            self._local.loaded_ahead = LoadedAhead(loaded, *expected.loads)
        if expected.neighbours is not None and whole_rows is not None:
            self._local.neighbours_ahead = LoadedAhead(whole_rows, (), expected.neighbours)  # for their entries
            if outbox_empty:  # `neighbours` answers from them too
                self._local.read_ahead = {row["id"]: row for row in whole_rows}

    def drop(self, outbox_empty: bool = False) -> None:
        """What this thread's write section read ahead for `neighbours`, `session_vector` and `loaded_rows`
        no longer holds once it writes or its lock ends; a lock's start sets whether it found the outbox empty."""
        self._local.outbox_empty = outbox_empty
        self._local.read_ahead = self._local.session_ahead = self._local.loaded_ahead = None
        self._local.neighbours_ahead = None

    def neighbours(self, note_ids: list[str]) -> list[Mapping[str, Any]] | None:
        """The rows of `NoteStore.neighbours`, when no round trip is needed: in a write section whose lock
        found the outbox empty, while this thread writes nothing, none waits in it (only a lock holder adds
        to it; a claim ending takes rows out). The write path asks for those first, then searches the index,
        then reads the notes found: the lock read them (`expect_neighbours`), or that first call has
        `index_entries` read them (`reads_whole_notes`)."""
        if getattr(self._local, "outbox_empty", False):
            if not note_ids:
                self._local.read_ahead = self._local.read_ahead or {}
                return []
            ahead = self._local.read_ahead or {}
            if all(note_id in ahead for note_id in note_ids):
                return [ahead[i] for i in dict.fromkeys(note_ids)]
        return None

    def reads_whole_notes(self) -> bool:
        """Whether `index_entries` reads the whole notes, for `neighbours` to answer from (`keep`): after
        a remember's first `neighbours` call its candidates are the notes its search found (one round
        trip fewer, for 15 notes more read) where the lock did not read them (`expect_neighbours`)."""
        return getattr(self._local, "read_ahead", None) is not None

    def keep(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Whole note rows `index_entries` read (`reads_whole_notes`)."""
        self._local.read_ahead.update((row["id"], row) for row in rows)

    def entries(self, tokens: Collection[str]) -> dict[str, IndexEntry] | None:
        """`NoteStore.index_entries` as the lock read them (`expect_loads`, `expect_neighbours`); None when it
        did not read them all."""
        for name in ("loaded_ahead", "neighbours_ahead"):
            ahead = getattr(self._local, name, None)
            entries = None if ahead is None else ahead.entries_for(tokens)
            if entries is not None:
                return entries
        return None

    def loaded_rows(
        self, note_ids: Sequence[str], vectors_of: Collection[str] | None,
    ) -> list[Mapping[str, Any]] | None:
        """The rows of a `NoteStore.load` as the lock read them (`expect_loads`); None when it did not."""
        ahead = getattr(self._local, "loaded_ahead", None)
        return None if ahead is None else ahead.rows_for(note_ids, vectors_of)

    def session_read(self, scope: Scope) -> tuple[Scope, bytes | None] | None:
        """The session and its latest vector's bytes (None: no vector) as the lock read them, once, when this
        write section expected the session (`expect_session`) and has not written since."""
        ahead = getattr(self._local, "session_ahead", None)
        if ahead is None or ahead[0] != scope:
            return None
        self._local.session_ahead = None
        return ahead

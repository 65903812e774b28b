"""What a PostgreSQL store's write section read ahead, per thread: with its lock's round trip, or with an
earlier read's, so the reads that follow it answer without a round trip of their own.

On a server each read of a write section is a round trip, while every replica waits on the lock. The
lock's own round trip reads whether the outbox is empty, the latest vector of a session the section
said it would ask for (`expect_session`) and a recall's index entries and candidates (`expect_loads`,
`LoadedAhead`); a remember's first `neighbours` call has its `index_entries` read the whole notes. What
was read holds until the thread writes or its lock ends (`drop`). The store (`postgres`) holds one
`ReadAhead` and makes the reads; this keeps what they found, and answers from it.
"""
from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from .loaded_ahead import LoadedAhead
from .rows import IndexEntry

Scope = tuple[str | None, str | None, str]  # a session's (user_id, agent_id, session_id)


class ReadAhead:
    """This thread's rows read ahead in its write section, and the reads its next lock is to make."""

    def __init__(self) -> None:
        self._local = threading.local()

    def expect_session(self, scope: Scope) -> None:
        """`NoteStore.expect_session`: the next lock reads that session's latest vector in its round trip."""
        self._local.session_expected = scope

    def expect_loads(self, note_ids: Collection[str], tokens: Collection[str]) -> None:
        """`NoteStore.expect_loads`: the next lock reads, in its round trip, the notes behind these index tokens
        (without their vectors) and these notes (with them), for `entries` and `loaded_rows` to answer from
        (`LoadedAhead`): at 100k notes, a recall read its 40 entries in 0.7 ms, then its 70 candidates in
        1.2 ms, each a round trip right after a computation (the index's search, the query's encoding), which
        took longer than one back to back (BENCHMARKS.md)."""
        self._local.loads_expected = (list(note_ids), list(tokens))

    def take_expected(self) -> tuple[Scope | None, tuple[list[str], list[str]] | None]:
        """The session and the loads this thread's next lock is to read (each asked for one lock only)."""
        session, self._local.session_expected = getattr(self._local, "session_expected", None), None
        loads, self._local.loads_expected = getattr(self._local, "loads_expected", None), None
        return session, loads

    def locked(
        self, outbox_empty: bool, session: Scope | None, vector: bytes | None,
        loads: tuple[list[str], list[str]] | None, loaded: Sequence[Mapping[str, Any]] | None,
    ) -> None:
        """What the lock's round trip read: whether the outbox is empty, the expected session's latest
        `vector`, and the `loaded` rows of the expected loads."""
        self.drop(outbox_empty)
        self._local.session_ahead = None if session is None else (session, vector)
        if loads is not None and loaded is not None:
            self._local.loaded_ahead = LoadedAhead(loaded, *loads)

    def drop(self, outbox_empty: bool = False) -> None:
        """What this thread's write section read ahead for `neighbours`, `session_vector` and `loaded_rows`
        no longer holds once it writes or its lock ends; a lock's start sets whether it found the outbox empty."""
        self._local.outbox_empty = outbox_empty
        self._local.read_ahead = self._local.session_ahead = self._local.loaded_ahead = None

    def neighbours(self, note_ids: list[str]) -> list[Mapping[str, Any]] | None:
        """The rows of `NoteStore.neighbours`, when no round trip is needed: in a write section whose lock
        found the outbox empty, while this thread writes nothing, none waits in it (only a lock holder adds
        to it; a claim ending takes rows out). The write path asks for those first, then searches the index,
        then reads the notes found: that first call has `index_entries` read them (`reads_whole_notes`)."""
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
        trip fewer, for 15 notes more read)."""
        return getattr(self._local, "read_ahead", None) is not None

    def keep(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Whole note rows `index_entries` read (`reads_whole_notes`)."""
        self._local.read_ahead.update((row["id"], row) for row in rows)

    def entries(self, tokens: Collection[str]) -> dict[str, IndexEntry] | None:
        """`NoteStore.index_entries` as the lock read them (`expect_loads`); None when it did not."""
        ahead = getattr(self._local, "loaded_ahead", None)
        return None if ahead is None else ahead.entries_for(tokens)

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

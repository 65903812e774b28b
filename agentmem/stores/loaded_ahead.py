"""Notes a recall reads with its write lock, for the index entries and the load that follow.

A recall searches the index, reads the entries behind the tokens it found (which note, whose),
then loads its candidates: those notes, without their vectors (the index gave their similarity),
and the full-text ones the index did not find, with theirs. On a server those were two round
trips in the write section. A recall that searched the index before it (`ReadPath.dense_ahead`)
names both, and a store that reads by round trips reads them in its lock's own
(`NoteStore.expect_loads`), then answers from here until its thread writes or its lock ends.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from .rows import IndexEntry


class LoadedAhead:
    """Note rows read ahead, and what the entries and loads asked for may take from them."""

    def __init__(self, rows: Sequence[Mapping[str, Any]], expected: Collection[str], tokens: Collection[str]) -> None:
        """`rows`: note rows (with `index_id`, and `vector`, None where it was not read), in the store's
        order; `expected`: ids whose rows were asked for with their vectors, and `tokens`: index tokens
        whose notes' rows were asked for, whether or not found."""
        self._rows = {row["id"]: row for row in rows}
        self._expected, self._tokens = set(expected), set(tokens)

    def entries_for(self, tokens: Collection[str]) -> dict[str, IndexEntry] | None:
        """`NoteStore.index_entries` of these tokens, or None when some were not asked for."""
        wanted = set(tokens)
        if not wanted <= self._tokens:
            return None
        return {row["index_id"]: IndexEntry.of(row) for row in self._rows.values() if row["index_id"] in wanted}

    def rows_for(self, note_ids: Sequence[str], vectors_of: Collection[str] | None) -> list[Mapping[str, Any]] | None:
        """The rows a `load` of these ids reads (`vectors_of` as there: the ids whose vectors it wants, None
        for all), in the store's order, with no vector where none was asked for; None when a row it needs
        was not read, or was read without its vector (then it reads them itself)."""
        wanted = set(note_ids)
        with_vector = wanted if vectors_of is None else wanted & set(vectors_of)
        for note_id in wanted:
            row = self._rows.get(note_id)
            if row is None and note_id not in self._expected:
                return None  # not asked for by id: unknown whether it exists
            if row is not None and note_id in with_vector and row["vector"] is None:
                return None
        return [
            row if row["vector"] is None or note_id in with_vector else {**row, "vector": None}
            for note_id, row in self._rows.items() if note_id in wanted
        ]

"""Upkeep of a PostgreSQL note store after its writes: the rows a forget freed vacuumed, the planner's
statistics taken again without the forgotten note, and refreshed as the store grows.

After a forget, VACUUM lets Postgres reuse the dead rows' space, but does not zero it on disk, and
the WAL keeps old row images until its segments are recycled (SQLite with secure_delete zeroes
pages); the planner's statistics (`pg_stats`) keep sampled values until the next ANALYZE. None of
it is the write's own work: a failure here is logged, and the write stands. The store (`postgres`)
holds one `Upkeep`, which runs its statements with the store's own.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from ..errors import AgentMemError, StoreCorruptedError, StoreUnavailableError
from .coalesced import CoalescedWork

log = logging.getLogger(__name__)

STATISTICS_LOCK_WAIT_MS = 100  # how long dropping an emptied table's statistics may wait for its lock
ANALYZE_AT_LEAST = 500  # notes a store gains before its first statistics are refreshed
# what a forget VACUUMs: every table a note's text, words, fact or id was in (the ledger, the editor's
# archive in shared_folders and the outbox too: autovacuum left their dead rows for want of 50 of them)
FORGET_VACUUMS = (
    "notes", "links", "history", "recalls", "absorbed", "lexicon", "postings", "link_changes", "outbox", "quarantine",
    "consolidation_ledger", "shared_folders",
)


class Upkeep:
    """What a PostgreSQL store runs after a forget (`purge_freed`) and after a commit (`analyze_if_grown`)."""

    def __init__(
        self, run: Callable[..., list[Any]], write: Callable[..., None],
        transaction: Callable[..., AbstractContextManager[None]],
    ) -> None:
        """`run`, `write` and `transaction`: the store's (`SqlNoteStore`'s, in `?` placeholders)."""
        self._run, self._write, self._transaction = run, write, transaction
        self._statistics = CoalescedWork(self._analyze_forgotten, "analyze")
        self._analyzed_notes = max(0.0, run("SELECT reltuples FROM pg_class WHERE oid = 'notes'::regclass")[0][0])

    def analyze_if_grown(self, note_count: int) -> None:
        """Refresh the planner's statistics of `notes` and `postings` once the notes have doubled
        since they were taken.

        Autovacuum does it too, but visits a database once a minute: a store filled faster kept
        the estimates of a smaller one (the GIN full-text search, since replaced by the postings,
        then also scanned the scope index: 10k notes, 3.2 ms, 1.3 ms after ANALYZE), and a search
        of postings never analyzed scanned all of them (100k notes: about 300 ms)."""
        if note_count >= 2 * self._analyzed_notes + ANALYZE_AT_LEAST:
            try:  # after a commit: its failure is not the write's
                self._run("ANALYZE notes, postings")
            except AgentMemError as exc:
                log.warning("the planner's statistics of the notes were not refreshed: %s", exc)
                return
            self._analyzed_notes = note_count

    def purge_freed(self) -> None:
        """After a forget: VACUUM the tables that held the note (`FORGET_VACUUMS`, those present), so
        its dead rows are reclaimed (what Postgres still keeps is in the module doc), and have them
        ANALYZEd in the background (`_analyze_forgotten`). A table that the background's ANALYZE (or
        autovacuum) holds is skipped, not waited for in the write section: the background run VACUUMs
        it too. One that fails now is left to autovacuum, and logged: the forget, already committed, stands."""
        try:
            self._vacuum("VACUUM (SKIP_LOCKED)")
        except StoreUnavailableError as exc:  # e.g. the session ended after the forget's commit
            log.warning("the tables a forget emptied were not vacuumed now; autovacuum does it later: %s", exc)
        self._statistics.ask()

    def _analyze_forgotten(self) -> None:
        """The planner's statistics (`pg_stats`, readable by any role that reads the table) sample
        column values, and kept a forgotten note's text, words and id until the next ANALYZE, which
        may come only when the store has doubled; taken again from the live rows, they hold none of
        it, and every plan stays as it was. 0.75 s at 120k notes, so it runs after the forget's write
        section, once for a burst of forgets (`CoalescedWork`); `close` waits for it."""
        self._vacuum("VACUUM (ANALYZE)")
        self._drop_statistics_of_emptied_tables()

    def _drop_statistics_of_emptied_tables(self) -> None:
        """ANALYZE leaves a table that it finds empty with the statistics it had, which a forget emptied of its
        last rows (the outbox, a store's only history entries) would keep. Altering a column to its own type
        drops its statistics; that takes no rewrite, on an empty table. Columns that a generated column reads
        (the notes' text, keywords and tags, for the full-text vector) cannot be altered, and keep theirs until
        the table holds rows again."""
        columns = self._run(
            "SELECT s.tablename, s.attname, format_type(a.atttypid, a.atttypmod) FROM pg_stats s"
            " JOIN pg_attribute a ON a.attrelid = to_regclass(s.tablename) AND a.attname = s.attname"
            " WHERE s.schemaname = current_schema() AND s.tablename = ANY(?)"
            " AND NOT EXISTS (SELECT 1 FROM pg_depend d JOIN pg_attribute g ON g.attrelid = d.objid"
            "   AND g.attnum = d.objsubid AND g.attgenerated <> '' WHERE d.refobjid = a.attrelid AND d.refobjsubid = a.attnum)",
            (list(FORGET_VACUUMS),),
        )
        for table in dict.fromkeys(table for table, _, _ in columns):
            if self._run(f"SELECT EXISTS (SELECT 1 FROM {table})")[0][0]:
                continue
            alters = ", ".join(f'ALTER COLUMN "{column}" TYPE {kind}' for name, column, kind in columns if name == table)
            try:
                with self._transaction(bookkeeping=True):  # the lock waits for no replica's write: a later forget
                    self._write(f"SET LOCAL lock_timeout = '{STATISTICS_LOCK_WAIT_MS}ms'")  # tries again
                    self._write(f"ALTER TABLE {table} {alters}")
            except (StoreUnavailableError, StoreCorruptedError) as exc:
                log.warning("the statistics of %s were not dropped: %s", table, exc)

    def _vacuum(self, command: str) -> None:
        present = self._run("SELECT t FROM unnest(?::text[]) AS t WHERE to_regclass(t) IS NOT NULL", (list(FORGET_VACUUMS),))
        for (table,) in present:
            try:
                self._run(f"{command} {table}")
            except (StoreUnavailableError, StoreCorruptedError) as exc:  # e.g. lock_timeout: another session holds it
                log.warning("%s %s failed; autovacuum does it later: %s", command, table, exc)

    def close(self) -> None:
        """Wait for the statistics asked for so far (`_analyze_forgotten`)."""
        self._statistics.close()

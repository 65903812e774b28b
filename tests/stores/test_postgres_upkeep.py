"""A PostgreSQL store's upkeep after forgets and growth, against a real PostgreSQL 15: dead rows vacuumed, the
planner's statistics taken again without a forgotten note, and refreshed as the store grows."""
from __future__ import annotations

import threading
import time

import numpy as np
import psycopg
import psycopg.sql

from agentmem.consolidation.ledger import Ledger
from agentmem.errors import StoreUnavailableError
from agentmem.notes import Fact
from agentmem.stores.postgres import PostgresNoteGraph

from .test_postgres import T, note, store  # noqa: F401 (a fixture)


def test_a_store_that_doubled_refreshes_the_planner_s_statistics(store, postgres_url):
    """A store filled faster than autovacuum visits would plan searches on a smaller store's estimates."""
    def planned_notes() -> float:
        with psycopg.connect(postgres_url) as conn:
            return conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'notes'::regclass").fetchone()[0]

    with psycopg.connect(postgres_url, autocommit=True) as conn:  # only the store's own ANALYZE counts here
        conn.execute("ALTER TABLE notes SET (autovacuum_enabled = false)")
    with store.transaction():
        for i in range(300):
            store.insert(note(f"n{i}", f"note number {i}"), np.ones(4))
    assert planned_notes() <= 0  # 300 is below the first refresh
    with store.transaction():
        for i in range(300, 600):
            store.insert(note(f"n{i}", f"note number {i}"), np.ones(4))
    assert planned_notes() == 600


def test_a_commit_stands_when_the_statistics_refresh_after_it_fails(postgres_url, monkeypatch):
    """The refresh runs after the commit: its failure is logged, the write returns, a later commit retries."""
    run, failing = PostgresNoteGraph._run, threading.Event()

    def analyze_fails(self, sql, params=()):
        if failing.is_set() and sql.startswith("ANALYZE"):
            raise StoreUnavailableError("the server went away")
        return run(self, sql, params)

    monkeypatch.setattr(PostgresNoteGraph, "_run", analyze_fails)  # before the store gives its `_run` to its upkeep
    store = PostgresNoteGraph(postgres_url)
    try:
        with psycopg.connect(postgres_url, autocommit=True) as conn:  # only the store's own ANALYZE counts here
            conn.execute("ALTER TABLE notes SET (autovacuum_enabled = false)")
        failing.set()
        with store.transaction():
            for i in range(600):
                store.insert(note(f"n{i}", f"note number {i}"), np.ones(4))
        failing.clear()
        assert len(store.all_ids()) == 600
        with store.transaction():
            store.insert(note("n600", "note number 600"), np.ones(4))
        with psycopg.connect(postgres_url) as conn:
            assert conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'notes'::regclass").fetchone()[0] == 601
    finally:
        store.close()


def test_a_vacuum_failing_after_a_forget_is_logged_and_the_forget_stands(postgres_url, caplog):
    """`purge_freed` runs in the forget's write section after its commit: a table whose lock another
    session holds is skipped there, and the background's VACUUM (ANALYZE) that cannot take it in time
    (lock_timeout) leaves the dead rows to autovacuum; neither raises."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("ALTER DATABASE {} SET lock_timeout = '100ms'").format(
            psycopg.sql.Identifier(conn.info.dbname)))
    store = PostgresNoteGraph(postgres_url)
    holder = psycopg.connect(postgres_url)
    try:
        with store.transaction():
            store.insert(note("a"), np.ones(4))
        holder.execute("LOCK TABLE recalls IN SHARE UPDATE EXCLUSIVE MODE")  # VACUUM's own lock, held elsewhere
        with store.lock():
            with store.transaction():
                store.delete("a")
            store.purge_freed()
        assert store.all_ids() == set()
        store.close()  # waits for the background run
        assert "VACUUM (ANALYZE) recalls failed" in caplog.text
    finally:
        holder.close()
        store.close()


def test_a_forget_vacuums_every_table_that_held_the_note(store, postgres_url):
    """Review s11 F4: the consolidation ledger, the editor's archive (shared_folders) and the outbox
    hold a note's fact, id or both, and were left to autovacuum (50 dead rows and 20% first)."""
    Ledger(store.connection)  # the ledger's table, as a Memory makes it
    with store.transaction():
        store.insert(note("a"), np.ones(4))
    with store.lock():
        with store.transaction():
            store.delete("a")
        store.purge_freed()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        vacuumed = {r[0] for r in conn.execute("SELECT relname FROM pg_stat_user_tables WHERE last_vacuum IS NOT NULL")}
    assert {"notes", "outbox", "quarantine", "consolidation_ledger", "shared_folders"} <= vacuumed


def test_after_a_forget_the_planner_s_statistics_hold_nothing_of_the_note(store, postgres_url):
    """Review s11 F3: ANALYZE samples column values into `pg_stats` (the most common values, histogram
    bounds, and every word of a tsvector): the forgotten note's text, words and id stayed readable there
    until the next ANALYZE, which agentmem runs only when the store has doubled."""
    secret = note("s3cr3t", "Zanzibar-7731 is my PIN for the garden shed lockbox quokkavault",
                  keywords=["zanzibar", "quokkavault"], tags=["quokkavault"], context="about quokkavault",
                  fact=Fact(prompt="Ulrike's PIN is", target="Zanzibar-7731"))
    with store.transaction():
        store.insert(secret, np.ones(4))
        store.insert_many([(note(f"n{i}", f"filler note {i} about topic {i % 7}"), np.ones(4), None) for i in range(50)])
        for version in range(3):  # its only history: the forget leaves the table empty
            store.record("s3cr3t", T, "updated", secret.model_copy(update={"context": f"quokkavault {version}"}))
        store.absorb_many([(f"n{i}", "quokkavault", "s3cr3t") for i in range(3)])
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("ANALYZE")  # as agentmem's own, a migration's or autovacuum's may have run

        def in_statistics() -> list[str]:
            rows = conn.execute(
                "SELECT tablename || '.' || attname, concat(most_common_vals::text, histogram_bounds::text,"
                " most_common_elems::text) FROM pg_stats WHERE schemaname = current_schema()"
            ).fetchall()
            return sorted(column for column, values in rows if "quokkavault" in values.lower() or "s3cr3t" in values)

        assert {"notes.search", "history.before", "absorbed.origin"} <= set(in_statistics())  # the case to undo
        with store.lock():
            with store.transaction():
                store.delete("s3cr3t")
            with store.transaction(bookkeeping=True):
                store.clear_pending(["s3cr3t"])  # the index write done, as a forget makes it before purging
            store.purge_freed()
        deadline = time.monotonic() + 60  # the statistics are taken again in the background, after the section
        while in_statistics() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert in_statistics() == []


def test_a_forget_does_not_wait_in_its_write_section_for_an_analyze_in_progress(store, postgres_url):
    """VACUUM and ANALYZE take a lock that conflicts with itself: the next forget's VACUUM waited, holding
    every replica's writes, for the background ANALYZE of the forget before (0.75 s at 120k notes)."""
    with store.transaction():
        store.insert_many([(note(f"n{i}", f"filler note {i}"), np.ones(4), None) for i in range(5)])
    with psycopg.connect(postgres_url) as holder:
        holder.execute("ANALYZE notes")  # in an open transaction: its lock stays until the commit
        purged = threading.Event()

        def forget() -> None:
            with store.lock():
                with store.transaction():
                    store.delete("n0")
                store.purge_freed()
            purged.set()

        worker = threading.Thread(target=forget)
        worker.start()
        assert purged.wait(30)  # while the ANALYZE still holds its lock
        holder.commit()
    worker.join()
    assert "n0" not in store.all_ids()

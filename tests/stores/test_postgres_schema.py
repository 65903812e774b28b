"""The PostgreSQL store's schema against a real PostgreSQL 15: made once, whoever opens the database first."""
from __future__ import annotations

import threading

from agentmem.consolidation.ledger import Ledger
from agentmem.stores.postgres import PostgresNoteGraph


def test_replicas_opening_a_new_database_at_once_do_not_race_on_its_schema(postgres_url):
    opened, errors = [], []
    start = threading.Barrier(4)

    def replica() -> None:
        try:
            start.wait()
            store = PostgresNoteGraph(postgres_url)
            Ledger(store.connection)
            opened.append(store)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in opened:
        store.close()
    assert errors == [] and len(opened) == 4

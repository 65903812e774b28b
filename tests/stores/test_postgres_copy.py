"""Copying a PostgreSQL store's tables against a real PostgreSQL 15: a backup is a SQLite store."""
from __future__ import annotations

import numpy as np

from agentmem.consolidation.ledger import Ledger
from agentmem.notes import Fact
from agentmem.stores import NoteGraph
from agentmem.stores.filters import NoteFilter

from .test_postgres import T, note, store  # noqa: F401 (a fixture)


def test_a_backup_is_a_sqlite_store_with_the_same_contents(store, tmp_path):
    with store.transaction():
        store.insert(note("a", metadata={"k": "v"}), np.ones(4))
        store.insert(note("b"), np.ones(4), in_context=np.zeros(4))
        store.link("a", "b", 0.5, T)
        store.record("a", T, "updated", store.get("a"))
    Ledger(store.connection).add("a", "e1", Fact(prompt="p", target="t"), "grace", "applied", T)
    store.backup(tmp_path / "backup.sqlite3")
    copy = NoteGraph(tmp_path / "backup.sqlite3")
    assert copy.get_many(["a", "b"]) == store.get_many(["a", "b"])
    assert copy.load(["b"])["b"][1].tolist() == [0, 0, 0, 0]
    assert copy.history("a") == store.history("a")
    assert copy.index_key == store.index_key and copy.all_tokens() == store.all_tokens()
    assert [e.edit_id for e in Ledger(copy.connection).entries()] == ["e1"]
    assert copy.lexical_search(["note"], 5, NoteFilter()) != []
    copy.close()

"""PostgreSQL's full-text search and its lexicon, against a real PostgreSQL 15 server."""
from __future__ import annotations

import numpy as np
import psycopg
import pytest

from agentmem.errors import InvalidInputError
from agentmem.stores.filters import NoteFilter
from agentmem.stores.full_text import COUNT_LEXEMES
from agentmem.stores.postgres import PostgresNoteGraph

from .test_postgres import note, store  # noqa: F401 (a fixture)


def test_lexical_search_stems_ranks_and_filters(store):
    with store.transaction():
        store.insert(note("a", "Alice is running a marathon in Lisbon", user_id="u1"), np.ones(4))
        store.insert(note("b", "Bob runs", user_id="u1"), np.ones(4))
        store.insert(note("c", "Carol paints", user_id="u1", keywords=["running"]), np.ones(4))
        store.insert(note("d", "Alice ran in Lisbon", user_id="u2"), np.ones(4))
        store.insert(note("e", "marathon Lisbon archived", user_id="u1", archived=True), np.ones(4))
    hits = store.lexical_search(["runs", "lisbon", "marathon"], 10, NoteFilter(user_id="u1"))
    assert [i for i, _ in hits][0] == "a" and {i for i, _ in hits} == {"a", "b", "c"}
    assert all(score > 0 for _, score in hits)
    assert dict(hits)["b"] > dict(hits)["c"]  # a note's own words count more than its keywords
    assert store.lexical_search(["the", "a"], 10, NoteFilter()) == []
    assert store.lexical_search(["o'brien", "100%", "a|b"], 10, NoteFilter()) == []
    assert [i for i, _ in store.lexical_search(["lisbon"], 1, NoteFilter())] == ["d"]  # the shorter note


def lexicon_and_recount(url: str) -> tuple[dict[str, int], dict[str, int]]:
    """The lexicon the triggers keep, and the same counts computed from scratch over the notes."""
    with psycopg.connect(url) as conn:
        kept = dict(conn.execute("SELECT lexeme, docs FROM lexicon").fetchall())
        recount = dict(conn.execute("SELECT word, ndoc FROM ts_stat('SELECT search FROM notes')").fetchall())
        recount[""] = conn.execute("SELECT count(*) FROM notes").fetchone()[0]
    return kept, recount


def test_the_lexicon_stays_exact_through_insert_update_delete_and_a_refused_write(store, postgres_url):
    with store.transaction():
        store.insert(note("a", "Lisbon trams climb steep hills"), np.ones(4))
        store.insert(note("b", "Porto trams and bridges", keywords=["porto"]), np.ones(4))
        store.insert(note("c", "steep stairs in Lisbon"), np.ones(4))
    kept, recount = lexicon_and_recount(postgres_url)
    assert kept == recount and kept["lisbon"] == 2 and kept[""] == 3
    with store.transaction():
        store.replace(note("a", "Madrid buses"), np.ones(4), None, "updated", store.get("a"))
        store.set_fields("b", keywords=["porto", "lisbon"])  # an evolved neighbour's keywords
        store.set_fields("c", recall_count=4)  # no word changes
    kept, recount = lexicon_and_recount(postgres_url)
    assert kept == recount and "madrid" in kept and kept["lisbon"] == 2 and "climb" not in kept
    with pytest.raises(InvalidInputError):
        with store.transaction():  # all of it is queued: the server refuses it in the one round trip at the commit
            store.insert(note("d", "Lisbon again"), np.ones(4))
            store.set_fields("b", keywords=["porto"])
            store.insert(note("a", "a clash"), np.ones(4))
    assert lexicon_and_recount(postgres_url) == (kept, recount) and store.all_ids() == {"a", "b", "c"}
    with store.transaction():
        store.delete("c")
    store.purge_freed()
    kept, recount = lexicon_and_recount(postgres_url)
    assert kept == recount and "stairs" not in kept and kept["lisbon"] == 1 and kept[""] == 2


def test_a_store_whose_full_text_index_kept_a_pending_list_is_converted_when_opened(store, postgres_url):
    """Earlier stores built the GIN index with a pending list, which every search scanned whole:
    opening one turns the list off and merges what it held, and the search still finds those notes."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("ALTER INDEX notes_search SET (fastupdate = on)")
        with store.transaction():
            store.insert(note("a", "Lisbon trams climb steep hills"), np.ones(4))
            store.insert(note("b", "Porto bridges"), np.ones(4))
        PostgresNoteGraph(postgres_url).close()
        options = conn.execute("SELECT reloptions FROM pg_class WHERE relname = 'notes_search'").fetchone()[0]
        assert options == ["fastupdate=off"]
        assert conn.execute("SELECT gin_clean_pending_list('notes_search'::regclass)").fetchone()[0] == 0
    assert [i for i, _ in store.lexical_search(["trams"], 5, NoteFilter())] == ["a"]


def test_a_store_counting_lexemes_with_an_earlier_trigger_gets_the_current_one(store, postgres_url):
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE OR REPLACE FUNCTION agentmem_count_lexemes() RETURNS trigger LANGUAGE plpgsql"
                     " AS $$BEGIN RETURN NULL; END$$")  # counts nothing
        PostgresNoteGraph(postgres_url).close()
        body = conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'agentmem_count_lexemes'").fetchone()[0]
    assert body == COUNT_LEXEMES
    with store.transaction():
        store.insert(note("a", "Lisbon trams"), np.ones(4))
    kept, recount = lexicon_and_recount(postgres_url)
    assert kept == recount and kept["lisbon"] == 1

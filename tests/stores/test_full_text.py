"""PostgreSQL's full-text search, its lexicon and its postings, against a real PostgreSQL 15 server."""
from __future__ import annotations

import numpy as np
import psycopg
import pytest

from agentmem.errors import InvalidInputError
from agentmem.notes import MAX_SCOPE_CHARS
from agentmem.stores.filters import NoteFilter
from agentmem.stores.full_text import INDEX_WORDS, posted
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


def test_lexical_search_filters_by_agent_session_and_metadata(store):
    notes = [("a", "g1", "s1", 1), ("b", "g2", "s1", 2), ("c", "g1", "s2", True)]
    with store.transaction():
        for note_id, agent, session, value in notes:
            store.insert(note(note_id, f"Lisbon {note_id}", user_id="u", agent_id=agent, session_id=session,
                              metadata={"k": value}), np.ones(4))
    found = lambda **where: {i for i, _ in store.lexical_search(["lisbon"], 10, NoteFilter(**where))}  # noqa: E731
    assert found(agent_id="g1") == {"a", "c"} and found(session_id="s1") == {"a", "b"}
    assert found(metadata={"k": 1}) == {"a"} and found(metadata={"k": True}) == {"c"}
    assert found(agent_id="g1", metadata={"k": 2}) == set()


def test_lexical_search_scores_each_match_as_the_sum_over_its_lexemes_of_idf_times_ts_rank(store, postgres_url):
    """The postings hold each lexeme's rank precomputed: the scores must be those of ts_rank over the notes."""
    texts = ["Alice runs a marathon in Lisbon", "Bob runs every morning", "Lisbon trams climb steep hills in Lisbon",
             "Carol paints the Lisbon hills", "running shoes for a marathon"]
    with store.transaction():
        for number, text in enumerate(texts):
            store.insert(note(f"n{number}", text, keywords=["lisbon"] if number == 4 else []), np.ones(4))
        store.set_fields("n1", keywords=["marathon", "training"])  # the note grows: every rank of it changes
    direct = (
        "WITH terms AS (SELECT l.lexeme, ln(1 + (t.docs - l.docs + 0.5) / (l.docs + 0.5)) AS idf"
        " FROM lexicon l JOIN lexicon t ON t.lexeme = ''"
        " WHERE l.lexeme = ANY(tsvector_to_array(to_tsvector('english', %s))))"
        " SELECT n.id, sum(t.idf * ts_rank('{0, 0, 0.5, 1.0}', n.search, quote_literal(t.lexeme)::tsquery, 1))"
        " FROM terms t JOIN notes n ON n.search @@ quote_literal(t.lexeme)::tsquery GROUP BY n.id"
    )
    with psycopg.connect(postgres_url) as conn:
        for words in (["lisbon", "marathon"], ["runs", "hills"], ["marathon", "training", "lisbon"]):
            expected = dict(conn.execute(direct, (" ".join(words),)).fetchall())
            found = dict(store.lexical_search(words, 10, NoteFilter()))
            assert found.keys() == expected.keys() and len(found) >= 2
            assert all(abs(found[i] - expected[i]) < 1e-6 for i in found)


def lexicon_and_recount(url: str) -> tuple[dict[str, int], dict[str, int]]:
    """The lexicon the triggers keep, and the same counts computed from scratch over the notes."""
    with psycopg.connect(url) as conn:
        kept = dict(conn.execute("SELECT lexeme, docs FROM lexicon").fetchall())
        recount = dict(conn.execute("SELECT word, ndoc FROM ts_stat('SELECT search FROM notes')").fetchall())
        recount[""] = conn.execute("SELECT count(*) FROM notes").fetchone()[0]
    return kept, recount


def postings_and_recount(url: str) -> tuple[set[tuple], set[tuple]]:
    """The postings the triggers keep, and the same rows computed from scratch over the notes."""
    with psycopg.connect(url) as conn:
        kept = set(conn.execute("SELECT * FROM postings").fetchall())
        recount = set(conn.execute(f"SELECT p.* FROM notes n, LATERAL ({posted('n')}) AS p").fetchall())
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
    posted_rows, reposted = postings_and_recount(postgres_url)
    lexemes = {r[0] for r in posted_rows}
    assert posted_rows == reposted and "madrid" in lexemes and "climb" not in lexemes
    with store.transaction():
        store.set_fields("c", archived=True)  # a search leaves archived notes out by their postings
    posted_rows, reposted = postings_and_recount(postgres_url)
    assert posted_rows == reposted and {r[5] for r in posted_rows if r[0] == "stair"} == {1}  # (lexeme, ..., archived)
    with pytest.raises(InvalidInputError):
        with store.transaction():  # all of it is queued: the server refuses it in the one round trip at the commit
            store.insert(note("d", "Lisbon again"), np.ones(4))
            store.set_fields("b", keywords=["porto"])
            store.insert(note("a", "a clash"), np.ones(4))
    assert lexicon_and_recount(postgres_url) == (kept, recount) and store.all_ids() == {"a", "b", "c"}
    assert postings_and_recount(postgres_url) == (posted_rows, reposted)
    with store.transaction():
        store.delete("c")
    store.purge_freed()
    kept, recount = lexicon_and_recount(postgres_url)
    assert kept == recount and "stairs" not in kept and kept["lisbon"] == 1 and kept[""] == 2
    posted_rows, reposted = postings_and_recount(postgres_url)
    assert posted_rows == reposted and "stair" not in {r[0] for r in posted_rows} and len(posted_rows) > 0


def test_a_store_made_before_the_postings_gets_them_and_the_current_trigger_when_opened(store, postgres_url):
    """An earlier release searched the notes' rows through a GIN index, and its trigger kept the lexicon
    alone: opening such a store computes the postings of the notes it holds, and later writes keep them."""
    with store.transaction():
        store.insert(note("a", "Lisbon trams climb steep hills"), np.ones(4))
        store.insert(note("b", "Porto bridges"), np.ones(4))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TABLE postings; DROP TRIGGER notes_words_write ON notes;"
                     " DROP TRIGGER notes_words_update ON notes; DROP FUNCTION agentmem_index_words();"
                     " CREATE FUNCTION agentmem_count_lexemes() RETURNS trigger LANGUAGE plpgsql"
                     "  AS $$BEGIN RETURN NULL; END$$;"
                     " CREATE TRIGGER notes_lexicon_write AFTER INSERT OR DELETE ON notes"
                     "  FOR EACH ROW EXECUTE FUNCTION agentmem_count_lexemes();"
                     " CREATE INDEX notes_search ON notes USING GIN (search);"
                     " COMMENT ON TABLE notes IS 'agentmem schema 0'")
        PostgresNoteGraph(postgres_url).close()
        left = conn.execute("SELECT to_regclass('notes_search'), to_regprocedure('agentmem_count_lexemes()'),"
                            " (SELECT prosrc FROM pg_proc WHERE proname = 'agentmem_index_words')").fetchone()
    assert left == (None, None, INDEX_WORDS)
    opened = PostgresNoteGraph(postgres_url)
    try:
        assert [i for i, _ in opened.lexical_search(["trams"], 5, NoteFilter())] == ["a"]
        with opened.transaction():
            opened.insert(note("c", "Lisbon again"), np.ones(4))
        assert {i for i, _ in opened.lexical_search(["lisbon"], 5, NoteFilter())} == {"a", "c"}
    finally:
        opened.close()
    kept, recount = postings_and_recount(postgres_url)
    assert kept == recount and len(kept) > 0
    assert lexicon_and_recount(postgres_url)[0] == lexicon_and_recount(postgres_url)[1]


def test_a_store_whose_words_trigger_another_release_replaced_gets_the_current_one_and_its_tables_again(
        store, postgres_url):
    """What a replaced trigger function wrote, or left out, is computed again from the notes when the store opens."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE OR REPLACE FUNCTION agentmem_index_words() RETURNS trigger LANGUAGE plpgsql"
                     " AS $$BEGIN RETURN NULL; END$$")  # writes nothing
        with store.transaction():
            store.insert(note("a", "Lisbon trams"), np.ones(4))
        assert conn.execute("SELECT count(*) FROM postings").fetchone()[0] == 0
        PostgresNoteGraph(postgres_url).close()
        body = conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'agentmem_index_words'").fetchone()[0]
    assert body == INDEX_WORDS
    assert [i for i, _ in store.lexical_search(["trams"], 5, NoteFilter())] == ["a"]
    with store.transaction():
        store.insert(note("b", "Lisbon bridges"), np.ones(4))
    kept, recount = lexicon_and_recount(postgres_url)
    assert kept == recount and kept["lisbon"] == 2
    posted_rows, reposted = postings_and_recount(postgres_url)
    assert posted_rows == reposted and sum(1 for r in posted_rows if r[0] == "lisbon") == 2


def test_a_note_with_a_word_too_long_for_the_postings_index_and_the_longest_scope_is_stored(store):
    """An index entry holds at most 2,704 bytes: a lexeme over `LONGEST_POSTED` bytes is left out of
    the postings (a user id alone may take 1,024), and the note's other words are still found."""
    scope = {name: "ü" * MAX_SCOPE_CHARS for name in ("user_id", "agent_id", "session_id")}
    word = "x" * 1900
    with store.transaction():
        store.insert(note("a", f"Lisbon {word}", **scope), np.ones(4))
    assert [i for i, _ in store.lexical_search(["lisbon"], 5, NoteFilter(**scope))] == ["a"]
    assert store.lexical_search([word], 5, NoteFilter()) == []

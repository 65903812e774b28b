"""PostgreSQL's full-text search over the notes, scored in BM25's shape.

Each note has a generated tsvector, `notes.search` (english stemming; its text weighted A, its
keywords and tags B), with a GIN index (both in the notes' schema). In place of FTS5's BM25, a
score of the same shape: per query lexeme, its IDF over the store times `ts_rank` (column-weighted
term frequency, divided by 1 + log of the note's length), summed over the lexemes a note holds.
Only the ordering and the ratio to the best match are used.

The IDF's counts (notes per lexeme, and notes) live in `lexicon`, kept exact by a trigger in the
writing transaction, so a search reads them by key instead of counting matches.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

# What the lexical score's IDF needs, kept exact by triggers in the notes' own transactions: per
# lexeme the number of notes holding it, and the number of notes (its row with the empty lexeme,
# which no tsvector holds). A lexeme whose last note goes is deleted with it (forget leaves no word).
LEXICON = """
CREATE TABLE lexicon (lexeme TEXT PRIMARY KEY, docs BIGINT NOT NULL);
CREATE TRIGGER notes_lexicon_write AFTER INSERT OR DELETE ON notes
    FOR EACH ROW EXECUTE FUNCTION agentmem_count_lexemes();
CREATE TRIGGER notes_lexicon_update AFTER UPDATE ON notes
    FOR EACH ROW WHEN (OLD.search IS DISTINCT FROM NEW.search) EXECUTE FUNCTION agentmem_count_lexemes();
"""
# The trigger counts only the lexemes a write adds or removes: an update, mostly a neighbour's
# evolved keywords, changes one or two, and rewriting all of its note's counts (60 rows for two
# neighbours) made remember's commit slower and left `lexicon` full of dead rows for searches to
# step over. The empty lexeme (the note count) changes with inserts and deletes only. The
# difference is taken with `ts_delete`, an expression, and only the statements it needs run: an
# insert runs one, an update one or none (three each before: at 1k notes 0.70 against 0.57 ms an
# insert, 1.8 against 1.3 ms the three updates of a remember's evolved neighbours).
COUNT_LEXEMES = """
DECLARE
    gone TEXT[] := '{}';
    came TEXT[] := '{}';
BEGIN
    IF TG_OP = 'INSERT' THEN
        came := tsvector_to_array(NEW.search) || '{""}'::text[];
    ELSIF TG_OP = 'DELETE' THEN
        gone := tsvector_to_array(OLD.search) || '{""}'::text[];
    ELSE
        gone := tsvector_to_array(ts_delete(OLD.search, tsvector_to_array(NEW.search)));
        came := tsvector_to_array(ts_delete(NEW.search, tsvector_to_array(OLD.search)));
    END IF;
    IF cardinality(gone) > 0 THEN
        UPDATE lexicon SET docs = docs - 1 WHERE lexeme = ANY(gone);
        DELETE FROM lexicon WHERE docs <= 0 AND lexeme = ANY(gone);
    END IF;
    IF cardinality(came) > 0 THEN
        INSERT INTO lexicon(lexeme, docs) SELECT unnest(came), 1
            ON CONFLICT (lexeme) DO UPDATE SET docs = lexicon.docs + 1;
    END IF;
    RETURN NULL;
END
"""
# `lexicon` counted from the notes at once: when it is created, and after a bulk load
LEXICON_COUNT = """
INSERT INTO lexicon(lexeme, docs) SELECT word, ndoc FROM ts_stat('SELECT search FROM notes');
INSERT INTO lexicon(lexeme, docs) SELECT '', count(*) FROM notes;
"""

# The full-text index takes each note's lexemes at once (no GIN pending list): a recall scans the
# pending list whole, and a store filled by remember or a migration kept up to 4 MB of it, which
# made the search 5-10 ms at 10k notes instead of under 1 ms; an insert costs the same (0.41-0.45 ms).
PENDING_LIST_ON = """
SELECT NOT COALESCE('fastupdate=off' = ANY(reloptions), false) FROM pg_class WHERE oid = 'notes_search'::regclass
"""

# ts_rank weights for {D, C, B, A}: the note's own words (A) count most, keywords and tags (B) half as much
RANK_WEIGHTS = "{0, 0, 0.5, 1.0}"
RANK_NORMALIZATION = 1  # divide by 1 + log(document length), as BM25 discounts long documents

# The n best matches among the notes `where` admits (`?` placeholders: the query's words, the
# ranking's weights and normalization, the condition's parameters, n).
#
# One statement, so one round trip: a recall runs it while another thread encodes the query,
# and each reply waits for that thread to yield the GIL (two statements took 3.8 ms p50 there
# at 10k notes, against 0.9 ms alone). The lexemes with their IDFs are a materialized CTE, and
# each one's notes come from the GIN index; a sum over lexemes written per note ran the
# lexicon lookup once per matching note instead (at 90k notes, 4k matches: 29 against 20 ms).
SEARCH = (
    "WITH terms AS MATERIALIZED ("
    " SELECT quote_literal(l.lexeme)::tsquery AS query,"
    "  ln(1 + (total.docs - l.docs + 0.5) / (l.docs + 0.5)) AS idf"
    " FROM lexicon l JOIN lexicon total ON total.lexeme = ''"
    " WHERE l.lexeme <> '' AND l.lexeme = ANY(tsvector_to_array(to_tsvector('english', ?))))"
    " SELECT n.id, sum(t.idf * ts_rank(?, n.search, t.query, ?)) AS score"
    " FROM terms t JOIN notes n ON n.search @@ t.query"
    " WHERE {where} GROUP BY n.id, n.seq ORDER BY score DESC, n.seq LIMIT ?"
)


def ranking(terms: list[str]) -> tuple[str, str, int]:
    """`SEARCH`'s first parameters: the query's words, and how matches are ranked."""
    return " ".join(terms), RANK_WEIGHTS, RANK_NORMALIZATION


def prepare(conn: psycopg.Connection) -> None:
    """Create the lexicon and its trigger, or bring those an earlier version made up to date
    (in the open transaction that creates the notes' schema)."""
    counter = conn.execute("SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure('agentmem_count_lexemes()')")
    if counter.fetchone() != (COUNT_LEXEMES,):  # new, or counted by an earlier version
        conn.execute("CREATE OR REPLACE FUNCTION agentmem_count_lexemes() RETURNS trigger LANGUAGE plpgsql"
                     f" AS $${COUNT_LEXEMES}$$")
    if conn.execute("SELECT to_regclass('lexicon')").fetchone()[0] is None:  # new, or made by 0.2
        conn.execute(LEXICON + LEXICON_COUNT)
    if conn.execute(PENDING_LIST_ON).fetchone()[0]:  # made by an earlier version
        conn.execute("ALTER INDEX notes_search SET (fastupdate = off)")
        conn.execute("SELECT gin_clean_pending_list('notes_search'::regclass)")


@contextmanager
def counted_once(conn: psycopg.Connection) -> Iterator[None]:
    """A bulk load of notes in the open transaction, its lexemes counted once at the end: the
    trigger counting each note's lexemes is off meanwhile (ALTER TABLE locks `notes` until the
    commit). Row by row, with the trigger, 100k notes had not loaded after 23 minutes."""
    conn.execute("ALTER TABLE notes DISABLE TRIGGER notes_lexicon_write")
    yield
    conn.execute("DELETE FROM lexicon")
    conn.execute(LEXICON_COUNT)
    conn.execute("ALTER TABLE notes ENABLE TRIGGER notes_lexicon_write")

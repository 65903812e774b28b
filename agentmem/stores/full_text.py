"""PostgreSQL's full-text search over the notes, scored in BM25's shape.

Each note has a generated tsvector, `notes.search` (english stemming; its text weighted A, its
keywords and tags B; in the notes' schema). In place of FTS5's BM25, a score of the same shape: per
query lexeme, its IDF over the store times `ts_rank` (column-weighted term frequency, divided by
1 + log of the note's length), summed over the lexemes a note holds. Only the ordering and the
ratio to the best match are used.

Triggers in the writing transaction keep two tables exact: `lexicon`, the IDF's counts (notes per
lexeme, and notes), and `postings`, each note's lexemes with that lexeme's `ts_rank` in the note.
A search then reads the query's lexemes by key in both, and only its best notes from `notes`.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

# ts_rank weights for {D, C, B, A}: the note's own words (A) count most, keywords and tags (B) half as much
RANK_WEIGHTS = "{0, 0, 0.5, 1.0}"
RANK_NORMALIZATION = 1  # divide by 1 + log(document length), as BM25 discounts long documents

# What the lexical score's IDF needs: per lexeme the number of notes holding it, and the number of
# notes (its row with the empty lexeme, which no tsvector holds). A lexeme whose last note goes is
# deleted with it (forget leaves no word).
LEXICON = "CREATE TABLE lexicon (lexeme TEXT PRIMARY KEY, docs BIGINT NOT NULL);"

# Per note and lexeme, the lexeme's ts_rank in the note, with what a search filters by (the note's
# scope and whether it is archived). The user, the archived flag and the rank are in the key's index
# too, so a search of one user's notes reads no table rows. Read from the notes at 100k, the median
# LoCoMo question's 3.5k matches lay on 3.4k heap pages, and the statement took 6.2-7.0 ms p50
# (17-19 p90, 150 questions); from the postings 2.2 ms (5.2-5.4), with the same ids and scores
# (BENCHMARKS.md, latency-stores, 2026-11-28 16:19 UTC). An index entry holds at most 2,704 bytes,
# and a user id up to 1,024 (256 characters): a lexeme longer than `LONGEST_POSTED` bytes (a run of
# 300+ characters with no break, which no query repeats) is left out, and found by its note's vector.
LONGEST_POSTED = 1000
POSTINGS = """
CREATE TABLE postings (
    lexeme TEXT NOT NULL, seq BIGINT NOT NULL,
    user_id TEXT, agent_id TEXT, session_id TEXT, archived INTEGER NOT NULL, rank REAL NOT NULL,
    PRIMARY KEY (lexeme, seq) INCLUDE (user_id, archived, rank)
);
"""
POSTINGS_COLUMNS = "postings (lexeme, seq, user_id, agent_id, session_id, archived, rank)"


def posted(note: str) -> str:
    """The rows of `postings` for the note `note` names: a lexeme's rank is ts_rank of it alone."""
    return (
        f"SELECT w, {note}.seq, {note}.user_id, {note}.agent_id, {note}.session_id, {note}.archived,"
        f" ts_rank('{RANK_WEIGHTS}', {note}.search, quote_literal(w)::tsquery, {RANK_NORMALIZATION})"
        f" FROM unnest(tsvector_to_array({note}.search)) AS w WHERE octet_length(w) <= {LONGEST_POSTED}"
    )


# The lexicon counts only the lexemes a write adds or removes: an update, mostly a neighbour's
# evolved keywords, changes one or two, and rewriting all of its note's counts (60 rows for two
# neighbours) made remember's commit slower and left `lexicon` full of dead rows for searches to
# step over. The empty lexeme (the note count) changes with inserts and deletes only. The
# difference is taken with `ts_delete`, an expression, and only the statements it needs run: an
# insert runs one, an update one or none (three each before: at 1k notes 0.70 against 0.57 ms an
# insert, 1.8 against 1.3 ms the three updates of a remember's evolved neighbours). A note's
# postings are written again whole: a change of its words changes its length, and with it the
# rank of each of its lexemes.
INDEX_WORDS = f"""
DECLARE
    gone TEXT[] := '{{}}';
    came TEXT[] := '{{}}';
BEGIN
    IF TG_OP <> 'INSERT' THEN
        DELETE FROM postings WHERE lexeme = ANY(tsvector_to_array(OLD.search)) AND seq = OLD.seq;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        INSERT INTO {POSTINGS_COLUMNS} {posted("NEW")};
    END IF;
    IF TG_OP = 'INSERT' THEN
        came := tsvector_to_array(NEW.search) || '{{""}}'::text[];
    ELSIF TG_OP = 'DELETE' THEN
        gone := tsvector_to_array(OLD.search) || '{{""}}'::text[];
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
# an update writes the postings again only when what they hold changes (not for a recall's counts)
TRIGGERS = """
DROP TRIGGER IF EXISTS notes_words_write ON notes;
DROP TRIGGER IF EXISTS notes_words_update ON notes;
CREATE TRIGGER notes_words_write AFTER INSERT OR DELETE ON notes
    FOR EACH ROW EXECUTE FUNCTION agentmem_index_words();
CREATE TRIGGER notes_words_update AFTER UPDATE ON notes FOR EACH ROW
    WHEN ((OLD.search, OLD.user_id, OLD.agent_id, OLD.session_id, OLD.archived)
          IS DISTINCT FROM (NEW.search, NEW.user_id, NEW.agent_id, NEW.session_id, NEW.archived))
    EXECUTE FUNCTION agentmem_index_words();
"""
# what earlier releases made for the full text: the lexicon's own trigger, and a GIN index over
# `notes.search` that searches read the notes' rows through. Dropping a trigger or an index locks
# `notes` against reads until the commit: an upgrade holds every replica's reads for its length
# (about 11 s at 100k notes, once)
EARLIER_FULL_TEXT = """
DROP TRIGGER IF EXISTS notes_lexicon_write ON notes;
DROP TRIGGER IF EXISTS notes_lexicon_update ON notes;
DROP FUNCTION IF EXISTS agentmem_count_lexemes();
DROP INDEX IF EXISTS notes_search;
"""

# both tables computed from the notes at once: when they are created, and after a bulk load
LEXICON_COUNT = """
INSERT INTO lexicon(lexeme, docs) SELECT word, ndoc FROM ts_stat('SELECT search FROM notes');
INSERT INTO lexicon(lexeme, docs) SELECT '', count(*) FROM notes;
"""
POSTINGS_FILL = f"INSERT INTO {POSTINGS_COLUMNS} SELECT p.* FROM notes n, LATERAL ({posted('n')}) AS p;"

# The n best matches among the notes `where` admits (`?` placeholders: the query's words, the
# condition's parameters, n). `{where}` names the postings `p`; a condition on metadata, which
# postings do not hold, reads it from the matching notes, `m` (`{join}`).
#
# One statement, so one round trip: a recall runs it while another thread encodes the query,
# and each reply waits for that thread to yield the GIL (two statements took 3.8 ms p50 there
# at 10k notes, against 0.9 ms alone). The lexemes with their IDFs are a materialized CTE.
SEARCH = (
    "WITH terms AS MATERIALIZED ("
    " SELECT l.lexeme, ln(1 + (total.docs - l.docs + 0.5) / (l.docs + 0.5)) AS idf"
    " FROM lexicon l JOIN lexicon total ON total.lexeme = ''"
    " WHERE l.lexeme <> '' AND l.lexeme = ANY(tsvector_to_array(to_tsvector('english', ?)))),"
    " best AS (SELECT p.seq, sum(t.idf * p.rank) AS score FROM terms t JOIN postings p ON p.lexeme = t.lexeme"
    " {join} WHERE {where} GROUP BY p.seq ORDER BY score DESC, p.seq LIMIT ?)"
    " SELECT n.id, best.score FROM best JOIN notes n ON n.seq = best.seq ORDER BY best.score DESC, best.seq"
)
METADATA_JOIN = "JOIN notes m ON m.seq = p.seq"


def prepare(conn: psycopg.Connection) -> None:
    """Create the lexicon, the postings and their trigger, or bring those an earlier version made
    up to date (in the open transaction that creates the notes' schema). Where the trigger function
    was missing or another, both tables are computed again from the notes: what it wrote, or left
    out, is not this release's."""
    words = conn.execute("SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure('agentmem_index_words()')")
    recount = words.fetchone() != (INDEX_WORDS,)
    if recount:
        conn.execute("CREATE OR REPLACE FUNCTION agentmem_index_words() RETURNS trigger LANGUAGE plpgsql"
                     f" AS $${INDEX_WORDS}$$")
    conn.execute(TRIGGERS)
    for table, schema in (("lexicon", LEXICON), ("postings", POSTINGS)):
        if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:  # new, or made before it
            conn.execute(schema)
            recount = True
    if recount:
        computed_again(conn)
    conn.execute(EARLIER_FULL_TEXT)


def computed_again(conn: psycopg.Connection) -> None:
    """Both tables computed from the notes at once (in the open transaction)."""
    conn.execute("DELETE FROM lexicon")
    conn.execute("DELETE FROM postings")
    conn.execute(LEXICON_COUNT + POSTINGS_FILL)
    conn.execute("ANALYZE postings")  # without statistics, a search of 100k notes' postings scanned them all


@contextmanager
def indexed_once(conn: psycopg.Connection) -> Iterator[None]:
    """A bulk load of notes in the open transaction, their lexicon and postings computed once at
    the end: the trigger that writes them for each note is off meanwhile (ALTER TABLE locks `notes`
    until the commit). Row by row, with the trigger, 100k notes had not loaded after 23 minutes."""
    conn.execute("ALTER TABLE notes DISABLE TRIGGER notes_words_write")
    yield
    computed_again(conn)
    conn.execute("ALTER TABLE notes ENABLE TRIGGER notes_words_write")

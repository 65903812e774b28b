"""The PostgreSQL note store's tables: the statements that make them, the mark of the release that
made them, and the preparation that runs those statements once per release, under a lock, with
the rights a role needs.

Apart from the store (`postgres`) because the schema is read without one: a backup or a migration
copies `TABLES`, and a server keeps its consolidation jobs in `JOBS_SCHEMA`'s table (`server.job_log`).
"""
from __future__ import annotations

import functools
import hashlib
import os
from typing import TYPE_CHECKING

import psycopg
import psycopg.sql

from ..errors import InvalidInputError, StoreUnavailableError
from . import full_text, link_changes, shared_folders
from .ledger_connection import to_postgres
from .postgres_connection import redacted
from .postgres_locks import SCHEMA_LOCK
from .rows import NOTE_COLUMNS

if TYPE_CHECKING:  # for annotations only
    from .sql import SqlNoteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS notes (
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    keywords TEXT NOT NULL,
    tags TEXT NOT NULL,
    context TEXT NOT NULL,
    user_id TEXT, agent_id TEXT, session_id TEXT,
    created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
    last_recalled DOUBLE PRECISION NOT NULL,
    recall_count INTEGER NOT NULL, strength DOUBLE PRECISION NOT NULL, archived INTEGER NOT NULL,
    metadata JSONB NOT NULL, fact TEXT,  -- jsonb keeps a number's value, not its form (see rows.stored_int)
    embedding BYTEA NOT NULL,
    context_embedding BYTEA,
    index_id TEXT,
    search TSVECTOR GENERATED ALWAYS AS (
        setweight(to_tsvector('english', text), 'A')
        || setweight(to_tsvector('english', keywords), 'B')
        || setweight(to_tsvector('english', tags), 'B')
    ) STORED
) WITH (fillfactor = 85);  -- room on each page, so a recall's counters update in place (HOT), not in every index
CREATE INDEX IF NOT EXISTS notes_session_order ON notes(user_id, agent_id, session_id, (-seq));
DROP INDEX IF EXISTS notes_scope;  -- before 2026-11-29: the scope alone (`LATEST_FIRST`)
CREATE INDEX IF NOT EXISTS notes_index_id ON notes(index_id);
CREATE TABLE IF NOT EXISTS links (
    a TEXT NOT NULL, b TEXT NOT NULL, weight DOUBLE PRECISION NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (a, b)
);
CREATE INDEX IF NOT EXISTS links_b ON links(b);
CREATE TABLE IF NOT EXISTS history (
    seq BIGINT GENERATED ALWAYS AS IDENTITY, note_id TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,
    change TEXT NOT NULL, before TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_note ON history(note_id);
CREATE TABLE IF NOT EXISTS recalls (note_id TEXT NOT NULL, at DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS recalls_note ON recalls(note_id);
CREATE TABLE IF NOT EXISTS outbox (note_id TEXT PRIMARY KEY, op TEXT NOT NULL CHECK (op IN ('upsert', 'delete')));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS absorbed (
    note_id TEXT NOT NULL, keyword TEXT NOT NULL, origin TEXT NOT NULL, PRIMARY KEY (note_id, keyword)
);
CREATE INDEX IF NOT EXISTS absorbed_origin ON absorbed(origin);
CREATE TABLE IF NOT EXISTS quarantine (
    seq BIGINT GENERATED ALWAYS AS IDENTITY, id TEXT, reason TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,
    row TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS store_version (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), n BIGINT NOT NULL);
INSERT INTO store_version(one, n) VALUES (TRUE, 0) ON CONFLICT DO NOTHING;
"""

# The records of the consolidation jobs the store's servers accepted (`server.job_log`), in SQLite's dialect: a
# folder store's servers keep the same table in a file of their own, a PostgreSQL store's in its database.
JOBS_SCHEMA = """
CREATE TABLE IF NOT EXISTS consolidation_jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    job TEXT NOT NULL,
    request TEXT NOT NULL,
    interrupted INTEGER NOT NULL DEFAULT 0
)
"""
TABLES: dict[str, tuple[str, ...]] = {
    "notes": NOTE_COLUMNS,
    "links": ("a", "b", "weight", "created_at"),
    "history": ("note_id", "at", "change", "before"),
    "recalls": ("note_id", "at"),
    "outbox": ("note_id", "op"),
    "meta": ("key", "value"),
    "absorbed": ("note_id", "keyword", "origin"),
    "quarantine": ("id", "reason", "at", "row"),
}
# every table the store makes (the notes' tables, the version log, the full text's lexicon and postings, shared
# folders, the ledger, the records of its servers' consolidation jobs)
STORE_TABLES = (
    *TABLES, "store_version", "link_changes", "lexicon", "postings", "shared_folders", "consolidation_ledger",
    "consolidation_jobs",
)
LEDGER_COLUMNS = (
    "id", "note_id", "edit_id", "prompt", "prompt_key", "target", "editor", "status", "created_at", "updated_at",
    "verification", "detail", "scope",
)


def select_list(columns: tuple[str, ...], table: str = "") -> str:
    """Columns (of `table`, as "n.") as `rows` and a SQLite-layout copy read them (jsonb metadata as its text)."""
    return ", ".join(f"{table}metadata::text AS metadata" if c == "metadata" else table + c for c in columns)


def prepare_schema(conn: psycopg.Connection, url: str, store: SqlNoteStore) -> None:
    """Create the store's tables in a new database, or bring those of an earlier release up to date;
    a store made by this release is only read (`schema_state`), so a role with no more than
    SELECT, INSERT, UPDATE and DELETE on its tables opens it. A database whose tables of the
    store's names are not a store's is refused, and left as it was. `store`: the store whose
    session `conn` is, which gives a new store its index key in the same transaction."""
    if schema_state(conn, url) == "current":
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        state = schema_state(conn, url)  # again, now that no other replica is making it
        if state == "current":
            return
        missing = [table for (table,) in conn.execute(
            "SELECT t FROM unnest(%s::text[]) t"
            " WHERE to_regclass(format('%%I.%%I', current_schema(), t)) IS NULL", (list(STORE_TABLES),))]
        try:
            conn.execute(SCHEMA)
            conn.execute(link_changes.SCHEMA)
            full_text.prepare(conn)
            conn.execute(shared_folders.SCHEMA)
            conn.execute(ledger_schema())
            conn.execute(to_postgres(JOBS_SCHEMA, placeholders=False))
            grant_as_on_notes(conn, missing)
            conn.execute(f"COMMENT ON TABLE notes IS '{schema_mark()}'")  # needs the tables' owner
        except psycopg.errors.InsufficientPrivilege as exc:
            if state == "new":
                needed = ("make a new store", "it needs CREATE on the schema (GRANT CREATE ON SCHEMA ... TO the"
                          " role), or have the store made once by a role that has it")
            else:
                needed = ("bring this store, made by an earlier release, up to date", "open it once as the"
                          " role that owns its tables; then a role with SELECT, INSERT, UPDATE and DELETE on"
                          " them opens it")
            raise StoreUnavailableError(
                f"the role may not {needed[0]} at {redacted(url)} ({exc.diag.message_primary}): {needed[1]}"
            ) from exc
        if store.get_meta("index_key") is None:
            store.set_meta("index_key", os.urandom(32).hex())
            store.set_meta("schema_version", "2")


def ledger_schema() -> str:
    """The consolidation ledger's tables in Postgres's dialect: made with the store's, so that a role
    without CREATE opens the store (`Ledger` then finds them there; `LedgerConnection.executescript`)."""
    from ..consolidation.ledger import SCHEMA as LEDGER_SCHEMA  # the ledger's own module owns its schema

    return to_postgres(LEDGER_SCHEMA, placeholders=False)


@functools.lru_cache(maxsize=1)
def schema_mark() -> str:
    """What names the release that made the store's tables or last brought them up to date: the comment
    on `notes` (in the catalog, which any role reads; a migration's copy of `meta` does not touch it),
    a digest of every statement that makes them, so a release that changes one runs them again."""
    parts = (SCHEMA, link_changes.SCHEMA, full_text.INDEX_WORDS, full_text.TRIGGERS, full_text.LEXICON,
             full_text.POSTINGS, full_text.LEXICON_COUNT, full_text.POSTINGS_FILL, full_text.EARLIER_FULL_TEXT,
             shared_folders.SCHEMA, ledger_schema(), JOBS_SCHEMA)
    return "agentmem schema " + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def grant_as_on_notes(conn: psycopg.Connection, tables: list[str]) -> None:
    """Give the roles that may use `notes` the same rights on `tables`, made by bringing an earlier release's store
    up to date: a role granted SELECT, INSERT, UPDATE and DELETE on the store's tables before could not use them."""
    grants = conn.execute(
        "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END, a.privilege_type,"
        " a.is_grantable FROM pg_class c, aclexplode(c.relacl) a"
        " WHERE c.oid = to_regclass(format('%I.notes', current_schema())) AND a.grantee <> c.relowner"
    ).fetchall()
    for table in tables:
        for grantee, privilege, grantable in grants:  # a role's name as regrole writes it, quoted where it must be
            conn.execute(psycopg.sql.SQL("GRANT {} ON {} TO {}{}").format(
                psycopg.sql.SQL(privilege), psycopg.sql.Identifier(table), psycopg.sql.SQL(grantee),
                psycopg.sql.SQL(" WITH GRANT OPTION" if grantable else "")))


def schema_state(conn: psycopg.Connection, url: str) -> str:
    """"new" (none of the store's tables in the schema), "current" (a store whose tables this release
    made or brought up to date, and whose full-text trigger function is this release's) or
    "older" (a store that needs its schema statements run). Tables of the store's names that are
    no store's (no `meta` of agentmem's holding its index key) are refused, and nothing is changed."""
    found = dict(conn.execute(
        "SELECT c.relname::text, array_agg(a.attname::text) FROM pg_class c"
        " LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
        " WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())"
        " AND c.relname = ANY(%s) GROUP BY c.relname",
        (list(STORE_TABLES),),
    ).fetchall())
    if not found:
        return "new"
    ours = ({"key", "value"} <= set(found.get("meta") or ())
            and {"id", "text", "embedding"} <= set(found.get("notes") or ()))
    if ours:
        key, made_by, words = conn.execute(
            "SELECT (SELECT value FROM meta WHERE key = 'index_key'), obj_description('notes'::regclass, 'pg_class'),"
            " (SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure('agentmem_index_words()'))"
        ).fetchone()
        if key is not None:  # what `full_text.prepare` would change, an earlier release may have made since
            current = (made_by == schema_mark() and set(STORE_TABLES) <= set(found)
                       and words == full_text.INDEX_WORDS)
            return "current" if current else "older"
    raise InvalidInputError(
        f"the database at {redacted(url)} holds other tables named {', '.join(sorted(found))}, not an agentmem"
        " store's (nothing was changed): use another database, or a schema of the store's own (CREATE SCHEMA"
        " agentmem, then add ?options=-csearch_path%3Dagentmem to the URL)"
    )


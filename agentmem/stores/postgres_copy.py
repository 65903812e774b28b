"""Copying a PostgreSQL note store's tables whole: out into a SQLite file in the SQLite store's layout (a
backup), and rows in with COPY (a migration's or an import's load).

Apart from the store (`postgres`) because a copy works on a connection and the tables' layout
(`postgres_schema.TABLES`), not on the store's notes, and a migration from a SQLite store
(`migrate`) copies the same tables in the same order.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from . import full_text
from .graph import NoteGraph
from .postgres_schema import LEDGER_COLUMNS, TABLES, select_list

if TYPE_CHECKING:
    from .postgres import PostgresNoteGraph

SEQUENCED = ("notes", "history", "quarantine")  # tables whose insertion order matters (SQLite's rowid)


def copy_to_sqlite(
    tables: dict[str, tuple[str, ...]], session: Callable[[], AbstractContextManager[psycopg.Connection]],
    target: Path,
) -> None:
    """`tables` (`copied_tables`), read from one snapshot of `session`'s database, into a new SQLite store
    at `target`, which `Memory.restore_backup` opens like any SQLite backup."""
    copy = NoteGraph(target)
    try:
        copied_tables(copy)
        with session() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            with copy.transaction():
                for table, columns in tables.items():
                    copy.connection.execute(f"DELETE FROM {table}")
                    rows = conn.execute(f"SELECT {select_list(columns)} FROM {table} ORDER BY {order_of(table, columns)}")
                    copy.connection.executemany(
                        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                        map(tuple, rows),
                    )
    finally:
        copy.close()


def bulk_copy(
    conn: psycopg.Connection, tables: dict[str, tuple[Sequence[str], Iterable[Sequence[Any]]]],
) -> dict[str, int]:
    """Append rows to tables (name: (columns, rows)) with COPY, in `conn`'s open transaction, the full text's
    lexicon and postings computed once (`full_text.indexed_once`); returns the rows copied per table.
    Identity values given in the rows are kept, and their sequences moved past them so later inserts
    do not collide."""
    counts: dict[str, int] = {}
    with full_text.indexed_once(conn):
        for table, (columns, rows) in tables.items():
            counts[table] = 0
            copying = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
            with conn.cursor() as cursor, cursor.copy(copying) as copy:
                for row in rows:
                    copy.write_row(row)
                    counts[table] += 1
    for table in tables:  # the planner's statistics of the new rows (a plan of a GIN full-text
        conn.execute(f"ANALYZE {table}")  # search without them, since replaced, was 4x slower)
    identities = conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND is_identity = 'YES' AND table_name = ANY(%s)",
        (list(tables),),
    ).fetchall()
    for table, column in identities:
        if column in tables[table][0]:
            conn.execute(
                f"SELECT setval(pg_get_serial_sequence(%s, %s), COALESCE(MAX({column}), 0) + 1, false)"
                f" FROM {table}", (table, column),
            )
    return counts


def copied_tables(store: PostgresNoteGraph | NoteGraph) -> dict[str, tuple[str, ...]]:
    """The tables a backup or a migration copies, with their columns (the first orders the copy).
    The consolidation ledger is created in both stores so that it is always there to copy."""
    from ..consolidation.ledger import Ledger  # the ledger's own module owns its schema

    Ledger(store.connection)
    return {**TABLES, "consolidation_ledger": LEDGER_COLUMNS}


def order_of(table: str, columns: tuple[str, ...]) -> str:
    """The order a Postgres table is copied in: insertion order where it matters, else all columns."""
    return "seq" if table in SEQUENCED else ", ".join(columns)

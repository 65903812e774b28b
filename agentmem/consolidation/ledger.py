"""The consolidation ledger: which note became which edit, kept in the note store's own SQLite file.

It is also the job's write-ahead log. An edit is first written here as `pending`, then
made, verified and saved with the editor's state, and only then marked `applied`; a
retraction is marked `retracting` before the edit is rolled back and the state saved.
Whatever point a job dies at, comparing the rows with the saved editor's edits tells what
happened (`Consolidator.reconcile`), so a rerun neither loses nor duplicates an edit.

Each row records the scope its edit went into (None: shared; see `policy.edit_scopes`).

The ledger shares the note graph's connection and locks: the caller holds them.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import datetime

from ..facts import prompt_key
from ..notes import Fact, LedgerEntry, LedgerStatus, Verification
from ..stores.rows import from_timestamp, to_timestamp

SCHEMA = """
CREATE TABLE IF NOT EXISTS consolidation_ledger (
    id INTEGER PRIMARY KEY,
    note_id TEXT NOT NULL,
    edit_id TEXT UNIQUE,
    prompt TEXT NOT NULL,
    prompt_key TEXT NOT NULL,
    target TEXT NOT NULL,
    editor TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'applied', 'failed', 'known', 'retracting', 'retracted')),
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    verification TEXT,
    detail TEXT NOT NULL DEFAULT '',
    scope TEXT
);
CREATE INDEX IF NOT EXISTS consolidation_ledger_note ON consolidation_ledger(note_id);
CREATE INDEX IF NOT EXISTS consolidation_ledger_prompt ON consolidation_ledger(prompt_key, status);
"""

LIVE = ("pending", "applied", "retracting")  # rows whose edit may be in the editor's state
COLUMNS = "note_id, edit_id, prompt, target, editor, status, created_at, updated_at, verification, detail, scope"


class Ledger:
    """Rows of the ledger, read and written through the note graph's SQLite connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        db.executescript(SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(consolidation_ledger)")}
        if "scope" not in columns:  # a ledger written before scopes: its edits were all shared
            db.execute("ALTER TABLE consolidation_ledger ADD COLUMN scope TEXT")

    def entries(self, note_id: str | None = None, statuses: Iterable[LedgerStatus] | None = None) -> list[LedgerEntry]:
        """Rows, oldest first, optionally of one note and some statuses."""
        sql, params = f"SELECT {COLUMNS} FROM consolidation_ledger WHERE 1", []
        if note_id is not None:
            sql, params = sql + " AND note_id = ?", [note_id]
        if statuses is not None:
            statuses = list(statuses)
            sql += f" AND status IN ({', '.join('?' * len(statuses))})"
            params += statuses
        return [_entry(row) for row in self._db.execute(sql + " ORDER BY id", params)]

    def holds(self, note_id: str, fact: Fact | None) -> bool:
        """Whether the weights hold (or are about to hold) an edit of this note or of this fact's prompt."""
        key = prompt_key(fact.prompt) if fact else None
        row = self._db.execute(
            "SELECT 1 FROM consolidation_ledger WHERE status IN ('pending', 'applied') AND (note_id = ? OR prompt_key = ?)",
            (note_id, key),
        ).fetchone()
        return row is not None

    def add(self, note_id: str, edit_id: str | None, fact: Fact, editor: str, status: LedgerStatus, at: datetime,
            verification: Verification | None = None, detail: str = "", scope: str | None = None) -> None:
        self._db.execute(
            "INSERT INTO consolidation_ledger(note_id, edit_id, prompt, prompt_key, target, editor, status,"
            " created_at, updated_at, verification, detail, scope) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (note_id, edit_id, fact.prompt, prompt_key(fact.prompt), fact.target, editor, status,
             to_timestamp(at), to_timestamp(at), verification.model_dump_json() if verification else None, detail, scope),
        )

    def scopes(self) -> dict[str, str | None]:
        """The scope each edit went into, by edit id."""
        rows = self._db.execute("SELECT edit_id, scope FROM consolidation_ledger WHERE edit_id IS NOT NULL")
        return {row[0]: row[1] for row in rows}

    def set_status(self, edit_id: str, status: LedgerStatus, at: datetime, *, expect: Iterable[LedgerStatus] | None = None,
                   verification: Verification | None = None, detail: str | None = None) -> bool:
        """Move an edit's row to `status` (only from one of `expect`, if given); False if no row moved."""
        sql = "UPDATE consolidation_ledger SET status = ?, updated_at = ?"
        params: list[object] = [status, to_timestamp(at)]
        if verification is not None:
            sql, params = sql + ", verification = ?", [*params, verification.model_dump_json()]
        if detail is not None:
            sql, params = sql + ", detail = ?", [*params, detail]
        sql, params = sql + " WHERE edit_id = ?", [*params, edit_id]
        if expect is not None:
            expect = list(expect)
            sql, params = sql + f" AND status IN ({', '.join('?' * len(expect))})", [*params, *expect]
        return self._db.execute(sql, params).rowcount > 0

    def retract_note(self, note_id: str, at: datetime) -> None:
        """A forgotten note: its live edits are to be retracted, its other rows go with it."""
        self._db.execute(
            "UPDATE consolidation_ledger SET status = 'retracting', updated_at = ? WHERE note_id = ? AND status IN"
            " ('pending', 'applied')",
            (to_timestamp(at), note_id),
        )
        self._db.execute("DELETE FROM consolidation_ledger WHERE note_id = ? AND status NOT IN ('retracting')", (note_id,))

    def retract_shared(self, note_id: str, at: datetime) -> bool:
        """A note no longer marked shared: its live edits that fire for everyone are to be retracted (the next job
        edits its fact again in its owner's scope). Returns whether it had any."""
        changed = self._db.execute(
            "UPDATE consolidation_ledger SET status = 'retracting', updated_at = ?, detail = 'its note is no longer"
            " shared' WHERE note_id = ? AND status IN ('pending', 'applied') AND scope IS NULL",
            (to_timestamp(at), note_id),
        )
        return changed.rowcount > 0

    def delete(self, edit_id: str) -> None:
        self._db.execute("DELETE FROM consolidation_ledger WHERE edit_id = ?", (edit_id,))


def _entry(row: sqlite3.Row) -> LedgerEntry:
    return LedgerEntry(
        note_id=row["note_id"], edit_id=row["edit_id"], prompt=row["prompt"], target=row["target"], editor=row["editor"],
        status=row["status"], created_at=from_timestamp(row["created_at"]), updated_at=from_timestamp(row["updated_at"]),
        verification=Verification.model_validate_json(row["verification"]) if row["verification"] else None,
        detail=row["detail"], scope=row["scope"],
    )

"""Which notes a read may see: one object that says it for SQL, for the vector index and in Python.

A scope (user, agent, session), archived notes in or out, and metadata equality. The three
forms agree: a note the SQL admits, `admits` admits, and the index conditions keep it as a
candidate (the index knows scope and archived only; metadata is checked on the loaded note).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..notes import Note
from .rows import StoredNote

SCOPES = ("user_id", "agent_id", "session_id")
Scalar = str | int | float | bool


def _same(stored: Any, wanted: Scalar) -> bool:
    """Equality as JSON sees it: True is not 1, 1 is 1.0."""
    return stored == wanted and isinstance(stored, bool) == isinstance(wanted, bool)


def _json_types(value: Scalar) -> tuple[str, ...]:
    if isinstance(value, bool):
        return ("true",) if value else ("false",)
    if isinstance(value, (int, float)):
        return ("integer", "real")
    return ("text",)


class NoteFilter(BaseModel):
    model_config = ConfigDict(frozen=True)

    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None
    include_archived: bool = False
    metadata: dict[str, Scalar] = {}

    def scope(self) -> dict[str, str]:
        """The scope fields that are set: a `None` field does not narrow."""
        return {name: getattr(self, name) for name in SCOPES if getattr(self, name) is not None}

    def admits(self, note: Note | StoredNote) -> bool:
        return (
            all(getattr(note, name) == value for name, value in self.scope().items())
            and (self.include_archived or not note.archived)
            and all(key in note.metadata and _same(note.metadata[key], v) for key, v in self.metadata.items())
        )

    def sql(self, table: str = "notes", dialect: str = "sqlite") -> tuple[str, list[Any]]:
        """A WHERE clause over the notes table in `?` placeholders, and its parameters. Metadata is
        matched among SQLite's `json_each` members by key (a JSON path names no key holding `"`,
        and compares a key as written, escapes and all), or for "postgres" as jsonb values, whose
        equality agrees with `_same` (true is not 1, 1 is 1.0)."""
        where, params = ["1 = 1"], []
        for name, value in self.scope().items():
            where.append(f"{table}.{name} = ?")
            params.append(value)
        if not self.include_archived:
            where.append(f"{table}.archived = 0")
        for key, value in self.metadata.items():
            if dialect == "postgres":
                where.append(f"{table}.metadata -> ? = ?::jsonb")
                params += [key, json.dumps(value)]
                continue
            types = _json_types(value)
            typed = ", ".join("?" * len(types))
            member = f"SELECT 1 FROM json_each({table}.metadata) WHERE key = ? AND type IN ({typed})"
            where.append(f"EXISTS ({member}{'' if isinstance(value, bool) else ' AND atom = ?'})")
            params += [key, *types] + ([] if isinstance(value, bool) else [value])
        return " AND ".join(where), params

    def index_conditions(self, token: Callable[[str, str], str]) -> dict[str, Any]:
        """Equality conditions on the vector index's metadata, scope values turned into its tokens."""
        conditions: dict[str, Any] = {name: token(name, value) for name, value in self.scope().items()}
        if not self.include_archived:
            conditions["archived"] = False
        return conditions

"""The public data models: what goes in, what comes back.

Everything that crosses the `Memory` boundary is a pydantic model, so agent code
gets validation, JSON round-trips (export/import) and editor hints for free.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Fact(BaseModel):
    """A structured fact a note states: `prompt` completed by `target` (used by consolidation)."""

    model_config = ConfigDict(frozen=True)

    prompt: str = Field(min_length=1)
    target: str = Field(min_length=1)
    rephrases: tuple[str, ...] = ()


class Link(BaseModel):
    """An undirected, weighted edge of the note graph, seen from one of its ends."""

    note_id: str
    weight: float


class Note(BaseModel):
    """One memory: the text plus what makes it findable, linkable and forgettable."""

    id: str
    text: str
    keywords: list[str] = []
    tags: list[str] = []
    context: str = ""
    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None
    created_at: datetime
    updated_at: datetime
    last_recalled: datetime
    recall_count: int = 0
    strength: float = 1.0
    archived: bool = False
    metadata: dict[str, Any] = {}
    fact: Fact | None = None
    links: list[Link] = []


class MemoryItem(BaseModel):
    """One entry of `remember_many`; unset scope fields take the call's defaults."""

    text: str
    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None
    at: datetime | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] | None = None
    fact: Fact | None = None


class Enrichment(BaseModel):
    """What an optional enricher (e.g. an LLM) may add to a note's local enrichment."""

    keywords: list[str] = []
    tags: list[str] = []
    context: str | None = None


class Why(BaseModel):
    """How a hit earned its place: each signal the ranking combined."""

    similarity: float
    lexical: float
    temporal: float = 0.0
    retention: float
    via_link: str | None = Field(None, description="id of the note whose link brought this one in")
    link_activation: float = 0.0


class Hit(BaseModel):
    note: Note
    score: float
    why: Why


class DecayReport(BaseModel):
    at: datetime
    examined: int
    archived: list[str]
    kept: int


class ImportReport(BaseModel):
    imported: int
    skipped: int


class MemoryStats(BaseModel):
    path: str
    vector_store: Literal["embedded", "server"]
    notes: int
    active: int
    archived: int
    links: int
    pending_sync: int
    users: dict[str, int]

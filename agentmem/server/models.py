"""Request and response bodies the package's own models (`agentmem.notes`) do not cover."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..notes import ConsolidationReport, Fact, MemoryItem, Note


class Strict(BaseModel):
    """Unknown fields are refused: a misspelt option must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Scope(Strict):
    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None


class RememberBatch(Scope):
    """`remember_many`: scope and time given here apply to items that leave them unset."""

    items: list[MemoryItem | str] = Field(max_length=10_000)
    at: datetime | None = None


class RecallRequest(Scope):
    query: str
    k: int = 10
    at: datetime | None = None
    filters: dict[str, str | int | float | bool] | None = None
    include_archived: bool = False
    reinforce: bool = True


class UpdateRequest(Strict):
    """Fields left out stay as they are; `"fact": null` removes the note's fact."""

    text: str | None = None
    tags: list[str] | None = None
    metadata: dict[str, Any] | None = None
    fact: Fact | None = None
    at: datetime | None = None


class LinkRequest(Strict):
    note_id: str = Field(description="the note to link to")
    weight: float = 1.0
    at: datetime | None = None


class AtRequest(Strict):
    at: datetime | None = None


class PlanRequest(Strict):
    policy: dict[str, Any] | None = Field(None, description="ConsolidationPolicy fields to override")
    at: datetime | None = None


class ConsolidateRequest(PlanRequest):
    dry_run: bool = False


class AnswerRequest(Scope):
    question: str
    k: int = 5
    at: datetime | None = None
    retrieval: bool = True
    max_new_tokens: int = Field(32, le=512)


class HistoryEntry(BaseModel):
    """One earlier version of a note: when it changed, what changed, and the note before the change."""

    at: datetime
    change: str
    note: Note


class Forgotten(BaseModel):
    forgotten: str


class Linked(BaseModel):
    linked: tuple[str, str]
    weight: float


class Retention(BaseModel):
    note_id: str
    at: datetime
    retention: float


class JobProgress(BaseModel):
    stage: Literal["queued", "planning", "consolidating", "done"]
    done: int = 0
    total: int | None = None


class Job(BaseModel):
    """A background job and, once it ends, its report or error."""

    id: str
    kind: Literal["consolidate"] = "consolidate"
    status: Literal["queued", "running", "succeeded", "failed"]
    scheduled: bool = False
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: JobProgress
    report: ConsolidationReport | None = None
    error: dict[str, str] | None = None


class ErrorBody(BaseModel):
    error: str = Field(description="the typed error's class name, e.g. InvalidInputError")
    message: str

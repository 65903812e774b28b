"""Request and response bodies the package's own models (`agentmem.notes`) do not cover."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..notes import ConsolidationReport, Fact, MemoryItem, Note


def iso_time(value: Any) -> Any:
    """Times travel as ISO 8601 strings (the schema says so); a bare number is refused, not taken as epoch seconds."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("times are ISO 8601 strings, e.g. 2024-05-01T12:00:00Z")
    return datetime.fromisoformat(value)


IsoTime = Annotated[datetime, BeforeValidator(iso_time)]
STRICT = ConfigDict(extra="forbid", strict=True)


class Strict(BaseModel):
    """Bodies are taken as the schema describes them: no unknown fields, no "5" for 5."""

    model_config = STRICT


class Scope(Strict):
    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None


class RememberRequest(MemoryItem):
    """One note to remember: `MemoryItem`, taken strictly."""

    model_config = STRICT
    at: IsoTime | None = None
    tags: list[str] = []


class RememberBatch(Scope):
    """`remember_many`: scope and time given here apply to items that leave them unset."""

    items: list[RememberRequest | str] = Field(max_length=10_000)
    at: IsoTime | None = None


class RecallRequest(Scope):
    query: str
    k: int = 10
    at: IsoTime | None = None
    filters: dict[str, str | int | float | bool] | None = None
    include_archived: bool = False
    reinforce: bool = True


class UpdateRequest(Strict):
    """Fields left out stay as they are; `"fact": null` removes the note's fact."""

    text: str | None = None
    tags: list[str] | None = None
    metadata: dict[str, Any] | None = None
    fact: Fact | None = None
    at: IsoTime | None = None


class LinkRequest(Strict):
    note_id: str = Field(description="the note to link to")
    weight: float = 1.0
    at: IsoTime | None = None


class AtRequest(Strict):
    at: IsoTime | None = None


class ReinforceRequest(Strict):
    """Notes to count as recalled, e.g. those of a `recall` with `reinforce: false` that were used."""

    note_ids: list[str] = Field(max_length=1000)
    at: IsoTime | None = None
    strict: bool = Field(True, description="false: count them as a recall counts what it found (a note gone since, or"
                                           " one this key may not see, is left out; one made after `at` is not counted)")


class PlanRequest(Strict):
    policy: dict[str, Any] | None = Field(None, description="ConsolidationPolicy fields to override")
    at: IsoTime | None = None


class ConsolidateRequest(PlanRequest):
    dry_run: bool = False


class AnswerRequest(Scope):
    question: str
    k: int = 5
    at: IsoTime | None = None
    retrieval: bool = True
    max_new_tokens: int = Field(32, le=512)


class BackupRequest(Strict):
    target: str = Field(description="a new folder, or an empty one, on the server's disk")


class BackedUp(BaseModel):
    backup: str


class Reindexed(BaseModel):
    reindexed: int


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
    started_at: IsoTime | None = None
    finished_at: IsoTime | None = None
    progress: JobProgress
    report: ConsolidationReport | None = None
    error: dict[str, str] | None = None


class ErrorBody(BaseModel):
    error: str = Field(description="the typed error's class name, e.g. InvalidInputError")
    message: str

"""The public data models: what goes in, what comes back.

Everything that crosses the `Memory` boundary is a pydantic model, so agent code
gets validation, JSON round-trips (export/import) and editor hints for free.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Fact(BaseModel):
    """A structured fact a note states: `prompt` completed by `target`.

    Consolidation edits it into the model (after the edit, greedy generation continues
    `prompt` with `target`); `rephrases` are other prompts that should now give the target.
    """

    model_config = ConfigDict(frozen=True, str_strip_whitespace=True)

    prompt: str = Field(min_length=1)
    target: str = Field(min_length=1)
    rephrases: tuple[Annotated[str, Field(min_length=1)], ...] = ()


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


# ---- consolidation: notes moving into the weights ------------------------------------


class Verification(BaseModel):
    """What was measured on the live model right after an edit, before keeping it."""

    produces_target: bool = Field(description="greedy generation after the prompt gives the target")
    rephrase_match: float | None = Field(None, description="share of the fact's rephrases that give the target")
    probe_agreement: float = Field(description="share of probe-prompt token predictions unchanged by the edit")
    steps: int = Field(description="the editor's optimisation steps")
    seconds: float = Field(description="editing and verifying, wall time")


ConsolidationAction = Literal["edit", "replace", "retract", "skip"]
ConsolidationReason = Literal[
    "eligible", "fact_changed", "supersedes", "fact_removed", "contradicted", "duplicate", "no_fact", "consolidated",
    "archived", "failed_before", "known", "few_recalls", "weak", "faded", "unstable", "budget",
]
ConsolidationOutcome = Literal["applied", "failed", "retracted", "known"]


class Decision(BaseModel):
    """The policy's verdict on one note, why, and (after a job) what came of it."""

    note_id: str
    fact: Fact | None
    action: ConsolidationAction
    reason: ConsolidationReason
    detail: str = ""
    outcome: ConsolidationOutcome | None = None
    edit_id: str | None = None
    verification: Verification | None = None


class ConsolidationReport(BaseModel):
    at: datetime
    dry_run: bool
    editor: str
    examined: int
    decisions: list[Decision]
    applied: int = 0
    failed: int = 0
    retracted: int = 0
    known: int = 0
    seconds: float = 0.0


LedgerStatus = Literal["pending", "applied", "failed", "known", "retracting", "retracted"]


class LedgerEntry(BaseModel):
    """One row of the consolidation ledger: which note became (or did not become) which edit."""

    note_id: str
    edit_id: str | None
    prompt: str
    target: str
    editor: str
    status: LedgerStatus
    created_at: datetime
    updated_at: datetime
    verification: Verification | None = None
    detail: str = ""


class Answer(BaseModel):
    """`Memory.answer`'s reply and which memory gave it.

    `source`: "weights" when the edits cover the question (the model alone answered),
    "notes" when recalled notes were given as context, "model" when neither applied.
    """

    question: str
    text: str
    source: Literal["weights", "notes", "model"]
    hits: list[Hit] = []

"""The public data models: what goes in, what comes back.

Everything that crosses the `Memory` boundary is a pydantic model, so agent code
gets validation, JSON round-trips (export/import) and editor hints for free.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, model_validator

# ---- what a stored value may be: checked at the boundary, so no stored value can break reading ----

EARLIEST = datetime(1000, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(9000, 1, 1, tzinfo=timezone.utc)
MAX_ID_CHARS = 128
MAX_SCOPE_CHARS = 256
MAX_TAGS, MAX_TAG_CHARS = 32, 64
MAX_METADATA_KEYS, MAX_METADATA_KEY_CHARS, MAX_METADATA_JSON = 32, 64, 65_536
# lists and dicts inside one another; pydantic serialises at most 255 levels, and a note it cannot serialise
# would break every listing and export that holds it. A note stored before the cap keeps being read up to the
# deeper bound (validated with the `STORED` context), leaving room for the response that carries it.
MAX_METADATA_DEPTH, MAX_STORED_METADATA_DEPTH = 32, 200
STORED = {"stored": True}  # validation context of a note read back from the store
MAX_FACT_CHARS, MAX_REPHRASES = 500, 16
MAX_STRENGTH = 1e6
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"


def clean_string(value: str) -> str:
    """Text that every store and file format can hold: valid Unicode (no lone surrogates), no NUL."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate; strings must be valid Unicode") from None
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    return value


def printable(value: str) -> str:
    if not value.strip() or not value.isprintable():
        raise ValueError("must be printable and not blank")
    return value


def utc_time(value: datetime) -> datetime:
    """A time in UTC within [EARLIEST, LATEST); a naive time is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    if not EARLIEST <= value < LATEST:  # compared before converting: conversion itself can overflow
        raise ValueError(f"times must lie between {EARLIEST.date()} and {LATEST.date()} (UTC)")
    return value.astimezone(timezone.utc)


def json_value(value: Any, depth: int = 1, max_depth: int = MAX_METADATA_DEPTH) -> Any:
    """A metadata value that JSON holds exactly: finite numbers, clean strings, and lists and string-keyed dicts
    at most `max_depth` deep (`depth` is the value's own level, the metadata dict's is 1)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite")
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise ValueError("integers must fit in 64 bits")
    if isinstance(value, (list, dict)) and depth > max_depth:
        raise ValueError(f"metadata may nest lists and dicts at most {max_depth} deep")
    if isinstance(value, str):
        clean_string(value)
    elif isinstance(value, list):
        for item in value:
            json_value(item, depth + 1, max_depth)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError("nested keys must be strings")
            clean_string(key)
            json_value(item, depth + 1, max_depth)
    elif value is not None and not isinstance(value, (bool, int, float)):
        raise ValueError(f"{type(value).__name__} is not a JSON value")
    return value


def metadata_dict(value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    if len(value) > MAX_METADATA_KEYS:
        raise ValueError(f"at most {MAX_METADATA_KEYS} metadata keys")
    for key in value:
        if not key or len(key) > MAX_METADATA_KEY_CHARS:
            raise ValueError(f"metadata keys need 1 to {MAX_METADATA_KEY_CHARS} characters")
    json_value(value, max_depth=MAX_STORED_METADATA_DEPTH if (info.context or {}).get("stored") else MAX_METADATA_DEPTH)
    if len(json.dumps(value)) > MAX_METADATA_JSON:
        raise ValueError(f"metadata must serialise to at most {MAX_METADATA_JSON} characters of JSON")
    return value


CleanStr = Annotated[str, AfterValidator(clean_string)]
Time = Annotated[datetime, AfterValidator(utc_time)]
NoteId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]
ScopeId = Annotated[CleanStr, Field(min_length=1, max_length=MAX_SCOPE_CHARS), AfterValidator(printable)]
Tag = Annotated[CleanStr, Field(min_length=1, max_length=MAX_TAG_CHARS)]
Metadata = Annotated[dict[str, Any], AfterValidator(metadata_dict)]
FactText = Annotated[CleanStr, Field(min_length=1, max_length=MAX_FACT_CHARS)]


class Fact(BaseModel):
    """A structured fact a note states: `prompt` completed by `target`.

    Consolidation edits it into the model (after the edit, greedy generation continues
    `prompt` with `target`); `rephrases` are other prompts that should now give the target.
    """

    model_config = ConfigDict(frozen=True, str_strip_whitespace=True, extra="forbid")  # "rephrase" is no field

    prompt: FactText
    target: FactText
    rephrases: tuple[FactText, ...] = Field((), max_length=MAX_REPHRASES)


class Link(BaseModel):
    """An undirected, weighted edge of the note graph, seen from one of its ends."""

    note_id: NoteId
    weight: float = Field(gt=0, le=1)


class Note(BaseModel):
    """One memory: the text plus what makes it findable, linkable and forgettable.

    Its fields carry the limits every stored note keeps (valid Unicode, times within
    [EARLIEST, LATEST), finite numbers, capped sizes), so an export re-imports and no stored
    note can make the store unreadable.
    """

    id: NoteId
    text: Annotated[CleanStr, Field(min_length=1)]
    keywords: list[CleanStr] = []
    tags: list[Tag] = Field([], max_length=MAX_TAGS)
    context: CleanStr = ""
    user_id: ScopeId | None = None
    agent_id: ScopeId | None = None
    session_id: ScopeId | None = None
    created_at: Time
    updated_at: Time
    last_recalled: Time
    recall_count: int = Field(0, ge=0, lt=2**31)  # PostgreSQL's INTEGER column
    strength: float = Field(1.0, gt=0, le=MAX_STRENGTH, allow_inf_nan=False)
    archived: bool = False
    metadata: Metadata = {}
    fact: Fact | None = None
    links: list[Link] = []

    @model_validator(mode="after")
    def _no_self_link(self) -> Note:
        if any(link.note_id == self.id for link in self.links):
            raise ValueError("a note cannot link to itself")
        return self


class MemoryItem(BaseModel):
    """One entry of `remember_many`; unset scope fields take the call's defaults. A misspelt field is refused:
    `{"user": "frank"}` would have stored a note of no user, whose fact every user is then answered."""

    model_config = ConfigDict(extra="forbid")
    text: CleanStr
    user_id: ScopeId | None = None
    agent_id: ScopeId | None = None
    session_id: ScopeId | None = None
    at: Time | None = None
    tags: tuple[Tag, ...] = Field((), max_length=MAX_TAGS)
    metadata: Metadata | None = None
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
    quarantined: int = Field(0, description="rows that could not be read, moved aside (see Memory.quarantined)")


# ---- consolidation: notes moving into the weights ------------------------------------


class Verification(BaseModel):
    """What was measured on the live model right after an edit, before keeping it."""

    produces_target: bool = Field(description="greedy generation after the prompt gives the target")
    rephrase_match: float | None = Field(None, description="share of the fact's rephrases that give the target")
    probe_agreement: float = Field(description="share of probe-prompt token predictions unchanged by the edit")
    neighbour_agreement: float | None = Field(
        None, description="of those, on the fact's own neighbour prompts (facts.neighbour_prompts; None: it has none)")
    steps: int = Field(description="the editor's optimisation steps")
    seconds: float = Field(description="editing and verifying, wall time")


ConsolidationAction = Literal["edit", "replace", "retract", "skip"]
ConsolidationReason = Literal[
    "eligible", "fact_changed", "supersedes", "fact_removed", "contradicted", "duplicate", "no_fact", "consolidated",
    "archived", "failed_before", "known", "few_recalls", "weak", "faded", "unstable", "budget", "unshared",
]
ConsolidationOutcome = Literal["applied", "failed", "retracted", "known"]


class Decision(BaseModel):
    """The policy's verdict on one note, why, and (after a job) what came of it."""

    note_id: str
    fact: Fact | None
    action: ConsolidationAction
    reason: ConsolidationReason
    detail: str = ""
    scope: str | None = Field(None, description="the scope the fact's edit goes (or went) into; None: shared")
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
    scope: str | None = Field(None, description="the scope the edit went into; None: shared")


class Answer(BaseModel):
    """`Memory.answer`'s reply and which memory gave it.

    `source`: "weights" when the edits cover the question (the model alone answered),
    "notes" when recalled notes were given as context, "model" when neither applied.
    """

    question: str
    text: str
    source: Literal["weights", "notes", "model"]
    hits: list[Hit] = []

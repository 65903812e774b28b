"""Which notes have earned a place in the weights: the consolidation policy as a pure function.

`decide` looks only at the notes, their retention, and the ledger, so a plan can be made
(and tested) without touching the model. Asking the model whether it already knows a fact,
and the per-run budget, come after, in the job (`Consolidator.plan`).

Scopes: a fact goes into the weights in the scope of the note it came from (`edit_scope`): the
owner's ("user:<id>", else "agent:<id>"), so that generation for another user never fires it. It
is shared (scope None, fired for everyone) when the note has no owner, when it is marked shared
(`metadata={"shared": True}`; on a server, only a key not bound to one user may), or when `share_from` different users state
the same fact (never with `share_from=None`). Facts compete within a scope: for each scope and fact prompt the newest note wins
and older notes on it count as contradicted; Alice's and Bob's notes on the same prompt are two
edits, and retracting one leaves the other.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..facts import prompt_key
from ..notes import Decision, FactText, LedgerEntry, Note


MAX_INT = 2**63 - 1  # integers a store keeps (64 bits), as everywhere else


class ConsolidationPolicy(BaseModel):
    """When a note's fact may become an edit, and how each edit is verified.

    A note whose fact is already in the weights under another target (the note was updated,
    or a newer note contradicts it) is replaced whatever its recall history: the old fact has
    earned its place, and the weights must not keep stating it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    min_recalls: int = Field(3, ge=0, le=MAX_INT, description="times the note must have been recalled")
    min_strength: float = Field(0.0, ge=0, description="lower bound on the note's forgetting-curve strength S")
    min_retention: float = Field(0.2, ge=0, le=1, description="lower bound on the note's retention R at the job's time")
    stable_for: timedelta = Field(timedelta(hours=12), description="the note must be unchanged for this long")
    max_edits: int = Field(100, ge=0, le=MAX_INT, description="budget: edits (new or replacing) per run")
    probe_tolerance: float | None = Field(
        None, ge=0, le=1,
        description="share of probe-prompt token predictions one edit (one batch, for the batching editors) may change "
                    "from the state the job's kept edits left; None: the editor family's default (0 for the side "
                    "memories, 0.05 for the locate-and-edit family)",
    )
    probe_budget: float | None = Field(
        None, ge=0, le=1,
        description="share of the shared probes' token predictions the job's kept shared edits may change together, "
                    "from before its first edit; None: the editor family's default (0 for the side memories, 0.10 "
                    "for the locate-and-edit family), raised to the tolerance if that is higher",
    )
    probes: tuple[FactText, ...] | None = Field(
        None, min_length=1, max_length=1000, description="unrelated prompts checked after each edit (None: the built-in set)",
    )
    replace: Literal["next_job", "immediately"] = Field(
        "next_job", description="when an update or a contradicting note replaces a consolidated fact's edit",
    )
    share_from: int | None = Field(
        2, ge=1, le=MAX_INT,
        description="users stating the same fact that make its edit shared by everyone (None: only a mark "
                    "shares; `agentmem serve` with user-bound keys defaults to it, as two such keys could "
                    "otherwise share what neither may mark)",
    )
    neighbours: bool = Field(True, description="also verify each edit on its neighbour prompts (facts.neighbour_prompts)")


def probe_limits(policy: ConsolidationPolicy, defaults: tuple[float, float]) -> tuple[float, float]:
    """The (per-edit tolerance, job budget) a job verifies with: the policy's where it sets them, else the editor
    family's `defaults`; an unset budget is never below the tolerance in force (a budget the user sets is kept)."""
    tolerance = defaults[0] if policy.probe_tolerance is None else policy.probe_tolerance
    budget = max(defaults[1], tolerance) if policy.probe_budget is None else policy.probe_budget
    return tolerance, budget


def owner_scope(user_id: str | None, agent_id: str | None) -> str | None:
    """The scope of what a user (else an agent) owns; None when neither is given (shared)."""
    return f"user:{user_id}" if user_id else f"agent:{agent_id}" if agent_id else None


def reader_scopes(user_id: str | None, agent_id: str | None) -> list[str]:
    """The scopes whose edits fire when answering this user and agent (shared edits always fire): what
    `recall` would let them see. An agent's own edits come from notes without a user (`owner_scope`),
    which a recall for a user does not return either, so they fire for the agent alone, not for its users."""
    scope = owner_scope(user_id, agent_id)
    return [scope] if scope else []


def is_marked_shared(note: Note) -> bool:
    """Only an explicit mark: a tag could also come from the note's own words ("Shared" in a sentence)."""
    return note.metadata.get("shared") is True


def edit_scopes(notes: Sequence[Note], policy: ConsolidationPolicy) -> dict[str, str | None]:
    """Per note with a fact: the scope its edit goes into (see the module docstring)."""
    users: dict[tuple[str, str], set[str]] = defaultdict(set)
    for note in notes:
        if note.fact and note.user_id:
            users[(prompt_key(note.fact.prompt), note.fact.target)].add(note.user_id)
    scopes = {}
    for note in notes:
        if note.fact is None:
            continue
        stated_by = len(users[(prompt_key(note.fact.prompt), note.fact.target)])
        widely_held = policy.share_from is not None and stated_by >= policy.share_from
        shared = is_marked_shared(note) or widely_held
        scopes[note.id] = None if shared else owner_scope(note.user_id, note.agent_id)
    return scopes


def decide(
    notes: Sequence[Note],
    retention: Mapping[str, float],
    ledger: Sequence[LedgerEntry],
    policy: ConsolidationPolicy,
    at: datetime,
    recorded_scopes: Mapping[str, str | None] | None = None,
) -> list[Decision]:
    """One decision per note, with its reason; edits first, in priority order (most recalled, strongest).

    Edits and replacements are candidates here: the job still asks the model and applies the budget.
    `recorded_scopes` (edit id -> scope, from the ledger) says which scope each applied edit is in;
    an edit whose note now belongs in another scope (it became shared) is replaced.
    """
    scope = edit_scopes(notes, policy)
    applied = {e.note_id: e for e in ledger if e.status == "applied"}
    recorded = dict(recorded_scopes or {})
    in_scope = {e.edit_id: recorded.get(e.edit_id, scope.get(e.note_id)) for e in applied.values()}
    held = {(in_scope[e.edit_id], prompt_key(e.prompt)): e for e in applied.values()}
    settled = {(e.note_id, e.prompt, e.target): e.status for e in ledger if e.status in ("failed", "known")}
    newest: dict[tuple[str | None, str], Note] = {}
    for note in sorted((n for n in notes if n.fact), key=lambda n: (n.updated_at, n.created_at)):
        newest[(scope[note.id], prompt_key(note.fact.prompt))] = note

    def one(note: Note) -> Decision:
        fact, prior = note.fact, applied.get(note.id)

        def verdict(action: str, reason: str, detail: str = "") -> Decision:
            where = in_scope[prior.edit_id] if prior and action == "retract" else scope.get(note.id)
            return Decision(note_id=note.id, fact=fact, action=action, reason=reason, detail=detail, scope=where)

        if fact is None:
            return verdict("retract", "fact_removed") if prior else verdict("skip", "no_fact")
        winner = newest[(scope[note.id], prompt_key(fact.prompt))]
        if winner.id != note.id and winner.fact.target != fact.target:
            detail = f"newer note {winner.id} says {winner.fact.target!r}"
            return verdict("retract", "contradicted", detail) if prior else verdict("skip", "contradicted", detail)
        if winner.id != note.id and not prior:
            return verdict("skip", "duplicate", f"newer note {winner.id} states the same fact")
        if prior and (prior.prompt, prior.target) == (fact.prompt, fact.target):
            if in_scope[prior.edit_id] != scope[note.id]:
                moved = f"edit {prior.edit_id} is in scope {in_scope[prior.edit_id]!r}, the fact now belongs in {scope[note.id]!r}"
                if winner.id != note.id:  # the newer note states it there: that one is edited in
                    return verdict("retract", "duplicate", f"{moved}; newer note {winner.id} states it")
                return verdict("replace", "fact_changed", moved)
            return verdict("skip", "consolidated", f"edit {prior.edit_id}")
        if prior:
            return verdict("replace", "fact_changed", f"edit {prior.edit_id} said {prior.target!r}")
        holder = held.get((scope[note.id], prompt_key(fact.prompt)))
        if holder is not None:
            if holder.target == fact.target:
                return verdict("skip", "consolidated", f"the same fact is edit {holder.edit_id} of note {holder.note_id}")
            return verdict("replace", "supersedes", f"edit {holder.edit_id} of note {holder.note_id} said {holder.target!r}")
        if note.archived:
            return verdict("skip", "archived")
        earlier = settled.get((note.id, fact.prompt, fact.target))
        if earlier == "failed":
            return verdict("skip", "failed_before", "an earlier edit of this fact failed verification")
        if earlier == "known":
            return verdict("skip", "known", "the model already gave the target at an earlier job")
        if note.recall_count < policy.min_recalls:
            return verdict("skip", "few_recalls", f"recalled {note.recall_count} < {policy.min_recalls} times")
        if note.strength < policy.min_strength:
            return verdict("skip", "weak", f"strength {note.strength:.2f} < {policy.min_strength:.2f}")
        if retention[note.id] < policy.min_retention:
            return verdict("skip", "faded", f"retention {retention[note.id]:.2f} < {policy.min_retention:.2f}")
        if at - note.updated_at < policy.stable_for:
            return verdict("skip", "unstable", f"changed {at - note.updated_at} ago, < {policy.stable_for}")
        return verdict("edit", "eligible")

    ordered = sorted(notes, key=lambda n: (-n.recall_count, -n.strength, n.created_at, n.id))
    decisions = [one(note) for note in ordered]
    rank = {"retract": 0, "replace": 1, "edit": 2, "skip": 3}
    return sorted(decisions, key=lambda d: rank[d.action])  # stable: priority order within each action

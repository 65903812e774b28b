"""The consolidation job: from the policy's decisions to verified edits, with the ledger as write-ahead log.

Per fact: a `pending` ledger row, the edit, its verification (the target comes out greedily;
probe prompts unchanged within the tolerance), then either a rollback (`failed`) or a save of
the editor's state and `applied`. The probes are held to two limits (`probe_limits`: the policy's, else
the editor family's defaults): what one edit (one batch) moves from the state the kept edits left, and what the
job's kept shared edits move together from before its first edit. A lone edit within the first that would overrun
the second is rolled back and left for a later job (skip, reason `budget`), like every edit after it in this job.
Retractions run first (`retracting` -> rollback -> save -> `retracted`), so the weights never state a fact the
notes have moved past. `reconcile` finishes or undoes whatever an interrupted job left behind, from the ledger and
the saved state.

Locks: one job at a time per store (a file lock beside it, and a thread lock), taken before
the note store's own locks, which are held only for the short reads and ledger writes.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import filelock
from tqdm.auto import tqdm

from ..editors import Editor
from ..errors import StoreUnavailableError
from ..notes import ConsolidationReport, Decision, LedgerEntry, Note, Verification
from .ledger import LIVE, Ledger
from .parametric import PROBES, ParametricMemory, agreement
from .policy import ConsolidationPolicy, decide, edit_scopes, probe_limits


@dataclass(frozen=True)
class NoteAccess:
    """How the job reads the note store: under the store's locks, which `locked()` takes. `purge_freed`
    takes from the store's files the freed pages of rows just deleted (`NoteStore.purge_freed`)."""

    locked: Callable[[], AbstractContextManager[None]]
    notes: Callable[[], list[Note]]
    note: Callable[[str], Note | None]
    retention: Callable[[Note, datetime], float]
    purge_freed: Callable[[], None]


class Consolidator:
    """Runs consolidation jobs for one store and keeps its ledger and editor state in step."""

    def __init__(self, parametric: ParametricMemory, ledger: Ledger, store: NoteAccess, lock_path: Path) -> None:
        self.parametric = parametric
        self.ledger = ledger
        self.store = store
        self._lock = threading.RLock()
        self._job_lock = filelock.FileLock(str(lock_path), thread_local=False)
        self._dirty = False  # the editor in memory may hold changes that are not saved

    @contextmanager
    def job(self) -> Iterator[None]:
        """Exclusive use of the editor, caught up with what other processes (or a crash) left on disk."""
        with self._lock, self._job_lock:
            if self._dirty:
                self.parametric.reload()
                self._dirty = False
            else:
                self.parametric.refresh()
            yield

    @contextmanager
    def reading(self, hide_retracting: bool = False) -> Iterator[None]:
        """Use of the model for answering. Another process's saved edits are picked up unless a job
        of that process is running, which is not waited for: the state already loaded answers.
        `hide_retracting`: edits marked `retracting` that could not be rolled back and saved yet (a job
        elsewhere holds the lock) are taken out of the model in memory; the next use reloads the saved
        state and looks again."""
        with self._lock:
            if self._dirty:  # changes the saved state does not have (a failed save, hidden edits): they may not answer
                self.parametric.reload()
                self._dirty = False
            try:
                with self._job_lock.acquire(timeout=0):
                    self.parametric.refresh()
            except filelock.Timeout:
                pass
            if hide_retracting:
                hidden = self.parametric.edit_ids() & {row.edit_id for row in self._retracting_rows()}
                if hidden:
                    self._dirty = True
                    self.parametric.rollback(hidden)
            yield

    # ---- planning ------------------------------------------------------------------------

    def plan(self, policy: ConsolidationPolicy, at: datetime, only: Collection[str] | None = None) -> list[Decision]:
        """The policy's decisions, the model asked about each candidate, the budget applied. Changes nothing."""
        with self.store.locked():
            notes = self.store.notes()
            entries = self.ledger.entries()
            recorded = self.ledger.scopes()
            retention = {note.id: self.store.retention(note, at) for note in notes}
        decisions = _shared_only(decide(notes, retention, entries, policy, at, recorded), edit_scopes(notes, policy),
                                 self.parametric.editor)
        if only is not None:
            decisions = [d for d in decisions if d.note_id in only or d.action == "retract"]
        candidates = [i for i, d in enumerate(decisions) if d.action == "edit"]
        for i, known in zip(candidates, self.parametric.knows([decisions[i].fact for i in candidates])):
            if known:
                decisions[i] = decisions[i].model_copy(
                    update={"action": "skip", "reason": "known", "detail": "the model already gives the target"}
                )
        budget = policy.max_edits
        for i, decision in enumerate(decisions):
            if decision.action in ("edit", "replace"):
                if budget:
                    budget -= 1
                else:
                    decisions[i] = decision.model_copy(
                        update={"action": "skip", "reason": "budget", "detail": f"over the budget of {policy.max_edits}"}
                    )
        return decisions

    # ---- the job -------------------------------------------------------------------------

    def run(self, policy: ConsolidationPolicy, at: datetime, dry_run: bool = False,
            only: Collection[str] | None = None, progress: bool = False) -> ConsolidationReport:
        start = time.perf_counter()
        with self.job():
            if dry_run:
                decisions = self.plan(policy, at, only)
            else:
                self.reconcile(at)
                decisions = self._execute(self.plan(policy, at, only), policy, at, progress)
                self.retract_pending(at)  # notes forgotten while the job ran (their forget did not wait for it)
        counts = {name: sum(d.outcome == name for d in decisions) for name in ("applied", "failed", "retracted", "known")}
        return ConsolidationReport(
            at=at, dry_run=dry_run, editor=self.parametric.kind, examined=len(decisions), decisions=decisions,
            seconds=time.perf_counter() - start, **counts,
        )

    def _execute(self, decisions: list[Decision], policy: ConsolidationPolicy, at: datetime, progress: bool) -> list[Decision]:
        done = list(decisions)
        work = [i for i, d in enumerate(decisions) if d.action != "skip" or d.reason == "known"]
        bar = tqdm(total=len(work), desc="consolidating", unit="fact", disable=not progress)
        queued: list[int] = []  # edits, made once every retraction is done
        for i in sorted(work, key=lambda i: decisions[i].action != "retract"):  # retractions first
            decision = decisions[i]
            if decision.action == "skip":  # the model already knows it: on record (once), so later jobs need not ask
                with self.store.locked():
                    recorded = [(e.prompt, e.target) for e in self.ledger.entries(decision.note_id, ["known"])]
                    if (decision.fact.prompt, decision.fact.target) not in recorded:
                        self.ledger.add(decision.note_id, None, decision.fact, self.parametric.kind, "known", at,
                                        detail=decision.detail)
                        done[i] = decision.model_copy(update={"outcome": "known"})
            elif decision.action == "retract":
                self._retract_note(decision.note_id, at, decision.reason)
                done[i] = decision.model_copy(update={"outcome": "retracted"})
            else:
                if decision.action == "replace":
                    self._retract_note(decision.note_id, at, "replaced")
                    if self.parametric.knows([decision.fact])[0]:
                        with self.store.locked():
                            self.ledger.add(decision.note_id, None, decision.fact, self.parametric.kind, "known", at)
                        done[i] = decision.model_copy(update={"outcome": "known"})
                        bar.update()
                        continue
                queued.append(i)
                continue
            bar.update()
        if queued:
            with self.store.locked():
                scopes = edit_scopes(self.store.notes(), policy)
            pairs = self.parametric.probe_pairs(policy.probes or PROBES)  # the state edits must not move
            before = self.parametric.predictions(pairs)
            tolerance, budget = probe_limits(policy, self.parametric.probe_defaults)
            probes = Probes(pairs, before, [list(b) for b in before], tolerance, budget)
            size = self.parametric.batch_size
            for start in range(0, len(queued), size):
                chunk = queued[start : start + size]
                if probes.spent:  # a lone edit overran the job's budget: the rest wait for a later job
                    for i in chunk:
                        done[i] = _over_budget(decisions[i], "an earlier edit of this job overran it")
                else:
                    for i, decision in self._edit_batch([(i, decisions[i]) for i in chunk], scopes, policy, at, probes).items():
                        done[i] = decision
                bar.update(len(chunk))
        bar.close()
        return done

    def _edit_batch(self, batch: list[tuple[int, Decision]], scopes: dict[str, str | None], policy: ConsolidationPolicy,
                    at: datetime, probes: Probes) -> dict[int, Decision]:
        """Facts into the weights, each in its note's scope, write-ahead: a pending row each, then `_land`.

        One fact at a time for most editors; the locate-and-edit family takes a batch per solve.
        """
        pending, outcomes = [], {}
        with self.store.locked():
            for i, decision in batch:
                note = self.store.note(decision.note_id)
                if note is None or note.fact != decision.fact:
                    outcomes[i] = decision.model_copy(update={"detail": "the note changed during the job; left for the next one"})
                    continue
                edit = Pending(i, decision, uuid.uuid4().hex[:16], scopes.get(note.id))
                self.ledger.add(note.id, edit.edit_id, decision.fact, self.parametric.kind, "pending", at, scope=edit.scope)
                pending.append(edit)
        if pending:
            self._dirty = True
            outcomes.update(self._land(pending, policy, at, probes))
        return outcomes

    def _land(self, edits: list[Pending], policy: ConsolidationPolicy, at: datetime, probes: Probes) -> dict[int, Decision]:
        """Edit and verify `edits` (pending rows) together: kept (save, applied) if every one verifies; else rolled
        back, and a batch is bisected so its good facts still land while a lone failure is recorded (failed). A batch
        that only overruns the job's probe budget is bisected too; a lone edit that does is left for a later job."""
        if probes.spent:  # the other half of a bisection, after a lone edit overran the budget
            with self.store.locked():
                for edit in edits:
                    self.ledger.delete(edit.edit_id)
            return {e.index: _over_budget(e.decision, "an earlier edit of this job overran it") for e in edits}
        try:
            if len(edits) == 1 and self.parametric.batch_size == 1:
                [edit] = edits
                verification, after = self.parametric.edit(
                    edit.decision.fact, edit.edit_id, probes.pairs, probes.before, edit.scope, policy.neighbours
                )
                verifications: list[Verification | None] = [verification]
            else:
                made, after = self.parametric.edit_batch(
                    [(e.decision.fact, e.edit_id, e.scope) for e in edits], probes.pairs, probes.before, policy.neighbours
                )
                verifications = list(made)
            problems = [_problems(v, probes.tolerance) for v in verifications if v is not None]
            failed = any(problems)
        except Exception as exc:  # an edit the editor cannot make fails like one that does not verify
            verifications, problems, failed = [None] * len(edits), [f"{type(exc).__name__}: {exc}"] * len(edits), True
        overrun = ""  # the job's budget: only shared edits' probes are the job's baseline's (a scope's may differ)
        if not failed and all(e.scope is None for e in edits) and 1 - agreement(probes.initial, after) > probes.budget:
            overrun = f"the job's probes would move {1 - agreement(probes.initial, after):.3f} > its budget {probes.budget:.3f}"
        if not failed and not overrun:
            kept = self._keep(edits, [v for v in verifications if v is not None], at)
            if all(e.scope is None for e in edits):  # the next edit may move the probes as far from this state
                applied = all(d.outcome == "applied" for d in kept.values())  # else some were retracted meanwhile
                probes.before = after if applied else self.parametric.predictions(probes.pairs)
            return kept
        self.parametric.rollback([e.edit_id for e in edits])
        if overrun and len(edits) == 1:  # the fact itself is fine: not `failed` (that is final), left for a later job
            probes.spent = True
            with self.store.locked():
                self.ledger.delete(edits[0].edit_id)
            return {edits[0].index: _over_budget(edits[0].decision, overrun)}
        if len(edits) > 1:
            half = len(edits) // 2
            return {**self._land(edits[:half], policy, at, probes), **self._land(edits[half:], policy, at, probes)}
        [edit], [verification], [problem] = edits, verifications, problems
        self._dirty = verification is None  # after an exception the editor's state is not trusted
        with self.store.locked():
            recorded = self.ledger.set_status(edit.edit_id, "failed", at, expect=["pending"],
                                              verification=verification, detail=problem)
        if not recorded:  # its note was forgotten meanwhile: the row says `retracting`, and goes
            self.retract_pending(at)
        return {edit.index: edit.decision.model_copy(
            update={"outcome": "failed", "edit_id": edit.edit_id, "verification": verification, "detail": problem}
        )}

    def _keep(self, edits: list[Pending], verifications: list[Verification], at: datetime) -> dict[int, Decision]:
        """Verified edits: their numbers into the ledger, the editor's state saved, then `applied`.

        A note forgotten during its edit has its row moved to `retracting` by `forget`: the edit is
        rolled back before the save and never reaches the saved state."""
        with self.store.locked():  # the numbers go in first, so a crash after the save still has them
            recorded = [self.ledger.set_status(edit.edit_id, "pending", at, expect=["pending"], verification=verification)
                        for edit, verification in zip(edits, verifications)]
        forgotten = [edit.edit_id for edit, kept in zip(edits, recorded) if not kept]
        if forgotten:
            self.parametric.rollback(forgotten)
        try:
            self._save()
        except StoreUnavailableError:
            with self.store.locked():  # not in the saved state: the notes are planned again by a later job
                for edit in edits:
                    self.ledger.delete(edit.edit_id)
            raise
        outcomes = {}
        with self.store.locked():
            for edit, verification in zip(edits, verifications):
                applied = self.ledger.set_status(edit.edit_id, "applied", at, expect=["pending"])
                outcomes[edit.index] = edit.decision.model_copy(update={
                    "outcome": "applied" if applied else "retracted", "edit_id": edit.edit_id, "verification": verification,
                })
        if any(d.outcome == "retracted" for d in outcomes.values()):  # forgotten meanwhile: the row says `retracting`
            self.retract_pending(at)
        return outcomes

    # ---- retracting ----------------------------------------------------------------------

    def _retract_note(self, note_id: str, at: datetime, reason: str) -> None:
        with self.store.locked():
            for entry in self.ledger.entries(note_id, ["pending", "applied"]):
                self.ledger.set_status(entry.edit_id, "retracting", at, detail=reason)
        self.retract_pending(at)

    def retracting(self) -> bool:
        """Whether edits wait to be rolled back: a note forgotten by a process that had not loaded the model."""
        return bool(self._retracting_rows())

    def _retracting_rows(self) -> list[LedgerEntry]:
        with self.store.locked():
            return self.ledger.entries(statuses=["retracting"])

    def retract_pending(self, at: datetime, wait: bool = True) -> None:
        """Roll back every edit marked `retracting`, save, and close the rows (a forgotten note's rows go).
        Without `wait`, nothing happens while another process's job runs."""
        with self._lock:
            try:
                self._job_lock.acquire(timeout=-1 if wait else 0)
            except filelock.Timeout:
                return
            try:
                self._retract_pending(at)
            finally:
                self._job_lock.release()

    def _retract_pending(self, at: datetime) -> None:
        rows = self._retracting_rows()
        if not rows:
            return
        if self._dirty:  # the saved state is the one to roll back from (`reading` may have hidden the edits)
            self.parametric.reload()
            self._dirty = False
        doomed = self.parametric.edit_ids() & {row.edit_id for row in rows}
        if doomed:
            self._dirty = True
            self.parametric.rollback(doomed)
            self._save()  # on failure the rows stay `retracting`, for the next call
        with self.store.locked():
            forgotten = {row.edit_id for row in rows if self.store.note(row.note_id) is None}
            for row in rows:
                if row.edit_id in forgotten:
                    self.ledger.delete(row.edit_id)
                else:
                    self.ledger.set_status(row.edit_id, "retracted", at)
            if forgotten:  # the deleted rows held the forgotten facts' prompts and targets
                self.store.purge_freed()

    # ---- recovery ------------------------------------------------------------------------

    def reconcile(self, at: datetime) -> None:
        """Make the ledger and the saved editor state agree after an interrupted job.

        A `pending` edit that reached the saved state was verified before the save: it is
        applied; one that did not is dropped, and its note is planned again. An `applied`
        edit missing from the state is marked retracted, so it is planned again too. An edit
        in the state that the ledger does not know is rolled back. Saved states other than the current one
        are removed (a forgotten note's fact stayed in one). Then `retracting` rows finish.
        The saved state must be the store's current one: on a database, the bridge fetches the
        published state first (`ParametricBridge._load`).
        """
        with self.job():
            with self.store.locked():
                rows = self.ledger.entries(statuses=LIVE)
            live = self.parametric.edit_ids()
            with self.store.locked():
                for row in rows:
                    if self.store.note(row.note_id) is None:  # forgotten while a job held its edit: it goes
                        self.ledger.set_status(row.edit_id, "retracting", at, detail="its note is gone")
                    elif row.status == "pending" and row.edit_id in live and row.verification is not None:
                        self.ledger.set_status(row.edit_id, "applied", at, detail="completed after an interrupted job")
                    elif row.status == "pending":
                        self.ledger.delete(row.edit_id)
                    elif row.status == "applied" and row.edit_id not in live:
                        self.ledger.set_status(row.edit_id, "retracted", at, detail="missing from the saved editor state")
            orphans = live - {row.edit_id for row in rows if row.status != "pending" or row.verification is not None}
            if orphans:
                self._dirty = True
                self.parametric.rollback(orphans)
                self._save()
            self.parametric.clean()  # a state a killed job wrote but never made current holds its facts
        self.retract_pending(at)

    def _save(self) -> None:
        """Save the editor's state. When that fails (a full disk), the editor goes back to the saved
        state, so nothing unsaved answers, and the failure is a typed error."""
        try:
            self.parametric.save()
        except Exception as exc:
            try:
                self.parametric.reload()
                self._dirty = False
            except Exception:  # `reading` and `job` reload it before the next use
                self._dirty = True
            raise StoreUnavailableError(f"cannot save the editor's state in {self.parametric.directory}: {exc}") from exc
        self._dirty = False

    def close(self) -> None:
        self.parametric.close()


@dataclass
class Probes:
    """The job's probe prompts with their continuations, and the model's predictions on them with the shared edits
    kept so far: measured once before the job's first edit (`initial`), then carried past each kept shared edit, so
    that `tolerance` bounds what each edit moves, without measuring the probes again; `budget` bounds how far the
    kept shared edits together move them from `initial`, and `spent` says a lone edit overran it."""

    pairs: list[tuple[str, str]]
    before: list[list[int]]
    initial: list[list[int]]
    tolerance: float
    budget: float
    spent: bool = False


@dataclass(frozen=True)
class Pending:
    """An edit with its pending ledger row: where its decision sits in the job's list, the decision, id, scope."""

    index: int
    decision: Decision
    edit_id: str
    scope: str | None


def _shared_only(decisions: list[Decision], scopes: dict[str, str | None], editor: Editor) -> list[Decision]:
    """For an editor that changes what every user sees (not `scoped`: the locate-and-edit family, WISE), a fact in
    a user's or agent's scope is refused (its note must be marked shared), and an edit of it, once shared, goes."""
    if editor.scoped:
        return decisions
    detail = f"the {editor.kind} editor changes weights every user shares: mark the note shared to consolidate it"
    refused = {"edit": "skip", "replace": "retract"}
    return [
        d.model_copy(update={"action": refused[d.action], "reason": "unshared", "detail": detail})
        if d.action in refused and scopes.get(d.note_id) is not None else d
        for d in decisions
    ]


def _problems(verification: Verification, tolerance: float) -> str:
    """Why a verified edit may not stay ('' if it may)."""
    problems = []
    if not verification.produces_target:
        problems.append("the model does not produce the target")
    if verification.probe_agreement < 1 - tolerance:
        problems.append(f"probe agreement {verification.probe_agreement:.3f} < {1 - tolerance:.3f}")
    return "; ".join(problems)


def _over_budget(decision: Decision, why: str) -> Decision:
    """An edit left for a later job because this job's probe budget is spent (nothing of it is in the ledger)."""
    return decision.model_copy(update={
        "action": "skip", "reason": "budget", "detail": f"over the job's probe budget ({why}); left for a later job",
    })


"""Consolidation in the background: one job at a time on a worker thread, optionally on a schedule.

Remember and recall keep working while a job runs: they run on the web server's threads and
only wait for the store's short locks. Progress is read from the ledger, which the job writes
as it goes (a row per fact, before and after each edit). The jobs' records are kept
with the store (`job_log`): one a server acknowledged and did not finish runs on the next server
to start on the store, or within a minute on one already serving it.
"""
from __future__ import annotations

import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import ValidationError

from ..consolidation import ConsolidationPolicy
from ..errors import AgentMemError, InvalidInputError
from ..memory import Memory
from ..notes import ConsolidationReport, Decision
from ..validation import reasons, time as checked_time
from .errors import JobInterruptedError, JobNotFoundError, error_body
from .job_log import JobRequest, open_job_log
from .models import Job, JobProgress

log = logging.getLogger(__name__)

MAX_EVERY = timedelta(days=365)   # a schedule's longest period: threading's waits overflow beyond ~292 years of seconds
KEPT_FINISHED = 100  # finished jobs kept to report on: a schedule adds one every period, for as long as it runs
MAX_INTERRUPTED = 3  # runs of one job cut off by its server's end before it is failed: it may be what kills the server
ADOPT_EVERY_S = 60.0  # how often the worker looks for the jobs of servers that stopped, between jobs or idle
ID_LIKE = re.compile(r"[A-Za-z0-9_.:-]+")  # runs of the characters a note id is made of (validation.note_id)


class JobRunner:
    """Runs consolidation jobs one after another and keeps how each one went."""

    def __init__(self, memory: Memory, every: timedelta | None = None) -> None:
        """`every`: the schedule's period, a timedelta in (0, MAX_EVERY]; None for no schedule."""
        if every is not None and not (isinstance(every, timedelta) and timedelta(0) < every <= MAX_EVERY):
            raise InvalidInputError(f"a schedule's period is a timedelta above 0 and at most {MAX_EVERY.days} days, "
                                    f"got {every!r}")
        self.memory, self.every = memory, every
        self._log = open_job_log(memory.location, memory.path)
        self._kept: dict[str, dict[str, Any]] = {}  # of the jobs finished here: report and error, in memory only
        self._ledger_before: dict[str, set[tuple[Any, ...]]] = {}
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._pending: set[str] = set()  # the jobs queued here or running: what an adoption leaves alone
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        try:
            self._adopt()
        except Exception:
            self._log.close()
            raise
        self._worker = threading.Thread(target=self._work, name="agentmem-jobs", daemon=True)
        self._worker.start()
        self._timer = threading.Thread(target=self._tick, name="agentmem-schedule", daemon=True) if every else None
        if self._timer is not None:
            self._timer.start()

    def submit(self, policy: dict[str, Any] | None = None, dry_run: bool = False, at: datetime | None = None,
               scheduled: bool = False) -> Job:
        """Queue a job; a malformed policy is refused here, before anything is queued."""
        if policy is not None:
            try:
                ConsolidationPolicy.model_validate(policy)
            except ValidationError as exc:
                raise InvalidInputError(f"bad consolidation policy: {reasons(exc.errors())}") from None
        if at is not None:
            checked_time(at)  # a time out of range was accepted here and failed the job later
        job = Job(id=uuid.uuid4().hex[:16], status="queued", scheduled=scheduled,
                  created_at=datetime.now(timezone.utc), progress=JobProgress(stage="queued"))
        with self._pending_lock:  # before its record exists, so that an adoption never queues it twice
            self._pending.add(job.id)
        try:
            self._log.add(job, JobRequest(policy, dry_run, at))
        except BaseException:
            with self._pending_lock:
                self._pending.discard(job.id)
            raise
        self._queue.put(job.id)
        return job

    def get(self, job_id: str) -> Job:
        job = self._log.get(job_id)
        if job is None:
            raise JobNotFoundError(f"no job with id {job_id!r}")
        return self._shown([job])[0]

    def jobs(self) -> list[Job]:
        """The jobs of every server of this store, kept as `KEPT_FINISHED` says."""
        return self._shown(self._log.jobs())

    def _shown(self, jobs: list[Job]) -> list[Job]:
        """The records with what only this server knows: the report and error of a job it ran (without the notes
        forgotten since), a running job's progress."""
        kept = {job.id: entry for job in jobs if (entry := self._kept.get(job.id)) is not None}
        self._drop_forgotten(kept.values())
        shown = []
        for job in jobs:
            if job.id in kept:
                job = job.model_copy(update=kept[job.id])
            elif job.status == "running" and job.progress.stage == "consolidating":
                job = job.model_copy(update={"progress": self._progress(job)})
            shown.append(job)
        return shown

    def _drop_forgotten(self, kept: Iterable[dict[str, Any]]) -> None:
        """Take the notes forgotten since out of these kept reports, for good: a forget leaves no trace
        (`Memory.forget`), and it may come from anywhere (another process on the store, another replica), so the
        store is asked as the reports are handed out; one read of its ids (`Memory.known_ids`), not a lookup per
        decision, and no write waits for it."""
        reports = [entry for entry in kept if entry["report"] is not None and entry["report"].decisions]
        if not reports:
            return
        existing = self.memory.known_ids([d.note_id for entry in reports for d in entry["report"].decisions])
        for entry in reports:
            if gone := {d.note_id for d in entry["report"].decisions} - existing:
                entry["report"] = _without(entry["report"], gone)

    def close(self) -> None:
        """Stop taking jobs; a running one finishes (the ledger makes a killed one safe as well). Jobs still
        queued stay in the store for the next server."""
        self._stop.set()
        self._queue.put(None)
        self._worker.join(timeout=5)  # else the process ends with it, and the system frees the log's lock

    # ---- the worker ------------------------------------------------------------------------

    def _work(self) -> None:
        """Run the queued jobs in order, until `close`: the jobs still queued then stay in the store. A failure of the
        job log (a full disk) fails one job, not the worker. The log is closed here, after the last job."""
        adopt_at = time.monotonic() + ADOPT_EVERY_S
        try:
            while not self._stop.is_set():
                try:
                    job_id = self._queue.get(timeout=max(0.0, adopt_at - time.monotonic()))
                except queue.Empty:
                    job_id = ""
                if job_id is None or self._stop.is_set():
                    return
                try:
                    if job_id:
                        try:
                            self._run(job_id)
                        finally:  # a job whose record a failed write left unfinished is adopted again
                            with self._pending_lock:
                                self._pending.discard(job_id)
                    if time.monotonic() >= adopt_at:  # between jobs too: a busy server would never adopt
                        adopt_at = time.monotonic() + ADOPT_EVERY_S
                        self._adopt()
                        self._drop_forgotten(list(self._kept.values()))  # from reports nobody asks for too
                except Exception:
                    log.exception("consolidation job %s could not be run or recorded", job_id or "adoption")
        finally:
            try:
                self._log.close()
            except Exception:
                log.exception("the job log could not be closed; its lock goes with the process")

    def _adopt(self) -> None:
        """Queue the jobs of servers that stopped (and, at the start, the store's earlier ones), and this server's
        own that a failed write of their record left unfinished, in their order; a job whose runs were cut off
        `MAX_INTERRUPTED` times fails instead."""
        for job in self._log.adopt():
            with self._pending_lock:
                if job.id in self._pending:
                    continue
            update: dict[str, Any] = {"status": "queued", "started_at": None, "progress": JobProgress(stage="queued")}
            interrupted = job.status == "running"
            if interrupted and self._log.interruptions(job.id) + 1 >= MAX_INTERRUPTED:
                error = JobInterruptedError(f"its server stopped during each of its {MAX_INTERRUPTED} runs; "
                                            "it is not run again (the ledger kept what each did)")
                update = {"status": "failed", "finished_at": datetime.now(timezone.utc),
                          "progress": job.progress.model_copy(update={"stage": "done"}), "error": error_body(error)}
                self._keep(job.id, None, update["error"])
            if self._log.save(job.model_copy(update=update), interrupted) and update["status"] == "queued":
                with self._pending_lock:
                    self._pending.add(job.id)
                self._queue.put(job.id)

    def _run(self, job_id: str) -> None:
        request = self._log.request(job_id)  # failing, it leaves the job queued: the next adoption queues it again
        if request is None:  # adopted by another server while this one's lock was lost: that one runs it
            return
        try:
            policy, dry_run, at = request
            if not self._update(job_id, status="running", started_at=datetime.now(timezone.utc),
                                progress=JobProgress(stage="planning")):
                return  # another server adopted it meanwhile, and runs it
            planned = self.memory.plan(policy, at=at)
            total = sum(d.action != "skip" for d in planned)
            self._ledger_before[job_id] = self._ledger_rows()
            self._update(job_id, progress=JobProgress(stage="consolidating", total=total))
            report = self.memory.consolidate(policy, dry_run=dry_run, at=at)
        except AgentMemError as exc:
            self._fail(job_id, error_body(exc))
        except Exception as exc:  # a job must never take the worker down; the error stays visible on the job
            log.exception("consolidation job %s failed", job_id)
            self._fail(job_id, {"error": type(exc).__name__, "message": str(exc)})
        else:
            done = sum(d.outcome is not None for d in report.decisions)
            self._finish(job_id, status="succeeded", report=report, progress=JobProgress(stage="done", done=done, total=done))
        finally:
            self._ledger_before.pop(job_id, None)

    def _fail(self, job_id: str, error: dict[str, str]) -> None:
        """A failed job, unless the server is stopping: the store closed under it, and it is queued again for the
        next server."""
        if self._stop.is_set():
            self._update(job_id, status="queued", started_at=None, progress=JobProgress(stage="queued"))
            return
        progress = self._record(job_id).progress.model_copy(update={"stage": "done"})
        self._finish(job_id, status="failed", error=error, progress=progress)

    def _finish(self, job_id: str, report: ConsolidationReport | None = None, error: dict[str, str] | None = None,
                **outcome: Any) -> None:
        """The job's outcome and end time, then the dropping of the oldest finished jobs (submission order)."""
        self._keep(job_id, report, error)
        self._update(job_id, **outcome, report=report, error=error, finished_at=datetime.now(timezone.utc))
        self._log.keep_finished(KEPT_FINISHED)

    def _keep(self, job_id: str, report: ConsolidationReport | None, error: dict[str, str] | None) -> None:
        self._kept[job_id] = {"report": report, "error": error}
        if len(self._kept) > KEPT_FINISHED:  # the oldest, dropped from the log by then if not before
            del self._kept[next(iter(self._kept))]

    def _update(self, job_id: str, **changes: Any) -> bool:
        return self._log.save(self._record(job_id).model_copy(update=changes))

    def _record(self, job_id: str) -> Job:
        job = self._log.get(job_id)
        if job is None:  # only `_finish` drops a job, and only finished ones: the log was damaged
            raise JobNotFoundError(f"the record of job {job_id!r} is gone")
        return job

    def _ledger_rows(self) -> set[tuple[Any, ...]]:
        return {(e.note_id, e.edit_id, e.status, e.updated_at) for e in self.memory.ledger()}

    def _progress(self, job: Job) -> JobProgress:
        """Facts done so far: notes whose ledger rows changed since the job started editing."""
        before = self._ledger_before.get(job.id)
        if before is None:
            return job.progress
        touched = {row[0] for row in self._ledger_rows() - before}
        done = len(touched) if job.progress.total is None else min(len(touched), job.progress.total)
        return job.progress.model_copy(update={"done": done})

    def _tick(self) -> None:
        """Submit a job every `every`, unless the last scheduled one is still queued or running.

        Nothing ends the schedule but `close`: a failed submission is logged and tried again next period.
        """
        assert self.every is not None
        last: str | None = None
        while not self._stop.wait(self.every.total_seconds()):
            try:
                if last is None or self._finished(last):
                    last = self.submit(scheduled=True).id
            except Exception:
                log.exception("the consolidation schedule could not submit a job; it tries again in %s", self.every)

    def _finished(self, job_id: str) -> bool:
        """A job no longer kept (see KEPT_FINISHED) finished long ago."""
        job = self._log.get(job_id)
        return job is None or job.finished_at is not None


def _without(report: ConsolidationReport, gone: set[str]) -> ConsolidationReport:
    """The report without the decisions on the `gone` notes, and without the detail of a decision that names one
    ("newer note <id> says 'Lisbon'"). Its counts stay: they are what the job did, and name nothing."""
    def kept(decision: Decision) -> Decision:
        if gone.isdisjoint(ID_LIKE.findall(decision.detail)):
            return decision
        return decision.model_copy(update={"detail": ""})

    return report.model_copy(update={"decisions": [kept(d) for d in report.decisions if d.note_id not in gone]})

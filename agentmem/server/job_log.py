"""The server's consolidation jobs on disk: a restart neither forgets a job it acknowledged nor leaves one undone.

Each job's record (status, times, progress, the error's type) and the request that runs it are a
row of `jobs.sqlite3` in the memory's local folder. A job still queued, or cut off while running,
when its server stopped or died is run again by a server on that folder: the ledger makes a rerun
safe (no edit is lost or made twice). Several servers on one folder each own their jobs through a
lock file held for their life (the system frees it when a process dies); a server adopts the jobs
of a stopped server (which gives them up as it stops) and of every owner whose lock is free.

A job's report and error message stay in the memory of the server that ran it: they may name
facts, and a forgotten note's fact must not outlive it on disk (its ledger rows go with it). A job
finished before a restart still shows its status, times, progress and error type.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import filelock
from pydantic import ValidationError

from ..errors import StoreUnavailableError
from .models import Job

log = logging.getLogger(__name__)

FILE = "jobs.sqlite3"
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    job TEXT NOT NULL,
    request TEXT NOT NULL,
    interrupted INTEGER NOT NULL DEFAULT 0
)
"""
UNFINISHED = ("queued", "running")
IS_UNFINISHED = "status IN ('queued', 'running')"
NOBODY = ""  # the owner of the jobs a server gave up as it stopped: the next server takes them


class JobRequest(NamedTuple):
    """What a job runs: `Memory.consolidate`'s arguments."""

    policy: dict[str, Any] | None
    dry_run: bool
    at: datetime | None

    def to_json(self) -> str:
        return json.dumps({"policy": self.policy, "dry_run": self.dry_run,
                           "at": None if self.at is None else self.at.isoformat()})

    @classmethod
    def from_json(cls, text: str) -> JobRequest:
        fields = json.loads(text)
        at = None if fields["at"] is None else datetime.fromisoformat(fields["at"])
        return cls(fields["policy"], fields["dry_run"], at)


class JobLog:
    """The job records of the servers on one folder; this server owns the jobs it adds or adopts."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.owner = folder, uuid.uuid4().hex
        self._lock = threading.Lock()  # one connection, shared by the web server's threads and the worker
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._held = self._hold_lock_file()
        except (OSError, filelock.Timeout) as exc:
            raise StoreUnavailableError(f"cannot keep the server's jobs in {folder}: {exc}") from exc
        try:
            self._db = sqlite3.connect(folder / FILE, check_same_thread=False, isolation_level=None, timeout=30)
        except sqlite3.Error as exc:
            self._give_up_lock_file()
            raise StoreUnavailableError(f"cannot keep the server's jobs in {folder / FILE}: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(SCHEMA)
        except sqlite3.Error as exc:
            self._db.close()
            self._give_up_lock_file()
            raise StoreUnavailableError(f"cannot keep the server's jobs in {folder / FILE}: {exc}") from exc

    def _lock_path(self, owner: str) -> Path:
        return self.folder / f"jobs-{owner}.lock"

    def _hold_lock_file(self) -> filelock.FileLock:
        """This server's lock file, locked before another server can see it: made under a name no other
        server looks at, then renamed (the lock stays with the file), so none can take it for a stopped one."""
        hidden = self.folder / f".jobs-{self.owner}.lock.new"
        held = filelock.FileLock(str(hidden), thread_local=False)
        held.acquire(timeout=0)
        try:
            os.rename(hidden, self._lock_path(self.owner))
        except OSError:
            held.release()
            hidden.unlink(missing_ok=True)
            raise
        return held

    @contextmanager
    def _database(self) -> Iterator[sqlite3.Connection]:
        """The connection, one thread at a time; its errors (a full disk, a damaged file) typed."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise StoreUnavailableError(f"the server's jobs in {self.folder / FILE}: {exc}") from exc

    def adopt(self) -> list[Job]:
        """Take over the jobs of the servers that are gone; returns those unfinished, oldest first (an unreadable
        record is logged and left alone)."""
        taken: list[tuple[int, str, str, str]] = []
        for path in self.folder.glob("jobs-*.lock"):
            owner = path.name.removeprefix("jobs-").removesuffix(".lock")
            if owner != self.owner:
                taken += self._adopt_if_gone(owner, path)
        with self._database() as db:
            taken += db.execute("UPDATE jobs SET owner = ? WHERE owner = ? RETURNING seq, id, status, job",
                                (self.owner, NOBODY)).fetchall()
        unfinished = sorted(row for row in taken if row[2] in UNFINISHED)
        return [job for _, job_id, _, text in unfinished if (job := _job(job_id, text)) is not None]

    def _adopt_if_gone(self, owner: str, path: Path) -> list[tuple[int, str, str, str]]:
        gone = filelock.FileLock(str(path), thread_local=False)
        try:
            gone.acquire(timeout=0)
        except filelock.Timeout:  # its server is running
            return []
        try:
            with self._database() as db:
                taken = db.execute("UPDATE jobs SET owner = ? WHERE owner = ? RETURNING seq, id, status, job",
                                   (self.owner, owner)).fetchall()
            path.unlink(missing_ok=True)  # while locked: a server that opens it after finds it gone
            return taken
        finally:
            gone.release()

    def interrupted(self, job_id: str) -> int:
        """Count one more run of the job that its server's end cut off; returns how many."""
        with self._database() as db:
            (count,) = db.execute("UPDATE jobs SET interrupted = interrupted + 1 WHERE id = ? RETURNING interrupted",
                                  (job_id,)).fetchone()
        return count

    def add(self, job: Job, request: JobRequest) -> None:
        with self._database() as db:
            db.execute("INSERT INTO jobs(id, owner, status, job, request) VALUES (?, ?, ?, ?, ?)",
                       (job.id, self.owner, job.status, _record(job), request.to_json()))

    def save(self, job: Job) -> None:
        with self._database() as db:
            db.execute("UPDATE jobs SET status = ?, job = ? WHERE id = ?", (job.status, _record(job), job.id))

    def request(self, job_id: str) -> JobRequest:
        with self._database() as db:
            (text,) = db.execute("SELECT request FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRequest.from_json(text)

    def get(self, job_id: str) -> Job | None:
        with self._database() as db:
            row = db.execute("SELECT job FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(job_id, row[0])

    def jobs(self) -> list[Job]:
        """Every server's jobs on this folder, in submission order."""
        with self._database() as db:
            rows = db.execute("SELECT id, job FROM jobs ORDER BY seq").fetchall()
        return [job for job_id, text in rows if (job := _job(job_id, text)) is not None]

    def keep_finished(self, kept: int) -> None:
        """Drop all but the `kept` latest finished jobs."""
        with self._database() as db:
            db.execute(f"DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE NOT {IS_UNFINISHED}"
                       " ORDER BY seq DESC LIMIT -1 OFFSET ?)", (kept,))

    def close(self) -> None:
        """Give up this server's unfinished jobs to the next server on this folder, and its lock file."""
        try:
            with self._database() as db:
                db.execute(f"UPDATE jobs SET owner = ? WHERE owner = ? AND {IS_UNFINISHED}", (NOBODY, self.owner))
        finally:  # if the hand-over fails, the jobs go with the lock file, to the next server all the same
            self._db.close()
            self._give_up_lock_file()

    def _give_up_lock_file(self) -> None:
        self._lock_path(self.owner).unlink(missing_ok=True)
        self._held.release()


def _record(job: Job) -> str:
    """What the disk keeps of a job: not its report, and of an error only its type (see the module doc)."""
    error = None if job.error is None else {"error": job.error["error"], "message": ""}
    return job.model_copy(update={"error": error}).model_dump_json(exclude={"report"})


def _job(job_id: str, text: str) -> Job | None:
    try:
        return Job.model_validate_json(text)
    except ValidationError as exc:  # written by another version, or damaged: not a reason to stop serving
        log.warning("the record of job %s cannot be read, and is left alone: %s", job_id, exc)
        return None

"""The server's consolidation jobs on disk: a restart neither forgets a job it acknowledged nor leaves one undone.

Each job's record (status, times, progress, error) and the request that runs it are a row of
`jobs.sqlite3` in the memory's local folder. A job still queued, or cut off while running, when
its server stopped or died is run again by the next server to start on that folder: the ledger
makes a rerun safe (no edit is lost or made twice). Several servers on one folder each own their
jobs through a lock file held for their life (the system frees it when a process dies), and a
server adopts the jobs of every owner whose lock is free.

A job's report stays in the memory of the server that ran it: it names facts, and a forgotten
note's fact must not outlive it on disk (its ledger rows go with it). A job finished before a
restart still shows its status, times and progress.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import filelock

from ..errors import StoreUnavailableError
from .models import Job

FILE = "jobs.sqlite3"
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    job TEXT NOT NULL,
    request TEXT NOT NULL
)
"""
UNFINISHED = ("queued", "running")


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
        self._held = filelock.FileLock(str(self._lock_path(self.owner)), thread_local=False)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._held.acquire(timeout=0)
            self._db = sqlite3.connect(folder / FILE, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailableError(f"cannot keep the server's jobs in {folder / FILE}: {exc}") from exc
        self._lock = threading.Lock()  # one connection, shared by the web server's threads and the worker

    def _lock_path(self, owner: str) -> Path:
        return self.folder / f"jobs-{owner}.lock"

    def adopt(self) -> list[Job]:
        """Take over the jobs of the servers that are gone; returns this server's unfinished jobs, oldest first."""
        with self._lock:
            owners = {owner for (owner,) in self._db.execute(
                f"SELECT DISTINCT owner FROM jobs WHERE status IN {UNFINISHED}")}
        owners |= {path.name.removeprefix("jobs-").removesuffix(".lock") for path in self.folder.glob("jobs-*.lock")}
        for owner in owners - {self.owner}:
            if self._gone(owner):
                with self._lock:
                    self._db.execute("UPDATE jobs SET owner = ? WHERE owner = ?", (self.owner, owner))
        with self._lock:
            rows = self._db.execute(f"SELECT job FROM jobs WHERE owner = ? AND status IN {UNFINISHED} ORDER BY seq",
                                    (self.owner,)).fetchall()
        return [Job.model_validate_json(job) for (job,) in rows]

    def _gone(self, owner: str) -> bool:
        """Whether the server that owned `owner`'s jobs has stopped (its lock file, if any, is removed)."""
        path = self._lock_path(owner)
        held = filelock.FileLock(str(path), thread_local=False)
        try:
            held.acquire(timeout=0)
        except filelock.Timeout:  # its server is running
            return False
        held.release()
        path.unlink(missing_ok=True)
        return True

    def add(self, job: Job, request: JobRequest) -> None:
        with self._lock:
            self._db.execute("INSERT INTO jobs(id, owner, status, job, request) VALUES (?, ?, ?, ?, ?)",
                             (job.id, self.owner, job.status, _record(job), request.to_json()))

    def save(self, job: Job) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET status = ?, job = ? WHERE id = ?", (job.status, _record(job), job.id))

    def request(self, job_id: str) -> JobRequest:
        with self._lock:
            (text,) = self._db.execute("SELECT request FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRequest.from_json(text)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT job FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else Job.model_validate_json(row[0])

    def jobs(self) -> list[Job]:
        """Every server's jobs on this folder, in submission order."""
        with self._lock:
            rows = self._db.execute("SELECT job FROM jobs ORDER BY seq").fetchall()
        return [Job.model_validate_json(job) for (job,) in rows]

    def keep_finished(self, kept: int) -> None:
        """Drop all but the `kept` latest finished jobs."""
        with self._lock:
            self._db.execute(f"DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE status NOT IN {UNFINISHED}"
                             " ORDER BY seq DESC LIMIT -1 OFFSET ?)", (kept,))

    def close(self) -> None:
        """Give the jobs up: any left unfinished go to the next server to start on this folder."""
        with self._lock:
            self._db.close()
        self._held.release()
        self._lock_path(self.owner).unlink(missing_ok=True)


def _record(job: Job) -> str:
    return job.model_dump_json(exclude={"report"})

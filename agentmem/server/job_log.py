"""The server's consolidation jobs, kept with the store: a restart neither forgets a job it acknowledged nor
leaves one undone.

Each job's record (status, times, progress, the error's type) and the request that runs it are a
row of `consolidation_jobs`: in `jobs.sqlite3` in the folder of a SQLite store (`FolderJobLog`), in
the database of a PostgreSQL store (`DatabaseJobLog`), so that every replica of it, on any host,
lists and answers for every job. A job still queued, or cut off while running, when its server
stopped or died is run again by another server of the store: the ledger makes a rerun safe (no
edit is lost or made twice).

Each server owns the jobs it adds or adopts through a lock held for its life, which the system
frees when its process dies: a lock file in the folder, or a session-level advisory lock on its
own connection to the database. A server adopts the jobs of a stopped server (which gives them up
as it stops) and of every owner whose lock is free.

A job's report and error message stay in the memory of the server that ran it: they may name
facts, and a forgotten note's fact must not outlive it in the store (its ledger rows go with it).
A job finished before a restart still shows its status, times, progress and error type.
"""
from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import filelock
import psycopg
from pydantic import ValidationError

from ..errors import StoreUnavailableError
from ..stores.ledger_connection import to_postgres
from ..stores.location import is_postgres_url
from ..stores.postgres import direct_connection, redacted
from .models import Job

log = logging.getLogger(__name__)

FILE = "jobs.sqlite3"
SCHEMA = """
CREATE TABLE IF NOT EXISTS consolidation_jobs (
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
RELOCK_WAIT_S = 10  # how long a server that lost its connection waits for another that is adopting its jobs
TAKEN = "seq, id, status, job"  # what an adoption returns of each job it takes
Row = Sequence[Any]


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


def open_job_log(location: str | Path, folder: Path) -> JobLog:
    """The job log of the store at `location`: in its database for a PostgreSQL URL, else in `folder`."""
    return DatabaseJobLog(str(location)) if is_postgres_url(location) else FolderJobLog(folder)


class JobLog(ABC):
    """The job records of the servers of one store; this server owns the jobs it adds or adopts. Subclasses say
    where the records are and how a server's lock is held and found free."""

    owner: str

    @abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one statement (`?` placeholders), one thread at a time; its rows. Failures are StoreUnavailableError."""

    @abstractmethod
    def _gone_owners(self) -> Iterator[str]:
        """The other owners whose server is gone, each yielded while this server holds its lock, so that no other
        server takes its jobs at the same time."""

    @abstractmethod
    def _release(self) -> None:
        """Close the connection and free this server's lock."""

    def adopt(self) -> list[Job]:
        """Take over the jobs of the servers that are gone; returns those unfinished, oldest first (an unreadable
        record is logged and left alone)."""
        taken: list[Row] = []
        for owner in self._gone_owners():
            taken += self._execute(f"UPDATE consolidation_jobs SET owner = ? WHERE owner = ? RETURNING {TAKEN}",
                                   (self.owner, owner))
        taken += self._execute(f"UPDATE consolidation_jobs SET owner = ? WHERE owner = ? RETURNING {TAKEN}",
                               (self.owner, NOBODY))
        unfinished = sorted(tuple(row) for row in taken if row[2] in UNFINISHED)
        return [job for _, job_id, _, text in unfinished if (job := _job(job_id, text)) is not None]

    def interrupted(self, job_id: str) -> int:
        """Count one more run of the job that its server's end cut off; returns how many."""
        rows = self._execute("UPDATE consolidation_jobs SET interrupted = interrupted + 1 WHERE id = ?"
                             " RETURNING interrupted", (job_id,))
        return int(rows[0][0])

    def add(self, job: Job, request: JobRequest) -> None:
        self._execute("INSERT INTO consolidation_jobs(id, owner, status, job, request) VALUES (?, ?, ?, ?, ?)",
                      (job.id, self.owner, job.status, _record(job), request.to_json()))

    def save(self, job: Job) -> None:
        """Write the record of a job this server owns (one another server adopted is its to write)."""
        self._execute("UPDATE consolidation_jobs SET status = ?, job = ? WHERE id = ? AND owner = ?",
                      (job.status, _record(job), job.id, self.owner))

    def request(self, job_id: str) -> JobRequest | None:
        """What the job runs; None when this server no longer owns it (another adopted it)."""
        rows = self._execute("SELECT request FROM consolidation_jobs WHERE id = ? AND owner = ?", (job_id, self.owner))
        return JobRequest.from_json(rows[0][0]) if rows else None

    def get(self, job_id: str) -> Job | None:
        rows = self._execute("SELECT job FROM consolidation_jobs WHERE id = ?", (job_id,))
        return _job(job_id, rows[0][0]) if rows else None

    def jobs(self) -> list[Job]:
        """Every server's jobs on this store, in submission order."""
        rows = self._execute("SELECT id, job FROM consolidation_jobs ORDER BY seq")
        return [job for job_id, text in rows if (job := _job(job_id, text)) is not None]

    def keep_finished(self, kept: int) -> None:
        """Drop all but the `kept` latest finished jobs."""
        self._execute(f"DELETE FROM consolidation_jobs WHERE NOT {IS_UNFINISHED} AND seq <= (SELECT seq FROM"
                      f" consolidation_jobs WHERE NOT {IS_UNFINISHED} ORDER BY seq DESC LIMIT 1 OFFSET ?)", (kept,))

    def close(self) -> None:
        """Give up this server's unfinished jobs to the next server of the store, and its lock."""
        try:
            self._execute(f"UPDATE consolidation_jobs SET owner = ? WHERE owner = ? AND {IS_UNFINISHED}",
                          (NOBODY, self.owner))
        finally:  # if the hand-over fails, the jobs go with the lock, to the next server all the same
            self._release()


class FolderJobLog(JobLog):
    """The records in `jobs.sqlite3` in a folder; each server's lock is a file `jobs-<owner>.lock` beside it."""

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
            self._db.execute("BEGIN IMMEDIATE")  # two servers starting at once rename the old table once
            if self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs'").fetchone():
                self._db.execute("ALTER TABLE jobs RENAME TO consolidation_jobs")  # as the previous release named it
            self._db.execute(SCHEMA)
            self._db.execute("COMMIT")
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

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:  # a full disk, a damaged file
                raise StoreUnavailableError(f"the server's jobs in {self.folder / FILE}: {exc}") from exc

    def _gone_owners(self) -> Iterator[str]:
        """Owners whose lock file is free; each file is deleted once its jobs are taken, while still locked, so a
        server that opens it after finds it gone."""
        for path in self.folder.glob("jobs-*.lock"):
            owner = path.name.removeprefix("jobs-").removesuffix(".lock")
            if owner == self.owner:
                continue
            gone = filelock.FileLock(str(path), thread_local=False)
            try:
                gone.acquire(timeout=0)
            except filelock.Timeout:  # its server is running
                continue
            try:
                yield owner
                path.unlink(missing_ok=True)
            finally:
                gone.release()

    def _release(self) -> None:
        self._db.close()
        self._give_up_lock_file()

    def _give_up_lock_file(self) -> None:
        self._lock_path(self.owner).unlink(missing_ok=True)
        self._held.release()


class DatabaseJobLog(JobLog):
    """The records in the PostgreSQL store's own database (its schema makes the table, `stores.postgres`); each
    server's lock is a session-level advisory lock keyed by its owner number, on a connection of its own."""

    def __init__(self, url: str) -> None:
        self.url, self.owner = url, ""
        self._lock = threading.Lock()  # one connection, shared by the web server's threads and the worker
        self._conn = self._connect()

    def _connect(self) -> psycopg.Connection:
        """A connection holding this server's lock: a new owner number's at the start, the same one's again after
        the connection was lost (jobs another server adopted meanwhile are its now: `request` and `save` see it).
        Another server holds the number only to adopt its jobs, for one statement."""
        conn = direct_connection(self.url)
        try:
            if not self.owner:
                while not conn.execute("SELECT pg_try_advisory_lock(%s)", (owner := _owner_number(),)).fetchone()[0]:
                    pass  # held by another server's number
                self.owner = str(owner)
            elif not conn.execute("SELECT pg_try_advisory_lock(%s)", (int(self.owner),)).fetchone()[0]:
                conn.execute(f"SET lock_timeout = '{RELOCK_WAIT_S}s'")
                conn.execute("SELECT pg_advisory_lock(%s)", (int(self.owner),))
                conn.execute("RESET lock_timeout")
        except psycopg.Error as exc:
            conn.close()
            raise self._unavailable(exc) from exc
        return conn

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            try:
                if self._conn.closed or self._conn.broken:  # lost (a server restart, a network failure), lock and all
                    self._conn = self._connect()
                cursor = self._conn.execute(to_postgres(sql), params)
                return cursor.fetchall() if cursor.description else []
            except psycopg.Error as exc:
                raise self._unavailable(exc) from exc

    def _unavailable(self, exc: psycopg.Error) -> StoreUnavailableError:
        return StoreUnavailableError(f"the server's jobs in the store at {redacted(self.url)}: {str(exc).strip()}")

    def _gone_owners(self) -> Iterator[str]:
        """Owners of unfinished jobs whose advisory lock is free."""
        owners = self._execute(f"SELECT DISTINCT owner FROM consolidation_jobs WHERE {IS_UNFINISHED}"
                               " AND owner NOT IN (?, ?)", (self.owner, NOBODY))
        for (owner,) in owners:
            if not owner.isdigit():  # not a server's number: no server can own it
                continue
            if not self._execute("SELECT pg_try_advisory_lock(?)", (int(owner),))[0][0]:
                continue  # its server is running
            try:
                yield owner
            finally:
                self._execute("SELECT pg_advisory_unlock(?)", (int(owner),))

    def _release(self) -> None:
        self._conn.close()  # the session's locks end with it


def _owner_number() -> int:
    """A new server's number: an advisory lock key (a positive bigint), random so that no two servers share one."""
    return random.SystemRandom().randrange(1, 2**63)


def _record(job: Job) -> str:
    """What the store keeps of a job: not its report, and of an error only its type (see the module doc)."""
    error = None if job.error is None else {"error": job.error["error"], "message": ""}
    return job.model_copy(update={"error": error}).model_dump_json(exclude={"report"})


def _job(job_id: str, text: str) -> Job | None:
    try:
        return Job.model_validate_json(text)
    except ValidationError as exc:  # written by another version, or damaged: not a reason to stop serving
        log.warning("the record of job %s cannot be read, and is left alone: %s", job_id, exc)
        return None

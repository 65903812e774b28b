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
as it stops) and of every owner whose lock is free; and its own unfinished jobs that it is not
running, such as one whose record a failed write left behind.

A job's report and error message stay in the memory of the server that ran it: they may name
facts, and a forgotten note's fact must not outlive it in the store (its ledger rows go with it). Nor in that
memory: a report handed out leaves out the notes forgotten since, from wherever (`JobRunner`).
A job finished before a restart still shows its status, times, progress and error type.
"""
from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import filelock
import psycopg
from pydantic import ValidationError

from ..errors import StoreClosedError, StoreUnavailableError
from ..stores.ledger_connection import to_postgres
from ..stores.location import is_postgres_url
from ..stores.postgres_connection import direct_connection, redacted, typed_error
from ..stores.postgres_schema import JOBS_SCHEMA
from .models import Job

log = logging.getLogger(__name__)

FILE = "jobs.sqlite3"
UNFINISHED = ("queued", "running")
IS_UNFINISHED = "status IN ('queued', 'running')"
NOBODY = ""  # the owner of the jobs a server gave up as it stopped: the next server takes them
Row = Sequence[Any]
OWNER = object()  # in a statement's parameters: this server's owner, read as the statement runs (a lost connection
# may give it a new one on the way)


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
    """The job log of the store at `location`: in its database for a PostgreSQL URL, else in `folder`. A PostgreSQL
    store's jobs that the previous release kept in this host's `folder` move into the database."""
    if not is_postgres_url(location):
        return FolderJobLog(folder)
    in_database = DatabaseJobLog(str(location))
    if (folder / FILE).exists():
        try:
            in_database.take_over(FolderJobLog(folder))
        except BaseException:
            in_database.close()
            raise
    return in_database


class JobLog(ABC):
    """The job records of the servers of one store; this server owns the jobs it adds or adopts. Subclasses say
    where the records are and how a server's lock is held and found free."""

    owner: str

    @abstractmethod
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one statement (`?` placeholders, `OWNER` among the parameters for this server's owner), one thread at
        a time; its rows. Failures are typed errors."""

    @abstractmethod
    def _other_owners(self) -> list[str]:
        """The owners, other than this server and NOBODY, that may have jobs to adopt."""

    @abstractmethod
    def _take_if_gone(self, owner: str) -> None:
        """Make the jobs of `owner` this server's, if its server is gone (its lock is free)."""

    @abstractmethod
    def _release(self) -> None:
        """Close the connection and free this server's lock."""

    def _bound(self, params: Sequence[Any]) -> list[Any]:
        return [self.owner if value is OWNER else value for value in params]

    def adopt(self) -> list[Job]:
        """Take over the jobs of the servers that are gone; returns the unfinished jobs this server now owns, its own
        included, oldest first (the caller leaves out those it is running or has queued). An unreadable record is
        logged and left alone."""
        for owner in self._other_owners():
            self._take_if_gone(owner)
        self._execute("UPDATE consolidation_jobs SET owner = ? WHERE owner = ?", (OWNER, NOBODY))
        owned = self._execute(f"SELECT id, job FROM consolidation_jobs WHERE owner = ? AND {IS_UNFINISHED}"
                              " ORDER BY seq", (OWNER,))
        return [job for job_id, text in owned if (job := _job(job_id, text)) is not None]

    def interruptions(self, job_id: str) -> int:
        """How many runs of the job its server's end cut off (counted by `save(..., interrupted=True)`)."""
        rows = self._execute("SELECT interrupted FROM consolidation_jobs WHERE id = ?", (job_id,))
        return int(rows[0][0]) if rows else 0

    def add(self, job: Job, request: JobRequest) -> None:
        self._execute("INSERT INTO consolidation_jobs(id, owner, status, job, request) VALUES (?, ?, ?, ?, ?)",
                      (job.id, OWNER, job.status, _record(job), request.to_json()))

    def save(self, job: Job, interrupted: bool = False) -> bool:
        """Write the record of a job this server owns, counting one more cut-off run with `interrupted`; False for a
        job another server adopted (its to write and run)."""
        saved = self._execute("UPDATE consolidation_jobs SET status = ?, job = ?, interrupted = interrupted + ?"
                              " WHERE id = ? AND owner = ? RETURNING id",
                              (job.status, _record(job), int(interrupted), job.id, OWNER))
        if not saved:
            log.warning("job %s is no longer this server's (another one adopted it): its record is left as it was",
                        job.id)
        return bool(saved)

    def request(self, job_id: str) -> JobRequest | None:
        """What the job runs; None when this server does not own it (another one adopted it)."""
        rows = self._execute("SELECT request FROM consolidation_jobs WHERE id = ? AND owner = ?", (job_id, OWNER))
        return JobRequest.from_json(rows[0][0]) if rows else None

    def get(self, job_id: str) -> Job | None:
        rows = self._execute("SELECT job FROM consolidation_jobs WHERE id = ?", (job_id,))
        return _job(job_id, rows[0][0]) if rows else None

    def jobs(self) -> list[Job]:
        """Every server's jobs on this store, in submission order."""
        rows = self._execute("SELECT id, job FROM consolidation_jobs ORDER BY seq")
        return [job for job_id, text in rows if (job := _job(job_id, text)) is not None]

    def remove(self, job_id: str) -> None:
        self._execute("DELETE FROM consolidation_jobs WHERE id = ?", (job_id,))

    def keep_finished(self, kept: int) -> None:
        """Drop all but the `kept` latest finished jobs."""
        self._execute(f"DELETE FROM consolidation_jobs WHERE NOT {IS_UNFINISHED} AND seq <= (SELECT seq FROM"
                      f" consolidation_jobs WHERE NOT {IS_UNFINISHED} ORDER BY seq DESC LIMIT 1 OFFSET ?)", (kept,))

    def close(self) -> None:
        """Give up this server's unfinished jobs to the next server of the store, and its lock."""
        try:
            self._execute(f"UPDATE consolidation_jobs SET owner = ? WHERE owner = ? AND {IS_UNFINISHED}",
                          (NOBODY, OWNER))
        finally:  # if the hand-over fails, the jobs go with the lock, to the next server all the same
            self._release()


class FolderJobLog(JobLog):
    """The records in `jobs.sqlite3` in a folder; each server's lock is a file `jobs-<owner>.lock` beside it."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.owner = folder, uuid.uuid4().hex
        self._lock = threading.Lock()  # one connection, shared by the web server's threads and the worker
        self._closed = False
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
            self._db.execute("BEGIN IMMEDIATE")  # servers starting at once bring the previous release's table once
            self._db.execute(JOBS_SCHEMA)
            if self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'").fetchone():
                self._db.execute("INSERT OR IGNORE INTO consolidation_jobs(id, owner, status, job, request,"
                                 " interrupted) SELECT id, owner, status, job, request, interrupted FROM jobs"
                                 " ORDER BY seq")
                self._db.execute("DROP TABLE jobs")
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
            if self._closed:
                raise StoreClosedError("the server's job log is closed")
            try:
                return self._db.execute(sql, self._bound(params)).fetchall()
            except sqlite3.Error as exc:  # a full disk, a damaged file, a closed log
                raise StoreUnavailableError(f"the server's jobs in {self.folder / FILE}: {exc}") from exc

    def _other_owners(self) -> list[str]:
        """Those with a lock file, and those with unfinished jobs and none (a server whose hand-over failed as it
        stopped: it deletes its file all the same)."""
        locked = {path.name.removeprefix("jobs-").removesuffix(".lock") for path in self.folder.glob("jobs-*.lock")}
        listed = {owner for (owner,) in self._execute(f"SELECT DISTINCT owner FROM consolidation_jobs"
                                                      f" WHERE {IS_UNFINISHED}")}
        return sorted((locked | listed) - {self.owner, NOBODY})

    def _take_if_gone(self, owner: str) -> None:
        """Its jobs if its lock file is free (or missing: it is made); the file is deleted once they are taken,
        while still locked, so a server that opens it after finds it gone. No new server can take an owner's name:
        each is a new random one, its file locked before it is visible."""
        path = self._lock_path(owner)
        gone = filelock.FileLock(str(path), thread_local=False)
        try:
            gone.acquire(timeout=0)
        except filelock.Timeout:  # its server is running
            return
        try:
            self._execute("UPDATE consolidation_jobs SET owner = ? WHERE owner = ?", (OWNER, owner))
            path.unlink(missing_ok=True)
        finally:
            gone.release()

    def _release(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()
        self._give_up_lock_file()

    def _give_up_lock_file(self) -> None:
        self._lock_path(self.owner).unlink(missing_ok=True)
        self._held.release()


OWNER_LOCKS = 0x61676D3  # the first key of every server's advisory lock (`pg_advisory_lock(int, int)`): a key space
MAX_OWNER = 2**31 - 1  # of its own, apart from the store's single-key locks; the second key is the owner's number
RECONNECT_AFTER_S = 5.0  # after a failed connection attempt, calls fail at once for this long


class DatabaseJobLog(JobLog):
    """The records in the PostgreSQL store's own database (its schema makes the table, `stores.postgres`); each
    server's lock is a session-level advisory lock keyed by its owner number, on a connection of its own."""

    def __init__(self, url: str) -> None:
        self.url, self.owner = url, ""
        self._lock = threading.Lock()  # one connection, shared by the web server's threads and the worker
        self._conn: psycopg.Connection | None = None
        self._closed, self._connect_again_at = False, 0.0
        self._earlier: set[str] = set()  # this server's numbers before, whose jobs a failed move left there
        self._connect()

    def _connect(self) -> None:
        """Connect, holding this server's lock: a new owner number's at the start. After a lost connection, the
        same number's again if it is free, else (the server has not yet seen the old session end) a new number's,
        with the jobs the old one still owns; jobs another server adopted meanwhile are its now."""
        if time.monotonic() < self._connect_again_at:
            raise StoreUnavailableError(f"the server's jobs in the store at {redacted(self.url)} cannot be reached;"
                                        f" trying again within {RECONNECT_AFTER_S:.0f} s")
        try:
            conn = direct_connection(self.url)
        except StoreUnavailableError:
            self._connect_again_at = time.monotonic() + RECONNECT_AFTER_S
            raise
        try:
            owner = self.owner if self.owner and _locked(conn, self.owner) else _new_owner(conn)
            earlier = (self._earlier | {self.owner}) - {owner, NOBODY}
            if earlier:  # numbers whose sessions linger: no other server adopts their jobs
                conn.execute(f"UPDATE consolidation_jobs SET owner = %s WHERE owner = ANY(%s) AND {IS_UNFINISHED}",
                             (owner, list(earlier)))
        except psycopg.Error as exc:
            conn.close()
            self._earlier |= {self.owner} - {NOBODY}  # a failed move is made again by the next connection
            self._connect_again_at = time.monotonic() + RECONNECT_AFTER_S
            raise self._typed(exc) from exc
        self._conn, self.owner, self._earlier = conn, owner, set()

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            if self._closed:
                raise StoreClosedError("the server's job log is closed")
            if self._conn is None:
                self._connect()
            try:
                cursor = self._conn.execute(to_postgres(sql), self._bound(params))
                return cursor.fetchall() if cursor.description else []
            except psycopg.Error as exc:
                if self._conn.closed or self._conn.broken:  # lost (a server restart, a network failure), lock and all
                    self._conn.close()
                    self._conn = None  # the next call connects again
                raise self._typed(exc) from exc

    def _typed(self, exc: psycopg.Error) -> Exception:
        return typed_error(exc, f"{redacted(self.url)} (the server's jobs)")

    def _other_owners(self) -> list[str]:
        rows = self._execute(f"SELECT DISTINCT owner FROM consolidation_jobs WHERE {IS_UNFINISHED}"
                             " AND owner NOT IN (?, ?)", (OWNER, NOBODY))
        return [owner for (owner,) in rows if _owner_number(owner) is not None]

    def _take_if_gone(self, owner: str) -> None:
        """One statement: its lock, tried for this statement's transaction only, then its jobs. A lock held by a
        server that is running, or connecting again, keeps them out."""
        self._execute("UPDATE consolidation_jobs SET owner = ? WHERE owner = ?"
                      " AND pg_try_advisory_xact_lock(?::int, ?::int)",
                      (OWNER, owner, OWNER_LOCKS, _owner_number(owner)))

    def take_over(self, folder_log: FolderJobLog) -> None:
        """Move the unfinished jobs of servers that kept them in a folder into the database, for this store's
        servers to adopt; closes `folder_log`. Run twice (a crash between the two writes), a job moves once."""
        try:
            for job in folder_log.adopt():
                request = folder_log.request(job.id)
                if request is not None:
                    self._execute("INSERT INTO consolidation_jobs(id, owner, status, job, request, interrupted)"
                                  " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                                  (job.id, NOBODY, job.status, _record(job), request.to_json(),
                                   folder_log.interruptions(job.id)))
                folder_log.remove(job.id)
        finally:
            folder_log.close()

    def _release(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()  # the session's locks end with it


def _owner_number(owner: str) -> int | None:
    return int(owner) if owner.isascii() and owner.isdigit() and 0 < int(owner) <= MAX_OWNER else None


def _locked(conn: psycopg.Connection, owner: str) -> bool:
    return conn.execute("SELECT pg_try_advisory_lock(%s::int, %s::int)", (OWNER_LOCKS, int(owner))).fetchone()[0]


def _new_owner(conn: psycopg.Connection) -> str:
    """A number no running server holds, its lock taken: random, so that two servers seldom try the same."""
    while not _locked(conn, owner := str(random.SystemRandom().randint(1, MAX_OWNER))):
        pass
    return owner


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

"""The server's job records in the store: adopted from servers that are gone, never from running ones, and no facts;
in a folder for a SQLite store, in the database (shared by every host) for a PostgreSQL one."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agentmem import ConsolidationReport, Decision, Fact, StoreClosedError, StoreUnavailableError
from agentmem.server import job_log
from agentmem.server.job_log import FILE, OWNER_LOCKS, DatabaseJobLog, FolderJobLog, JobRequest, open_job_log
from agentmem.server.models import Job, JobProgress
from agentmem.stores.postgres import PostgresNoteGraph

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
REQUEST = JobRequest({"min_recalls": 0}, False, NOW)


OLD_TABLE = ("CREATE TABLE jobs (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, owner TEXT NOT NULL,"
             " status TEXT NOT NULL, job TEXT NOT NULL, request TEXT NOT NULL, interrupted INTEGER NOT NULL DEFAULT 0)")


def queued(job_id: str) -> Job:
    return Job(id=job_id, status="queued", created_at=NOW, progress=JobProgress(stage="queued"))


def eventually(condition: Callable[[], Any], timeout: float = 30) -> Any:
    """What `condition` returns once it is truthy, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.05)
    return found


@pytest.fixture(params=["folder", "postgres"])
def store(request, tmp_path):
    """Where a store's job log is: a folder, or the database of a PostgreSQL store (its tables made)."""
    if request.param == "folder":
        return tmp_path
    url = request.getfixturevalue("postgres_url")
    PostgresNoteGraph(url).close()
    return url


def test_a_store_url_keeps_its_jobs_in_its_database_and_a_folder_in_the_folder(tmp_path, postgres_url):
    PostgresNoteGraph(postgres_url).close()
    in_database = open_job_log(postgres_url, tmp_path / "this-host")
    in_database.add(queued("a"), REQUEST)
    another_host = open_job_log(postgres_url, tmp_path / "another-host")
    assert isinstance(in_database, DatabaseJobLog) and [job.id for job in another_host.jobs()] == ["a"]
    assert not (tmp_path / "this-host").exists()
    in_database.close()
    another_host.close()
    assert isinstance(open_job_log(tmp_path, tmp_path), FolderJobLog) and (tmp_path / FILE).exists()


def test_a_server_adopts_the_unfinished_jobs_of_servers_that_are_gone_and_not_of_running_ones(store, tmp_path):
    running = open_job_log(store, tmp_path)
    running.add(queued("of-the-running-one"), REQUEST)
    killed = (f"import os; from pathlib import Path; from tests.server.test_job_log import REQUEST, queued;"
              f"from agentmem.server.job_log import open_job_log;"
              f"log = open_job_log({str(store)!r}, Path({str(tmp_path)!r}));"
              f"log.add(queued('of-the-killed-one'), REQUEST); os._exit(0)")
    subprocess.run([sys.executable, "-c", killed], check=True, cwd=REPO)

    starting = open_job_log(store, tmp_path)
    assert [job.id for job in eventually(starting.adopt)] == ["of-the-killed-one"]   # its session ends just after it
    assert starting.request("of-the-killed-one") == REQUEST
    assert running.request("of-the-killed-one") is None   # not its job
    assert [job.id for job in starting.jobs()] == ["of-the-running-one", "of-the-killed-one"]   # all are listed

    assert [job.id for job in starting.adopt()] == ["of-the-killed-one"]   # its own; none of the running one's

    running.close()   # stopped with a job still queued: it goes to the next server to start
    assert [job.id for job in starting.adopt()] == ["of-the-running-one", "of-the-killed-one"]
    starting.close()
    assert list(tmp_path.glob("jobs-*.lock")) == []


def test_a_record_keeps_no_fact_and_only_the_latest_finished_jobs(store, tmp_path):
    log = open_job_log(store, tmp_path)
    fact = Fact(prompt="Alice's locker code is", target="Quokka")  # no digits: the file's random hex ids held "4471" once
    report = ConsolidationReport(at=NOW, dry_run=False, editor="grace", examined=1, decisions=[
        Decision(note_id="n1", fact=fact, action="edit", reason="eligible")])
    error = {"error": "EditorError", "message": "cannot edit 'Alice's locker code is' -> 'Quokka'"}
    log.add(queued("unfinished"), REQUEST)
    for job_id in ("a", "b", "c"):
        log.add(queued(job_id), REQUEST)
        log.save(queued(job_id).model_copy(update={"status": "failed", "report": report, "error": error,
                                                   "finished_at": NOW}))
    log.keep_finished(2)
    assert [job.id for job in log.jobs()] == ["unfinished", "b", "c"]
    kept = log.get("b")
    assert kept.status == "failed" and kept.report is None and kept.error == {"error": "EditorError", "message": ""}
    if isinstance(store, str):
        with psycopg.connect(store) as conn:
            stored = "".join(row[0] for row in conn.execute("SELECT job || request FROM consolidation_jobs"))
    else:
        log.close()
        stored = b"".join(path.read_bytes() for path in tmp_path.glob(f"{FILE}*")).decode("utf-8", "replace")
    assert "locker" not in stored and "Quokka" not in stored


def test_a_server_writes_only_the_records_of_the_jobs_it_owns(store, tmp_path):
    """A job adopted while its first server's lock was lost is the adopter's: the first may not overwrite it."""
    first, second = open_job_log(store, tmp_path), open_job_log(store, tmp_path)
    first.add(queued("a"), REQUEST)
    first.close()
    assert [job.id for job in second.adopt()] == ["a"]
    first_again = open_job_log(store, tmp_path)
    first_again.save(queued("a").model_copy(update={"status": "succeeded"}))
    assert second.get("a").status == "queued"
    first_again.close()
    second.close()


def test_a_record_that_cannot_be_read_is_left_alone_and_the_others_are_served(store, tmp_path):
    log = open_job_log(store, tmp_path)
    log.add(queued("good"), REQUEST)
    log.add(queued("damaged"), REQUEST)
    log.close()
    damage = "UPDATE consolidation_jobs SET job = '{\"id\": 1}' WHERE id = 'damaged'"
    if isinstance(store, str):
        with psycopg.connect(store) as conn:
            conn.execute(damage)
    else:
        with sqlite3.connect(tmp_path / FILE) as db:
            db.execute(damage)
        db.close()
    starting = open_job_log(store, tmp_path)
    assert [job.id for job in starting.adopt()] == ["good"]
    assert [job.id for job in starting.jobs()] == ["good"] and starting.get("damaged") is None
    starting.close()


def test_a_file_that_is_not_a_job_log_is_a_typed_error(tmp_path):
    (tmp_path / FILE).write_bytes(b"not a database" * 100)
    with pytest.raises(StoreUnavailableError, match="jobs"):
        FolderJobLog(tmp_path)
    assert list(tmp_path.glob("*.lock*")) == []


def test_the_jobs_of_the_previous_release_s_file_are_kept(tmp_path):
    with sqlite3.connect(tmp_path / FILE) as db:   # as the previous release made it
        db.execute(OLD_TABLE)
        db.execute("INSERT INTO jobs(id, owner, status, job, request) VALUES ('old', '', 'queued', ?, ?)",
                   (queued("old").model_dump_json(), REQUEST.to_json()))
    db.close()
    log = FolderJobLog(tmp_path)
    log.add(queued("new"), REQUEST)
    log.close()
    with sqlite3.connect(tmp_path / FILE) as db:   # a server of the previous release ran there after the upgrade
        db.execute(OLD_TABLE)
        db.execute("INSERT INTO jobs(id, owner, status, job, request) VALUES ('older', '', 'queued', ?, ?)",
                   (queued("older").model_dump_json(), REQUEST.to_json()))
    db.close()
    log = FolderJobLog(tmp_path)
    assert [job.id for job in log.adopt()] == ["old", "new", "older"] and log.request("old") == REQUEST
    log.close()


def holding_job_a(url: str) -> DatabaseJobLog:
    """A job log on a new store at `url`, with one queued job "a"."""
    PostgresNoteGraph(url).close()
    log = DatabaseJobLog(url)
    log.add(queued("a"), REQUEST)
    return log


def end_other_sessions(conn: psycopg.Connection) -> None:
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
                 " AND pid <> pg_backend_pid()")


def test_a_database_job_log_whose_connection_is_lost_reconnects_and_keeps_its_jobs(postgres_url, tmp_path):
    log = holding_job_a(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        end_other_sessions(admin)
    with pytest.raises(StoreUnavailableError, match="jobs"):
        log.add(queued("b"), REQUEST)   # the statement in flight fails, typed
    assert log.request("a") == REQUEST   # the next one connects again, under the same owner's lock, with its jobs
    other = DatabaseJobLog(postgres_url)
    assert other.adopt() == []   # its owner is alive
    log.close()
    with pytest.raises(StoreClosedError):   # a late call is refused: it connected again, lock and all
        log.add(queued("c"), REQUEST)
    assert [job.id for job in other.adopt()] == ["a"]
    other.close()


def test_a_server_whose_old_session_still_holds_its_lock_goes_on_under_a_new_owner_with_its_jobs(postgres_url):
    """The database has not yet seen the lost session end (a cut network): its lock is still held by it."""
    log = holding_job_a(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as old_session:
        end_other_sessions(old_session)
        old_session.execute("SELECT pg_advisory_lock(%s::int, %s::int)", (OWNER_LOCKS, int(log.owner)))   # its, still
        killed_owner = log.owner
        with pytest.raises(StoreUnavailableError):
            log.get("a")
        assert log.request("a") == REQUEST and log.owner != killed_owner
        other = DatabaseJobLog(postgres_url)
        assert other.adopt() == []   # the old owner's lock is held, and the job is no longer its
        other.close()
    log.close()


def test_a_postgres_store_s_jobs_kept_on_this_host_by_the_previous_release_move_into_its_database(
        postgres_url, tmp_path):
    PostgresNoteGraph(postgres_url).close()
    with sqlite3.connect(tmp_path / FILE) as db:   # the previous release kept them in the host's folder
        db.execute(OLD_TABLE)
        db.execute("INSERT INTO jobs(id, owner, status, job, request) VALUES ('old', 'gone', 'queued', ?, ?)",
                   (queued("old").model_dump_json(), REQUEST.to_json()))
    db.close()
    log = open_job_log(postgres_url, tmp_path)
    assert [job.id for job in log.adopt()] == ["old"] and log.request("old") == REQUEST
    log.close()
    again = open_job_log(postgres_url, tmp_path)   # moved once: the folder no longer holds it
    assert [job.id for job in again.jobs()] == ["old"]
    again.close()
    with sqlite3.connect(tmp_path / FILE) as db:
        assert db.execute("SELECT count(*) FROM consolidation_jobs").fetchone()[0] == 0
    db.close()


def test_a_failed_move_of_a_lingering_owner_s_jobs_is_made_again_by_the_next_connection(postgres_url):
    """The new number was kept though the move failed: the jobs stayed with the old one, which nobody may adopt."""
    log = holding_job_a(postgres_url)
    database = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_url, autocommit=True) as old_session:
        end_other_sessions(old_session)
        old_session.execute("SELECT pg_advisory_lock(%s::int, %s::int)", (OWNER_LOCKS, int(log.owner)))   # its, still
        old_session.execute(f"ALTER DATABASE {database} SET lock_timeout = '200ms'")   # for new sessions
        blocker = psycopg.connect(postgres_url)
        blocker.execute("SELECT 1 FROM consolidation_jobs WHERE id = 'a' FOR UPDATE")   # the move must wait for it
        with pytest.raises(StoreUnavailableError):
            log.get("a")   # the connection was lost
        with pytest.raises(StoreUnavailableError):
            log.get("a")   # connecting again, the move of its jobs times out
        blocker.close()
        old_session.execute(f"ALTER DATABASE {database} RESET lock_timeout")
        time.sleep(job_log.RECONNECT_AFTER_S)
        assert log.request("a") == REQUEST   # moved by the next connection
    log.close()

"""The server's job records on disk: adopted from servers that are gone, never from running ones, and no facts."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from agentmem import ConsolidationReport, Decision, Fact, StoreUnavailableError
from agentmem.server.job_log import FILE, JobLog, JobRequest
from agentmem.server.models import Job, JobProgress

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
REQUEST = JobRequest({"min_recalls": 0}, False, NOW)


def queued(job_id: str) -> Job:
    return Job(id=job_id, status="queued", created_at=NOW, progress=JobProgress(stage="queued"))


def test_a_server_adopts_the_unfinished_jobs_of_servers_that_are_gone_and_not_of_running_ones(tmp_path):
    running = JobLog(tmp_path)
    running.add(queued("of-the-running-one"), REQUEST)
    killed = (f"import os; from pathlib import Path; from tests.server.test_job_log import REQUEST, queued;"
              f"from agentmem.server.job_log import JobLog; log = JobLog(Path({str(tmp_path)!r}));"
              f"log.add(queued('of-the-killed-one'), REQUEST); os._exit(0)")
    subprocess.run([sys.executable, "-c", killed], check=True, cwd=REPO)

    starting = JobLog(tmp_path)
    assert [job.id for job in starting.adopt()] == ["of-the-killed-one"]
    assert starting.request("of-the-killed-one") == REQUEST
    assert [job.id for job in starting.jobs()] == ["of-the-running-one", "of-the-killed-one"]   # all are listed

    assert starting.adopt() == []   # nothing more to take while the other one runs

    running.close()   # stopped with a job still queued: it goes to the next server to start
    assert [job.id for job in starting.adopt()] == ["of-the-running-one"]
    starting.close()
    assert list(tmp_path.glob("jobs-*.lock")) == []


def test_a_record_keeps_no_fact_and_only_the_latest_finished_jobs(tmp_path):
    log = JobLog(tmp_path)
    fact = Fact(prompt="Alice's locker code is", target="4471")
    report = ConsolidationReport(at=NOW, dry_run=False, editor="grace", examined=1, decisions=[
        Decision(note_id="n1", fact=fact, action="edit", reason="eligible")])
    error = {"error": "EditorError", "message": "cannot edit 'Alice's locker code is' -> '4471'"}
    for job_id in ("a", "b", "c"):
        log.add(queued(job_id), REQUEST)
        log.save(queued(job_id).model_copy(update={"status": "failed", "report": report, "error": error,
                                                   "finished_at": NOW}))
    log.keep_finished(2)
    assert [job.id for job in log.jobs()] == ["b", "c"]
    kept = log.get("b")
    assert kept.status == "failed" and kept.report is None and kept.error == {"error": "EditorError", "message": ""}
    log.close()
    stored = b"".join(path.read_bytes() for path in tmp_path.glob(f"{FILE}*"))
    assert b"locker" not in stored and b"4471" not in stored


def test_a_record_that_cannot_be_read_is_left_alone_and_the_others_are_served(tmp_path):
    log = JobLog(tmp_path)
    log.add(queued("good"), REQUEST)
    log.add(queued("damaged"), REQUEST)
    log.close()
    with sqlite3.connect(tmp_path / FILE) as db:
        db.execute("UPDATE jobs SET job = '{\"id\": 1}' WHERE id = 'damaged'")
    db.close()
    starting = JobLog(tmp_path)
    assert [job.id for job in starting.adopt()] == ["good"]
    assert [job.id for job in starting.jobs()] == ["good"] and starting.get("damaged") is None
    starting.close()


def test_a_file_that_is_not_a_job_log_is_a_typed_error(tmp_path):
    (tmp_path / FILE).write_bytes(b"not a database" * 100)
    with pytest.raises(StoreUnavailableError, match="jobs"):
        JobLog(tmp_path)
    assert list(tmp_path.glob("*.lock*")) == []

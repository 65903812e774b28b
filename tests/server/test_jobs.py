"""Consolidation as a background job on a served store: status and progress, with recall and remember going on."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from agentmem import InvalidInputError, Memory, StoreUnavailableError
from agentmem.server.errors import JobNotFoundError
from agentmem.server import jobs
from agentmem.server.job_log import FolderJobLog, JobLog
from agentmem.server.jobs import JobRunner
from tests.conftest import T0 as NOW
from tests.server.conftest import assert_clean_stop, start_server
from tests.server.test_job_log import REPO, eventually
from tests.editors.conftest import tiny_config, tiny_lm, tiny_tokenizer  # noqa: F401

T0 = "2024-05-01T12:00:00+00:00"
LATER = "2024-05-03T12:00:00+00:00"


def wait_for(runner: JobRunner, job_id: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while (job := runner.get(job_id)).status in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


def test_jobs_run_one_at_a_time_and_on_a_schedule(tmp_path, embedder, tiny_lm, tiny_config):
    with Memory(tmp_path / "m", embedder=embedder, model=tiny_lm, editor=tiny_config) as memory:
        memory.remember("Alice lives in Lisbon.", at=NOW)
        runner = JobRunner(memory, every=timedelta(seconds=1))
        try:
            first = runner.submit({"min_recalls": 0}, at=NOW + timedelta(days=2))
            dry = runner.submit({"min_recalls": 0}, dry_run=True, at=NOW + timedelta(days=2))
            done = wait_for(runner, first.id)
            assert done.status == "succeeded" and done.report.examined == 1 and done.progress.stage == "done"
            assert done.started_at >= done.created_at and done.finished_at >= done.started_at
            assert wait_for(runner, dry.id).report.dry_run
            time.sleep(2.5)
            assert any(job.scheduled for job in runner.jobs())   # --consolidate-every
            with pytest.raises(JobNotFoundError):
                runner.get("nope")
            with pytest.raises(Exception, match="policy"):
                runner.submit({"min_recalls": -1})
            with pytest.raises(InvalidInputError, match="max_edits"):   # beyond 64 bits
                runner.submit({"max_edits": 10**23})
            with pytest.raises(InvalidInputError, match="between"):   # it was queued, and the job failed on it
                runner.submit(at=datetime(9999, 12, 31, tzinfo=timezone.utc))
        finally:
            runner.close()


def test_a_kept_report_no_longer_names_the_notes_forgotten_since(tmp_path, embedder, tiny_lm, tiny_config):
    """The report a server keeps in its memory still named a forgotten note, its prompt and its target, until the
    server's restart; the forget may come from this server or from another process on the store."""
    with Memory(tmp_path / "m", embedder=embedder, model=tiny_lm, editor=tiny_config) as memory:
        lisbon = memory.remember("Alice lives in Lisbon.", at=NOW)
        oslo = memory.remember("Alice lives in Oslo.", at=NOW + timedelta(hours=1))   # lisbon's detail names it
        grass = memory.remember("The grass is green.", at=NOW)
        sky = memory.remember("The sky is blue.", at=NOW)
        runner = JobRunner(memory)
        try:
            job = wait_for(runner, runner.submit({"min_recalls": 0}, at=NOW + timedelta(days=2)).id)
            decisions = {d.note_id: d for d in job.report.decisions}
            assert [decisions[note.id].outcome for note in (oslo, grass, sky)] == ["applied"] * 3, job
            assert oslo.id in decisions[lisbon.id].detail and "Oslo" in decisions[lisbon.id].detail
            memory.forget(oslo.id)
            with Memory(tmp_path / "m", embedder=embedder) as other:   # another process's view of the store
                other.forget(grass.id)
            for shown in (runner.get(job.id), *runner.jobs()):
                assert {d.note_id: d for d in shown.report.decisions} == {
                    lisbon.id: decisions[lisbon.id].model_copy(update={"detail": ""}), sky.id: decisions[sky.id]}
                for trace in (oslo.id, oslo.fact.target, grass.id, grass.fact.prompt, grass.fact.target):
                    assert trace not in shown.model_dump_json(), (trace, shown)
        finally:
            runner.close()


def test_a_kept_report_nobody_asks_for_loses_a_forgotten_note_at_the_workers_next_sweep(
        tmp_path, embedder, tiny_lm, tiny_config, monkeypatch):
    """The server's memory held a forgotten note's prompt and target until its report was shown or pushed out."""
    monkeypatch.setattr(jobs, "ADOPT_EVERY_S", 0.2)
    with Memory(tmp_path / "m", embedder=embedder, model=tiny_lm, editor=tiny_config) as memory:
        grass = memory.remember("The grass is green.", at=NOW)
        sky = memory.remember("The sky is blue.", at=NOW)
        runner = JobRunner(memory)
        try:
            job_id = runner.submit({"min_recalls": 0}, at=NOW + timedelta(days=2)).id
            while runner._log.get(job_id).status != "succeeded":  # not `get`: it would drop the note itself
                time.sleep(0.05)
            memory.forget(grass.id)
            deadline = time.monotonic() + 10
            while grass.fact.target in repr(runner._kept[job_id]) and time.monotonic() < deadline:
                time.sleep(0.05)
            held = repr(runner._kept[job_id])
            assert grass.id not in held and grass.fact.target not in held and sky.id in held
        finally:
            runner.close()


def test_a_server_keeps_the_last_finished_jobs_only(tmp_path, embedder, tiny_lm, tiny_config, monkeypatch):
    monkeypatch.setattr(jobs, "KEPT_FINISHED", 2)
    with Memory(tmp_path / "m", embedder=embedder, model=tiny_lm, editor=tiny_config) as memory:
        runner = JobRunner(memory)
        try:
            submitted = [runner.submit(dry_run=True, at=NOW) for _ in range(3)]
            wait_for(runner, submitted[-1].id)   # one at a time, in order: the others are done too
            assert [job.id for job in runner.jobs()] == [job.id for job in submitted[1:]]
            with pytest.raises(JobNotFoundError):
                runner.get(submitted[0].id)
        finally:
            runner.close()


def scheduled_jobs(runner: JobRunner) -> list:
    return [job for job in runner.jobs() if job.scheduled]


def test_the_schedule_goes_on_once_its_last_job_is_no_longer_kept(tmp_path, embedder, tiny_lm, tiny_config,
                                                                  monkeypatch):
    """The schedule looked its last job up, and died of the lookup once other jobs had pushed it out."""
    monkeypatch.setattr(jobs, "KEPT_FINISHED", 1)
    with Memory(tmp_path / "m", embedder=embedder, model=tiny_lm, editor=tiny_config) as memory:
        runner = JobRunner(memory, every=timedelta(seconds=1))
        try:
            first = eventually(lambda: [job for job in scheduled_jobs(runner) if job.finished_at])[0]
            other = runner.submit(dry_run=True, at=NOW)   # its end pushes the scheduled job out
            eventually(lambda: first.id not in [job.id for job in runner.jobs()])
            eventually(lambda: [job for job in scheduled_jobs(runner) if job.created_at > other.created_at])
        finally:
            runner.close()


def test_the_schedule_goes_on_after_a_failed_submission(tmp_path, embedder, tiny_lm, tiny_config, monkeypatch, caplog):
    with Memory(tmp_path / "m", embedder=embedder, model=tiny_lm, editor=tiny_config) as memory:
        runner = JobRunner(memory, every=timedelta(seconds=1))
        submit, tries = runner.submit, []

        def fails_once(**options):
            tries.append(options)
            if len(tries) == 1:
                raise OSError("no space left on device")
            return submit(**options)

        monkeypatch.setattr(runner, "submit", fails_once)   # before the first period is over
        try:
            eventually(lambda: scheduled_jobs(runner))
            assert len(tries) == 2 and "no space left on device" in caplog.text
        finally:
            runner.close()


@pytest.mark.slow   # the job edits the bundled SmolLM2
def test_a_schedule_period_beyond_a_year_is_refused_before_any_thread_starts(tmp_path, embedder):
    # 200000 days overflowed the schedule thread's wait: the server ran on without its schedule
    with Memory(tmp_path / "m", embedder=embedder) as memory:
        for every in (timedelta(days=200000), timedelta(days=366), timedelta(0), timedelta(seconds=-1), 3600):
            with pytest.raises(InvalidInputError, match="at most 365 days"):
                JobRunner(memory, every=every)
        runner = JobRunner(memory, every=jobs.MAX_EVERY)
        runner.close()


def test_a_background_consolidation_while_recall_and_remember_keep_working(model_server):
    with model_server.client(None, timeout=600) as client:
        note = client.post("/v1/notes", json={"text": "Zorbl the engineer lives in Reykjavik.", "user_id": "job",
                                              "at": T0}).json()
        assert note["fact"]["target"] == "Reykjavik"
        job = client.post("/v1/consolidate", json={"policy": {"min_recalls": 0}, "at": LATER})
        assert job.status_code == 202 and job.json()["status"] == "queued"
        seen, served = set(), 0
        while (state := client.get(f"/v1/jobs/{job.json()['id']}").json())["status"] in ("queued", "running"):
            seen.add(state["progress"]["stage"])
            assert client.post("/v1/recall", json={"query": "Who lives in Reykjavik?", "user_id": "job-other",
                                                   "reinforce": False}).status_code == 200
            assert client.post("/v1/notes", json={"text": f"Job-time note {served} for the side user",
                                                  "user_id": "job-other"}).status_code == 200
            served += 1
            time.sleep(0.5)
        assert state["status"] == "succeeded", state
        assert served > 0 and seen & {"planning", "consolidating"}
        assert state["progress"]["stage"] == "done" and state["report"]["applied"] == 1
        ledger = client.get("/v1/ledger", params={"note_id": note["id"]}).json()
        assert [entry["status"] for entry in ledger] == ["applied"]
        answer = client.post("/v1/answer", json={"question": "Zorbl the engineer lives in", "user_id": "job",
                                                 "retrieval": False}).json()
        assert answer["source"] == "weights" and answer["text"].startswith("Reykjavik")   # the job's user's edit
        assert state in client.get("/v1/jobs").json()


def test_a_served_job_no_longer_names_a_note_forgotten_since(model_server, embedder):
    """GET /v1/jobs/{id} still gave a forgotten note's id, prompt and target (the report stays in the server's
    memory) until the server's restart: after a DELETE /v1/notes/{id}, and after a forget by another process."""
    texts = ("Quorra the potter lives in Valparaiso.", "Brindle the sailor lives in Trondheim.",
             "Osgood the miller lives in Tampere.")
    with model_server.client(None, timeout=600) as client:
        notes = [client.post("/v1/notes", json={"text": text, "user_id": "forgetful", "at": T0}).json()
                 for text in texts]
        job = client.post("/v1/consolidate", json={"policy": {"min_recalls": 0}, "at": LATER}).json()
        done = eventually(lambda: (state := client.get(f"/v1/jobs/{job['id']}").json())["finished_at"] and state,
                          timeout=600)
        outcomes = {decision["note_id"]: decision["outcome"] for decision in done["report"]["decisions"]}
        assert [outcomes[note["id"]] for note in notes] == ["applied"] * 3, done
        here, elsewhere, kept = notes
        assert client.delete(f"/v1/notes/{here['id']}").status_code == 200
        with Memory(model_server.path, embedder=embedder) as other:   # the CLI, say, on the same store
            other.forget(elsewhere["id"])
        for served in (client.get(f"/v1/jobs/{job['id']}").text, client.get("/v1/jobs").text):
            for note in (here, elsewhere):
                for trace in (note["id"], note["fact"]["prompt"], note["fact"]["target"]):
                    assert trace not in served, trace
            assert kept["id"] in served and kept["fact"]["target"] in served


@pytest.mark.slow   # the job edits the bundled SmolLM2
def test_jobs_acknowledged_before_the_server_was_killed_run_when_it_starts_again(tmp_path_factory):
    """The jobs lived in the server's memory only: a restart answered 404 for a job it had accepted with 202."""
    folder = tmp_path_factory.mktemp("restarted")
    killed = start_server(folder)
    with killed.client(None, timeout=300) as client:
        note = client.post("/v1/notes", json={"text": "Quibble the baker lives in Tallinn.", "user_id": "q",
                                              "at": T0}).json()
        edit = client.post("/v1/consolidate", json={"policy": {"min_recalls": 0}, "at": LATER}).json()
        dry = client.post("/v1/consolidate", json={"dry_run": True, "at": LATER}).json()
        assert client.get(f"/v1/jobs/{dry['id']}").json()["status"] == "queued"   # behind the edit's model load
    killed.process.kill()
    killed.process.wait()

    restarted = start_server(folder)
    try:
        with restarted.client(None, timeout=300) as client:
            def finished(job_id: str) -> dict:
                state = client.get(f"/v1/jobs/{job_id}").json()
                return state if state["status"] in ("succeeded", "failed") else None

            edited = eventually(lambda: finished(edit["id"]), timeout=300)
            assert edited["status"] == "succeeded" and edited["report"]["applied"] == 1, edited
            assert eventually(lambda: finished(dry["id"]))["report"]["dry_run"]
            ledger = client.get("/v1/ledger", params={"note_id": note["id"]}).json()
            assert [entry["status"] for entry in ledger] == ["applied"]   # made once
            assert [job["id"] for job in client.get("/v1/jobs").json()] == [edit["id"], dry["id"]]
    finally:
        assert_clean_stop(restarted)
    assert list(folder.glob("store/jobs-*.lock")) == []   # the killed server's lock went with its jobs


def test_jobs_still_queued_when_a_server_stops_run_on_the_next_one(tmp_path, embedder, tiny_lm, tiny_config,
                                                                   monkeypatch):
    """On SIGTERM the worker went on to the queued jobs after the store had closed, and failed them all."""
    with Memory(tmp_path / "m", embedder=embedder, model=tiny_lm, editor=tiny_config) as memory:
        consolidate, running = memory.consolidate, threading.Event()

        def slow(*args, **kwargs):
            running.set()
            time.sleep(0.5)
            return consolidate(*args, **kwargs)

        monkeypatch.setattr(memory, "consolidate", slow)
        stopping = JobRunner(memory)
        submitted = [stopping.submit(dry_run=True, at=NOW) for _ in range(3)]
        assert running.wait(timeout=60)
        stopping.close()   # while the first one runs
        monkeypatch.undo()
        looking = FolderJobLog(memory.path)
        assert [job.status for job in looking.jobs()] == ["succeeded", "queued", "queued"]
        looking.close()
    with Memory(tmp_path / "m", embedder=embedder, model=tiny_lm, editor=tiny_config) as memory:
        starting = JobRunner(memory)
        try:
            done = [wait_for(starting, job.id) for job in submitted]
            assert [job.status for job in done] == ["succeeded"] * 3
            assert [job.report is not None for job in done] == [False, True, True]   # the first ran before
        finally:
            starting.close()


def test_a_failed_write_of_a_jobs_record_fails_that_job_and_not_the_worker(tmp_path, embedder, tiny_lm, tiny_config,
                                                                          monkeypatch):
    save, calls = JobLog.save, []

    def fails_once(log, job):
        calls.append(job.id)
        if len(calls) == 1:
            raise StoreUnavailableError("disk full")
        return save(log, job)

    monkeypatch.setattr(JobLog, "save", fails_once)
    with Memory(tmp_path / "m", embedder=embedder, model=tiny_lm, editor=tiny_config) as memory:
        runner = JobRunner(memory)
        try:
            first, second = runner.submit(dry_run=True, at=NOW), runner.submit(dry_run=True, at=NOW)
            failed = wait_for(runner, first.id)
            assert failed.status == "failed" and failed.error["error"] == "StoreUnavailableError"
            assert wait_for(runner, second.id).status == "succeeded"
        finally:
            runner.close()


def test_a_job_whose_server_died_while_it_ran_three_times_is_failed_not_run_again(tmp_path, embedder):
    """A job that kills its server (its memory, say) would be run again at every start, for ever."""
    dies = ("import os; from pathlib import Path; from tests.server.test_job_log import REQUEST, queued;"
            "from agentmem.server.job_log import FolderJobLog; log = FolderJobLog(Path({folder!r}));"
            "job = queued('deadly'); adopted = log.adopt(); log.add(job, REQUEST) if not adopted else None;"
            "log.save(job.model_copy(update={{'status': 'running'}}), interrupted=bool(adopted)); os._exit(0)")
    with Memory(tmp_path / "m", embedder=embedder) as memory:
        for _ in range(jobs.MAX_INTERRUPTED):
            subprocess.run([sys.executable, "-c", dies.format(folder=str(memory.path))], check=True, cwd=REPO)
        runner = JobRunner(memory)
        try:
            job = runner.get("deadly")
            assert job.status == "failed" and job.error["error"] == "JobInterruptedError", job
            assert "not run again" in job.error["message"]
        finally:
            runner.close()


def test_replicas_of_a_postgres_store_on_two_hosts_share_its_jobs(tmp_path, postgres_url, chroma_server):
    """The job records were in each host's local folder: a job accepted by one replica was a 404 on the other."""
    hosts = [tmp_path / name for name in ("a", "b")]
    for host in hosts:
        host.mkdir()
    options = ("--chroma-url", chroma_server, "--collection", f"jobs_{postgres_url.rsplit('/', 1)[1]}")
    a, b = (start_server(host, store=postgres_url, global_args=options, env={"AGENTMEM_HOME": str(host / "home")})
            for host in hosts)
    try:
        with a.client(None, timeout=300) as on_a, b.client(None, timeout=300) as on_b:
            job = on_a.post("/v1/consolidate", json={"dry_run": True, "at": LATER}).json()
            assert on_b.get(f"/v1/jobs/{job['id']}").json()["status"] in ("queued", "running", "succeeded")
            assert [listed["id"] for listed in on_b.get("/v1/jobs").json()] == [job["id"]]
            assert on_b.get("/v1/jobs/nope").status_code == 404
            a.process.kill()   # its host is lost: the record stays with the store
            a.process.wait()
            assert on_b.get(f"/v1/jobs/{job['id']}").json()["status"] in ("queued", "running", "succeeded")
    finally:
        a.stop()
        assert_clean_stop(b)
    assert not list(tmp_path.glob("*/home/**/jobs.sqlite3"))


def slowed(memory: Memory, monkeypatch, seconds: float = 0.3) -> list[dict]:
    """Make each `consolidate` (a job's plan, and the job) take `seconds` more; returns the calls' arguments, as
    they come."""
    consolidate, calls = memory.consolidate, []

    def slow(*args, **kwargs):
        calls.append(kwargs)
        time.sleep(seconds)
        return consolidate(*args, **kwargs)

    monkeypatch.setattr(memory, "consolidate", slow)
    return calls


def test_a_busy_server_adopts_the_jobs_of_a_dead_one_between_its_own(tmp_path, embedder, tiny_lm, tiny_config,
                                                                    monkeypatch):
    """Adoption waited for a worker idle for a whole minute: a server kept busy never took over a dead one's jobs."""
    monkeypatch.setattr(jobs, "ADOPT_EVERY_S", 0.3)
    dies = ("import os; from pathlib import Path; from tests.server.test_job_log import REQUEST, queued;"
            "from agentmem.server.job_log import FolderJobLog; log = FolderJobLog(Path({folder!r}));"
            "job = queued('orphan'); log.add(job, REQUEST);"
            "log.save(job.model_copy(update={{'status': 'running', 'started_at': job.created_at}})); os._exit(0)")
    with Memory(tmp_path / "m", embedder=embedder, model=tiny_lm, editor=tiny_config) as memory:
        slowed(memory, monkeypatch)
        runner = JobRunner(memory)
        try:
            own = [runner.submit(dry_run=True, at=NOW) for _ in range(8)]
            subprocess.run([sys.executable, "-c", dies.format(folder=str(memory.path))], check=True, cwd=REPO)
            eventually(lambda: runner.get("orphan").started_at is None, timeout=60)   # adopted, queued again
            assert runner.get(own[-1].id).status == "queued"   # while its own jobs still ran
            assert [wait_for(runner, job.id).status for job in [*own, runner.get("orphan")]] == ["succeeded"] * 9
        finally:
            runner.close()


def test_a_job_whose_record_a_failed_write_left_unfinished_runs_at_the_next_adoption(tmp_path, embedder, tiny_lm,
                                                                                       tiny_config, monkeypatch):
    """A failed read of its request left an accepted job queued, owned by its server, for the server's whole life."""
    monkeypatch.setattr(jobs, "ADOPT_EVERY_S", 0.3)
    request, calls = JobLog.request, []

    def fails_once(log, job_id):
        calls.append(job_id)
        if len(calls) == 1:
            raise StoreUnavailableError("the connection was lost")
        return request(log, job_id)

    monkeypatch.setattr(JobLog, "request", fails_once)
    with Memory(tmp_path / "m", embedder=embedder, model=tiny_lm, editor=tiny_config) as memory:
        ran = slowed(memory, monkeypatch)   # adoptions come while the other jobs wait in the queue
        runner = JobRunner(memory)
        try:
            submitted = [runner.submit(dry_run=True, at=NOW) for _ in range(3)]
            assert [wait_for(runner, job.id).status for job in submitted] == ["succeeded"] * 3
            assert calls.count(submitted[0].id) == 2   # read again at the adoption after the failure
            assert len(ran) == 2 * 3   # each ran once (its plan, then the job): none was queued twice
        finally:
            runner.close()

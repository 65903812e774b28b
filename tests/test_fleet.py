"""A fleet: separate processes on one PostgreSQL note store and one `chroma run` server.

Concurrent remember and recall from two processes, one of them SIGKILLed mid-write, and a
consolidation job in one process whose edits the other answers from. Lost 0, duplicated 0.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from agentmem import Memory
from agentmem.notes import Fact
from agentmem.stores.postgres import PostgresNoteGraph
from tests.conftest import T0
from tests.editors.conftest import tiny_config, tiny_lm, tiny_tokenizer  # noqa: F401 (fixtures)
from tests.test_consolidation import LATER

WRITER = textwrap.dedent("""
    import sys
    from agentmem import Memory
    url, chroma, collection, name, count = sys.argv[1:]
    with Memory(url, chroma_url=chroma, collection=collection) as mem:
        print("ready", flush=True)
        for i in range(int(count)):
            mem.remember(f"{name} wrote entry {i} about the harbour festival in year {2000 + i}", user_id="shared")
            mem.remember("Both writers agree the harbour festival is in August", user_id="shared")
            mem.recall("harbour festival", user_id="shared", k=5)
""")
SHARED = "Both writers agree the harbour festival is in August"


@pytest.fixture
def fleet(postgres_url, chroma_server, embedder, tmp_path, monkeypatch):
    """The store's location for every process of the fleet (one local folder for all, as on one host)."""
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "home"))
    location = {"path": postgres_url, "chroma_url": chroma_server, "collection": f"fleet_{postgres_url.rsplit('/', 1)[1]}"}
    Memory(**location, embedder=embedder).close()  # created once, so the writers race on notes, not on setup
    return location


def writer(location: dict, name: str, count: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, location["path"], location["chroma_url"], location["collection"], name, str(count)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )


def entries(name: str, count: int) -> list[str]:
    return [f"{name} wrote entry {i} about the harbour festival in year {2000 + i}" for i in range(count)]


def consistent(mem: Memory) -> None:
    """Every note in both stores, nothing left to sync, no text twice."""
    assert mem.stats().pending_sync == 0  # first: a public call lets the index writes in flight finish
    by_token = mem._graph.all_tokens()
    assert {by_token.get(t, t) for t in mem._index.tokens()} == mem._graph.all_ids()
    texts = [n.text for n, _ in mem._graph.all_notes()]
    assert len(texts) == len(set(texts))


def test_two_processes_on_one_postgres_store_lose_nothing_and_duplicate_nothing(fleet, embedder):
    with Memory(**fleet, embedder=embedder) as watcher:  # open throughout, it catches up on the writers' links
        writers = [writer(fleet, name, 8) for name in ("ann", "ben")]
        assert [w.wait(timeout=900) for w in writers] == [0, 0]
        watcher.recall("harbour festival", user_id="shared", k=1, reinforce=False)
        with Memory(**fleet, embedder=embedder) as mem:
            texts = sorted(n.text for n, _ in mem._graph.all_notes())
            assert texts == sorted(entries("ann", 8) + entries("ben", 8) + [SHARED])
            consistent(mem)
            [shared] = [n for n, _ in mem._graph.all_notes() if n.text == SHARED]
            assert shared.strength == 1.0 + 15 + shared.recall_count  # one note, reinforced by every other write
            linked = {n.id: {(link.note_id, link.weight) for link in n.links} for n in mem.notes(limit=100)}
            assert sum(map(len, linked.values())) > 0
            assert {n.id: {(link.note_id, link.weight) for link in n.links} for n in watcher.notes(limit=100)} == linked


def test_a_process_killed_mid_write_loses_nothing_the_other_wrote(fleet, embedder):
    doomed, survivor = writer(fleet, "kim", 1000), writer(fleet, "sam", 6)
    assert doomed.stdout.readline().strip() == "ready"
    store = PostgresNoteGraph(fleet["path"])
    try:
        while store.count() < 8 and doomed.poll() is None:  # kill it once it is well into its writes
            time.sleep(0.2)
    finally:
        store.close()
    doomed.kill()
    doomed.wait()
    assert survivor.wait(timeout=900) == 0
    with Memory(**fleet, embedder=embedder) as mem:
        texts = {n.text for n, _ in mem._graph.all_notes()}
        assert set(entries("sam", 6)) | {SHARED} <= texts
        kims = sorted(t for t in texts if t.startswith("kim "))
        assert kims == entries("kim", len(kims))  # kim's notes before the kill are all there, in order
        consistent(mem)


STALLED = textwrap.dedent("""
    import sys, time
    from agentmem import Memory
    from agentmem.stores.vectors import VectorIndex
    url, chroma, collection, text = sys.argv[1:]
    with Memory(url, chroma_url=chroma, collection=collection) as mem:
        def stalled(index, notes, embeddings):  # the note is committed; its index write never ends
            print("writing", flush=True)
            time.sleep(600)
        VectorIndex.upsert = stalled
        mem.remember(text, user_id="shared")
""")


def test_the_same_text_makes_one_note_when_the_other_replica_s_index_write_lands_mid_check(fleet, embedder):
    """Replica B checks for a duplicate by searching the index, then reading the notes it found and those
    waiting for their index write. Replica A's index write landing between the two (its note reaches the
    index after B's search, and leaves the outbox before B's read) must not hide A's note from B."""
    text = "The ferry to the island leaves at seven"
    with Memory(**fleet, embedder=embedder) as a, Memory(**fleet, embedder=embedder) as b:
        release, original_upsert = threading.Event(), a._index.upsert

        def held(notes, embeddings):
            release.wait(timeout=60)
            original_upsert(notes, embeddings)

        a._index.upsert = held
        first = a.remember(text, user_id="shared")   # committed; its index write waits in the background
        search = b._writer.nearest_indexed

        def then_the_write_lands(*args, **kwargs):
            found = search(*args, **kwargs)   # A's note is not in the index yet
            release.set()
            while a._graph.pending():   # A's index write lands and clears its outbox row
                time.sleep(0.01)
            return found

        b._writer.nearest_indexed = then_the_write_lands
        second = b.remember(text, user_id="shared")
        assert second.id == first.id and [n.text for n, _ in b._graph.all_notes()].count(text) == 1


def test_a_writer_stalled_in_its_index_write_keeps_its_note_and_a_dead_one_is_replayed(fleet, embedder):
    """The index is written after the write lock: while the writer lives, another replica neither
    replays its outbox row nor copies its note; once it is SIGKILLed, the next write replays it."""
    text = "The lighthouse keeper repaints the tower every spring"
    stalled = subprocess.Popen(
        [sys.executable, "-c", STALLED, fleet["path"], fleet["chroma_url"], fleet["collection"], text],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert stalled.stdout.readline().strip() == "writing"
        with Memory(**fleet, embedder=embedder) as mem:
            [(note_id, _)] = mem._graph.pending()
            again = mem.remember(text, user_id="shared")  # the live writer's note, found though not indexed
            mem.remember("The harbour ferry leaves at noon", user_id="shared")
            assert again.id == note_id and again.strength > 1.0
            mem.stats()  # lets this process's own index writes finish
            assert mem._graph.pending() == [(note_id, "upsert")]  # not replayed while its writer lives
            assert mem._index.token("id", note_id) not in mem._index.tokens()
            stalled.kill()
            stalled.wait()
            mem.remember("The ferry is late on Sundays", user_id="shared")  # its lock entry replays the row
            assert sorted(n.text for n, _ in mem._graph.all_notes()) == sorted(
                [text, "The harbour ferry leaves at noon", "The ferry is late on Sundays"])
            consistent(mem)
    finally:
        stalled.kill()
        stalled.wait()


JOB = textwrap.dedent("""
    import sys
    from datetime import datetime
    from agentmem import Memory
    from agentmem.editors import GraceConfig
    url, chroma, collection, model, config, at = sys.argv[1:]
    with Memory(url, chroma_url=chroma, collection=collection, model=model,
                editor=GraceConfig.model_validate_json(config)) as mem:
        report = mem.consolidate(at=datetime.fromisoformat(at))
        print(report.applied, flush=True)
""")


def test_a_consolidation_job_in_one_process_is_answered_from_in_the_other(fleet, embedder, tiny_lm, tiny_config,
                                                                           tmp_path):
    checkpoint = tmp_path / "tiny-model"
    tiny_lm.model.save_pretrained(checkpoint)
    tiny_lm.tokenizer.save_pretrained(checkpoint)
    with Memory(**fleet, embedder=embedder, model=tiny_lm, editor=tiny_config, fact_extractor=None) as mem:
        note = mem.remember("Alice lives in Lisbon.", at=T0, fact=Fact(prompt="Alice lives in", target="Lisbon"))
        for _ in range(3):
            mem.recall(note.text, k=1, at=T0)
        assert mem.answer("Alice lives in", retrieval=False).source == "model"
        job = subprocess.run(
            [sys.executable, "-c", JOB, fleet["path"], fleet["chroma_url"], fleet["collection"], str(checkpoint),
             tiny_config.model_dump_json(), LATER.isoformat()],
            capture_output=True, text=True, timeout=600,
            # another AGENTMEM_HOME, as on another host: the edits reach this process through the database
            env={**os.environ, "PYTHONPATH": os.getcwd(), "AGENTMEM_HOME": str(tmp_path / "other-host")},
        )
        assert job.returncode == 0 and job.stdout.split() == ["1"], job.stderr[-2000:]
        answer = mem.answer("Alice lives in", retrieval=False)
        assert answer.source == "weights" and answer.text.startswith("Lisbon")
        assert [e.status for e in mem.ledger(note.id)] == ["applied"]

"""Where calls run: the exclusive section waits for index writes in flight, nests, and refuses work once closed."""
from __future__ import annotations

import threading
import uuid
from contextlib import contextmanager

import pytest

from agentmem.errors import StoreClosedError
from agentmem.sections import Sections
from agentmem.stores import VectorIndex
from agentmem.stores.graph import NoteGraph
from agentmem.stores.postgres import PostgresNoteGraph
from agentmem.stores.rows import OutboxClaim
from agentmem.stores.sync import IndexSync


@pytest.fixture(params=["sqlite", "postgres"])
def sections(request, tmp_path):
    """On SQLite with an embedded index, the index write takes the locks again; on PostgreSQL with a
    Chroma server, it runs outside them (`IndexSync.concurrent`), and only the wait holds a call back."""
    if request.param == "sqlite":
        graph, url = NoteGraph(tmp_path / "notes.sqlite3"), None
    else:
        graph, url = PostgresNoteGraph(request.getfixturevalue("postgres_url")), request.getfixturevalue("chroma_server")
    index = VectorIndex(tmp_path / "chroma", f"sections-{uuid.uuid4().hex[:8]}", url, graph.index_key)
    sync = IndexSync(graph, index)
    sync.pair()
    assert sync.concurrent == (request.param == "postgres")
    made = Sections(graph, index, sync, tmp_path)
    yield made
    made.wait()
    made.close(lambda: (index.close(), graph.close()))


def held_index_write(started: threading.Event, release: threading.Event, done: list[str]):
    """An index write whose claim is taken at once and whose write holds on until `release` (what a
    slow Chroma upsert looks like to a section)."""
    @contextmanager
    def write():
        yield OutboxClaim()
        started.set()
        release.wait(10)
        done.append("index write")
    return write()


def test_a_section_starts_once_the_index_write_in_flight_is_done(sections):
    started, release, done = threading.Event(), threading.Event(), []
    with sections.exclusive():
        sections.write_index_later(held_index_write(started, release, done))
    assert started.wait(10)  # the embedded index's write runs in the background, once the section is left

    def call():
        with sections.exclusive():
            done.append("next call")

    caller = threading.Thread(target=call)
    caller.start()
    caller.join(0.3)
    assert caller.is_alive() and done == []  # the next call waits for the write
    release.set()
    caller.join(10)
    assert done == ["index write", "next call"]


@pytest.mark.timeout(60)  # a nested section that waited for the write would hang, not fail
def test_a_thread_in_a_section_nests_another_without_waiting_for_the_writes_it_left(sections):
    started, release, done = threading.Event(), threading.Event(), []
    with sections.exclusive():
        with sections.reading():  # nested: no wait, no deadlock
            done.append("nested read")
        sections.write_index_later(held_index_write(started, release, done))
        with sections.reading():  # the write waits for this section's lock: waiting for it here would deadlock
            done.append("read after the submit")
    release.set()
    sections.wait()
    assert done == ["nested read", "read after the submit", "index write"]


@pytest.mark.timeout(60)
def test_a_thread_that_left_its_sections_waits_again_for_the_writes_they_left(sections):
    started, release, done = threading.Event(), threading.Event(), []
    with sections.exclusive():
        with sections.reading():
            pass
        sections.write_index_later(held_index_write(started, release, done))
    threading.Timer(0.3, release.set).start()
    with sections.reading():  # no longer inside a section: it waits for the write
        done.append("next read")
    assert done == ["index write", "next read"]


def test_an_embedded_index_write_left_to_a_closing_memory_stays_in_the_outbox(tmp_path):
    graph = NoteGraph(tmp_path / "notes.sqlite3")
    index = VectorIndex(tmp_path / "chroma", "sections", None, graph.index_key)
    sections, written = Sections(graph, index, IndexSync(graph, index), tmp_path), []

    @contextmanager
    def index_write():
        written.append("claimed")
        yield
        written.append("written")

    with sections.exclusive():
        sections.write_index_later(index_write())
        sections.close()  # the write waits for the lock, and then finds the memory closed
    sections.wait()
    assert written == []
    index.close()
    graph.close()


def test_a_closed_memory_s_sections_refuse_work_and_release_the_stores_once(tmp_path):
    graph = NoteGraph(tmp_path / "notes.sqlite3")
    index = VectorIndex(tmp_path / "chroma", "sections", None, graph.index_key)
    sections, released = Sections(graph, index, IndexSync(graph, index), tmp_path), []
    sections.close(lambda: released.append(1))
    sections.close(lambda: released.append(2))
    assert released == [1]
    for section in (sections.exclusive, sections.reading):
        with pytest.raises(StoreClosedError, match="is closed"), section():
            pass
    index.close()
    graph.close()


def test_a_store_read_outside_the_process_lock_is_refused_once_closed(postgres_url, tmp_path):
    graph = PostgresNoteGraph(postgres_url)
    index = VectorIndex(tmp_path / "chroma", "sections", None, graph.index_key)
    sections = Sections(graph, index, IndexSync(graph, index), tmp_path)
    with sections.reading(store_only=True):  # PostgreSQL: threads read on connections of their own
        pass
    sections.close(lambda: (index.close(), graph.close()))
    with pytest.raises(StoreClosedError, match="is closed"), sections.reading(store_only=True):
        pass

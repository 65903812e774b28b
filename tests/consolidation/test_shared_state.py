"""The editor state shared by replicas of a PostgreSQL store: migrated with the store, never replaced by an
older copy, reloaded by its published version. Replicas on "other hosts" are memories with their own
AGENTMEM_HOME (so their own local folder) and their own tiny random LLaMA (GRACE)."""
from __future__ import annotations

import shutil

import pytest

from agentmem import Fact, Memory, StoreUnavailableError
from agentmem.stores.migrate import migrate
from agentmem.stores.postgres import PostgresNoteGraph
from agentmem.stores.shared_folders import SharedFolders
from tests.consolidation.test_job_faults import LATER, POLICY, alice
from tests.conftest import T0
from tests.editors.conftest import tiny_config, tiny_lm, tiny_tokenizer  # noqa: F401 (fixtures)

OSLO = Fact(prompt="Bob lives in", target="Oslo")


@pytest.fixture
def replica(postgres_url, chroma_server, embedder, tiny_tokenizer, tiny_config, tmp_path, monkeypatch):
    """Opens a replica of one PostgreSQL store "on host `name`" with a model of its own; all closed after."""
    opened = []
    location = {"path": postgres_url, "chroma_url": chroma_server, "collection": f"shared_{postgres_url.rsplit('/', 1)[1]}"}

    def open_on(host: str) -> Memory:
        monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / host))
        lm = tiny_lm.__wrapped__(tiny_tokenizer)  # each host loads its own copy of the model
        mem = Memory(**location, embedder=embedder, model=lm, editor=tiny_config, policy=POLICY, fact_extractor=None)
        opened.append(mem)
        return mem

    yield open_on
    for mem in opened:
        mem.close()
    for host in ("a", "b", "c"):
        shutil.rmtree(tmp_path / host, ignore_errors=True)


def published(url: str) -> int | None:
    store = PostgresNoteGraph(url)
    try:
        return store.shared_folders.version("editor")
    finally:
        store.close()


def prompts(mem: Memory) -> list[str]:
    return sorted(request.prompt for request in mem.editor.edits())


def statuses(mem: Memory) -> dict[str, str]:
    return {entry.prompt: entry.status for entry in mem.ledger()}


def test_a_forget_on_a_replica_behind_the_published_state_keeps_the_newer_edits_and_everyone_drops_the_fact(
        replica, postgres_url):
    a, b = replica("a"), replica("b")
    forgotten = alice(a)
    assert a.consolidate(at=LATER).applied == 1 and prompts(b) == ["Alice lives in"]  # b has fetched version 1
    a.remember("Bob lives in Oslo.", user_id="bob", at=T0, fact=OSLO)
    assert a.consolidate(at=LATER).applied == 1 and published(postgres_url) == 2
    b.forget(forgotten.id)  # b still holds version 1: it fetches version 2 before rolling Alice's edit back
    assert published(postgres_url) == 3
    assert prompts(b) == prompts(a) == ["Bob lives in"]
    assert prompts(replica("c")) == ["Bob lives in"] and statuses(a) == {"Bob lives in": "applied"}


def test_a_replica_whose_saved_state_has_the_published_one_s_name_reloads_it(replica, postgres_url, monkeypatch):
    """Replicas name their saved states alike (v000002, ...): a replica whose own publish failed holds a
    v000002 of its own, then fetches another replica's v000002. It must serve the fetched one."""
    a, b = replica("a"), replica("b")
    forgotten = alice(a)
    assert a.consolidate(at=LATER).applied == 1 and prompts(b) == ["Alice lives in"]
    a.remember("Bob lives in Oslo.", user_id="bob", at=T0, fact=OSLO)
    with monkeypatch.context() as unreachable:
        def refused(*args, **kwargs):
            raise StoreUnavailableError("the store cannot be reached")

        unreachable.setattr(SharedFolders, "publish", refused)
        with pytest.raises(StoreUnavailableError):
            a.consolidate(at=LATER)  # Bob's edit is saved in a's folder, not published
    b.forget(forgotten.id)  # published as version 2, from version 1 without Alice
    assert published(postgres_url) == 2
    assert prompts(a) == []  # not Alice's edit, whose note is forgotten
    assert a.consolidate(at=LATER).applied == 1  # Bob's edit, never published, is made again
    assert prompts(replica("c")) == ["Bob lives in"] and statuses(a) == {"Bob lives in": "applied"}


@pytest.fixture
def consolidated(tmp_path, embedder, tiny_lm, tiny_config):
    """A folder store with Alice's and Bob's edits applied (closed: ready to migrate)."""
    folder = tmp_path / "folder-store"
    with Memory(folder, embedder=embedder, model=tiny_lm, editor=tiny_config, policy=POLICY) as mem:
        alice(mem)
        mem.remember("Bob lives in Oslo.", user_id="bob", at=T0, fact=OSLO)
        assert mem.consolidate(at=LATER).applied == 2
    return folder


def test_a_migrated_store_s_edits_reach_a_replica_on_another_host(consolidated, replica, postgres_url,
                                                                   tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "a"))
    assert migrate(consolidated, postgres_url).editor_copied and published(postgres_url) == 1
    b = replica("b")
    assert prompts(b) == ["Alice lives in", "Bob lives in"]
    assert set(statuses(b).values()) == {"applied"}
    assert prompts(replica("a")) == ["Alice lives in", "Bob lives in"]


def test_edits_never_published_are_retracted_by_a_replica_without_them_and_applied_again(
        consolidated, replica, postgres_url, tmp_path, monkeypatch):
    """Edits in one host's folder only: a first job that stopped before publishing (its host since lost), or a store
    migrated before migrations published the editor state. Another host marks them retracted, and its next job
    applies them again (refusing them instead left every answer on every replica failing once that host was gone)."""
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "a"))
    migrate(consolidated, postgres_url)
    store = PostgresNoteGraph(postgres_url)
    store.connection.execute("DELETE FROM shared_folders")  # as an older migration left it
    store.close()
    b = replica("b")
    assert prompts(b) == [] and set(statuses(b).values()) == {"retracted"}
    assert b.consolidate(at=LATER).applied == 2 and prompts(b) == ["Alice lives in", "Bob lives in"]
    assert prompts(replica("c")) == ["Alice lives in", "Bob lives in"]


def test_a_publish_made_from_an_older_version_is_refused_and_changes_nothing(postgres_url, tmp_path):
    folder = tmp_path / "editor"
    folder.mkdir()
    (folder / "CURRENT").write_text("v000001")
    store = PostgresNoteGraph(postgres_url)
    try:
        shared = store.shared_folders
        assert shared.publish("editor", folder, based_on=None) == 1
        assert shared.publish("editor", folder, based_on=1) == 2
        for stale in (None, 1):
            with pytest.raises(StoreUnavailableError, match="another replica published"):
                shared.publish("editor", folder, based_on=stale)
        assert shared.version("editor") == 2
    finally:
        store.close()

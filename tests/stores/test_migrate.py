"""Migrating a folder store into PostgreSQL: a real Memory's store, a real server, the same answers after."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest

from agentmem import Memory, Note
from agentmem.cli import main
from agentmem.consolidation.ledger import Ledger
from agentmem.errors import InvalidInputError, StoreUnavailableError
from agentmem.notes import Fact
from agentmem.stores.filters import NoteFilter
from agentmem.stores.graph import NoteGraph
from agentmem.stores.location import local_folder
from agentmem.stores.migrate import migrate
from agentmem.stores.postgres import PostgresNoteGraph
from agentmem.stores.shared_folders import SharedFolders
from agentmem.stores.vectors import VectorIndex
from tests.conftest import T0

from .test_full_text import postings_and_recount

TEXTS = [
    "Alice moved to Lisbon in 2024",
    "Alice works as a marine biologist",
    "Bob adopted a grey cat named Pixel",
    "Bob's cat Pixel likes to sleep on the piano",
    "Carol is training for the Berlin marathon",
]


@pytest.fixture
def source(tmp_path, embedder):
    folder = tmp_path / "memdata"
    with Memory(folder, embedder=embedder) as mem:
        for i, text in enumerate(TEXTS):
            mem.remember(text, user_id="alice" if i < 2 else "bob", at=T0, metadata={"i": i})
        mem.recall("Where does Alice live?", user_id="alice", at=T0)
        note = mem.notes(user_id="alice")[0]
        mem.update(note.id, text="Alice moved to Lisbon in the spring of 2024", at=T0)
    graph = NoteGraph(folder / "notes.sqlite3")
    ledger = Ledger(graph.connection)  # its schema script commits: open it outside the transaction
    with graph.transaction():
        ledger.add(note.id, "e1", Fact(prompt="Alice lives in", target="Lisbon"), "grace", "applied", T0)
    graph.close()
    (folder / "editor" / "v000001").mkdir(parents=True)  # a saved state as the job leaves it (its files unread here)
    (folder / "editor" / "v000001" / "editor.json").write_text("{}")
    (folder / "editor" / "CURRENT").write_text("v000001")
    return folder


def test_migration_copies_every_table_and_the_vectors_and_recall_gives_the_same_hits(
        source, postgres_url, chroma_server, tmp_path, monkeypatch, embedder):
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "home"))
    report = migrate(source, postgres_url, chroma_url=chroma_server, collection="migrated")
    assert report.rows["notes"] == len(TEXTS) and report.rows["consolidation_ledger"] == 1 and report.editor_copied
    assert report.vectors == len(TEXTS)
    before, after = NoteGraph(source / "notes.sqlite3"), PostgresNoteGraph(postgres_url)
    try:
        ids = sorted(before.all_ids())
        assert after.get_many(ids) == before.get_many(ids)
        assert {i: after.history(i) for i in ids} == {i: before.history(i) for i in ids}
        assert {i: after.recall_times(i) for i in ids} == {i: before.recall_times(i) for i in ids}
        assert after.store_id not in (None, before.store_id) and after.all_tokens() == before.all_tokens()
        assert after.pending() == []
        assert [e.edit_id for e in Ledger(after.connection).entries()] == ["e1"]
        Ledger(after.connection).add("x", "e2", Fact(prompt="p", target="t"), "grace", "pending", T0)  # ids go on
        query = next(iter(before.load([ids[0]]).values()))[1]
        index = VectorIndex(tmp_path / "unused", "migrated", chroma_server, after.index_key)
        [hits] = index.nearest(query[None, :], 3)
        assert after.index_entries([t for t, _ in hits])[hits[0][0]].note_id == ids[0]
        index.close()
        terms = ["lisbon", "cat", "marathon"]
        assert [i for i, _ in after.lexical_search(terms, 5, NoteFilter())] != []
        assert {i for i, _ in after.lexical_search(terms, 5, NoteFilter())} == {
            i for i, _ in before.lexical_search(terms, 5, NoteFilter())}
    finally:
        before.close()
        after.close()
    store = PostgresNoteGraph(postgres_url)
    assert store.shared_folders.version("editor") == 1  # every replica fetches the editor state from there
    store.close()
    with Memory(source, embedder=embedder) as before, Memory(postgres_url, chroma_url=chroma_server,
                                                                collection="migrated", embedder=embedder) as after:
        for query in ("Where does Alice live?", "Bob's cat", "marathon training"):
            # the same notes in the same order (scores differ a little: the stores' lexical scores differ)
            assert [h.note.id for h in after.recall(query, k=3, at=T0, reinforce=False)] == [
                h.note.id for h in before.recall(query, k=3, at=T0, reinforce=False)]


def test_migration_refuses_a_target_that_holds_a_store_and_changes_nothing(source, postgres_url, tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "home"))
    existing = PostgresNoteGraph(postgres_url)
    with existing.transaction():
        existing.insert(Note(id="keep", text="kept", created_at=T0, updated_at=T0, last_recalled=T0), np.ones(4))
    with pytest.raises(InvalidInputError):
        migrate(source, postgres_url)
    assert existing.all_ids() == {"keep"}
    existing.close()
    with pytest.raises(InvalidInputError):
        migrate(tmp_path / "nowhere", postgres_url)
    with pytest.raises(InvalidInputError):
        migrate(source, str(tmp_path / "folder"))


def test_a_migration_that_fails_leaves_the_database_empty_and_runs_again(source, postgres_url, tmp_path, monkeypatch):
    def empty() -> bool:
        target = PostgresNoteGraph(postgres_url)
        try:
            return (target.count(), target.get_meta("store_id"), target.shared_folders.version("editor")) == (0, None, None)
        finally:
            target.close()

    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "a-file"))  # the local folder cannot be made
    with pytest.raises(StoreUnavailableError, match="local folder"):
        migrate(source, postgres_url)
    assert empty()
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "home"))
    with monkeypatch.context() as failing:
        def unreachable(*args, **kwargs):
            raise StoreUnavailableError("the connection was lost")

        failing.setattr(SharedFolders, "publish", unreachable)  # after every table is copied
        with pytest.raises(StoreUnavailableError, match="connection was lost"):
            migrate(source, postgres_url)
    assert empty()
    report = migrate(source, postgres_url)
    assert report.rows["notes"] == len(TEXTS) and report.editor_copied and not empty()


def test_a_migrated_lexicon_counts_the_copied_notes_and_new_writes_keep_it_counted(source, postgres_url, tmp_path,
                                                                                    monkeypatch):
    """The bulk load counts `lexicon` and computes `postings` once instead of per note: they must hold
    what the per-note trigger would (each lexeme's notes, and the notes under ''; each note's lexemes
    with their ranks), and the trigger must be on again after."""
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "home"))
    migrate(source, postgres_url)
    graph = PostgresNoteGraph(postgres_url)

    def lexicon_and_recount() -> tuple[dict[str, int], dict[str, int]]:
        lexicon = dict(graph.connection.execute("SELECT lexeme, docs FROM lexicon").fetchall())
        recount = dict(graph.connection.execute(
            "SELECT word, ndoc FROM ts_stat('SELECT search FROM notes') UNION ALL SELECT '', count(*) FROM notes"
        ).fetchall())
        return lexicon, recount

    try:
        lexicon, recount = lexicon_and_recount()
        assert lexicon == recount and lexicon[""] == len(TEXTS) and lexicon["lisbon"] == 1
        postings, reposted = postings_and_recount(postgres_url)
        assert postings == reposted and sum(1 for p in postings if p[0] == "lisbon") == 1
        # the planner knows the copied rows (a table never analyzed has reltuples -1)
        assert graph.connection.execute("SELECT reltuples FROM pg_class WHERE relname = 'notes'").fetchone()[0] == len(TEXTS)
        with graph.transaction():
            graph.insert(Note(id="new", text="Dave sails to Lisbon", created_at=T0, updated_at=T0, last_recalled=T0),
                         np.ones(384))
        lexicon, recount = lexicon_and_recount()
        assert lexicon == recount and lexicon[""] == len(TEXTS) + 1 and lexicon["lisbon"] == 2
        postings, reposted = postings_and_recount(postgres_url)
        assert postings == reposted and sum(1 for p in postings if p[0] == "lisbon") == 2
    finally:
        graph.close()


def test_the_migrate_command_moves_a_store_and_prints_its_report(source, postgres_url, chroma_server, tmp_path,
                                                                 monkeypatch, capsys):
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AGENTMEM_URL", raising=False)
    code = main(["--chroma-url", chroma_server, "migrate", "--from", str(source), "--to", postgres_url,
                 "--collection", "by_cli"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["rows"]["notes"] == len(TEXTS) and report["vectors"] == len(TEXTS)
    assert main(["migrate", "--from", str(source), "--to", postgres_url]) == 2  # not empty any more
    assert "already holds the whole copy of this store" in capsys.readouterr().err   # and usable: no drop asked


def test_migration_refuses_a_chroma_collection_of_another_store_before_copying(
        source, postgres_url, chroma_server, tmp_path, monkeypatch, embedder):
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "home"))
    with Memory(tmp_path / "other", chroma_url=chroma_server, collection="taken", embedder=embedder) as other:
        kept = other.remember("Dora keeps her notes on this server", at=T0)
    with pytest.raises(InvalidInputError, match="another store"):
        migrate(source, postgres_url, chroma_url=chroma_server, collection="taken")
    target = PostgresNoteGraph(postgres_url)
    assert target.count() == 0
    target.close()
    with Memory(tmp_path / "other", chroma_url=chroma_server, collection="taken", embedder=embedder) as other:
        assert other.recall("Where are Dora's notes?", k=1, at=T0)[0].note.id == kept.id


def test_the_same_store_migrated_twice_onto_one_collection_is_refused(
        source, postgres_server, chroma_server, tmp_path, monkeypatch, embedder):
    """Each copy is a store of its own: the second would have taken the first one's collection."""
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "home"))
    staging, prod = postgres_server.create_database(), postgres_server.create_database()
    migrate(source, staging, chroma_url=chroma_server, collection="shared")
    with pytest.raises(InvalidInputError, match="another store"):
        migrate(source, prod, chroma_url=chroma_server, collection="shared")
    with Memory(staging, chroma_url=chroma_server, collection="shared", embedder=embedder) as mem:
        assert mem.recall("Where does Alice live?", k=1, at=T0, reinforce=False)[0].why.similarity > 0.3


def test_a_local_folder_holding_an_earlier_store_s_editor_state_is_refused(source, postgres_url, tmp_path,
                                                                            monkeypatch):
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "home"))
    stale = local_folder(postgres_url) / "editor"
    stale.mkdir(parents=True)
    with pytest.raises(InvalidInputError, match="earlier store"):
        migrate(source, postgres_url)
    target = PostgresNoteGraph(postgres_url)
    assert target.count() == 0
    target.close()


def test_a_row_the_source_cannot_read_goes_to_the_quarantine_and_the_rest_moves(source, postgres_url, tmp_path,
                                                                                monkeypatch):
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "home"))
    graph = NoteGraph(source / "notes.sqlite3")
    damaged = sorted(graph.all_ids())[0]
    with graph.transaction():
        graph.connection.execute("UPDATE notes SET metadata = '{bad json' WHERE id = ?", (damaged,))
    graph.close()
    report = migrate(source, postgres_url)
    assert report.rows["notes"] == len(TEXTS) - 1 and report.rows["quarantine"] == 1


PAUSED = """
import sys, time
from agentmem.stores.postgres import PostgresNoteGraph
from agentmem.stores.vectors import VectorIndex
where, method = {"copy": (PostgresNoteGraph, "bulk_load"), "index": (VectorIndex, "upsert")}[sys.argv[1]]
original = getattr(where, method)
def paused(*args, **kwargs):   # the real step, after a pause in which the test signals the process
    print("PAUSED", file=sys.stderr, flush=True)
    time.sleep(120)
    return original(*args, **kwargs)
setattr(where, method, paused)
from agentmem.cli import main
sys.exit(main(sys.argv[2:]))
"""


def interrupted_migrate(source, url, step: str, signum: int) -> tuple[int, str]:
    """`agentmem migrate` in a process of its own, sent `signum` in the middle of `step` (copy or index)."""
    process = subprocess.Popen([sys.executable, "-c", PAUSED, step, "migrate", "--from", str(source), "--to", url],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = ""
    while "PAUSED" not in err:
        line = process.stderr.readline()
        assert line, f"the migration ended before the pause: {err}"
        err += line
    process.send_signal(signum)
    out, rest = process.communicate(timeout=120)
    return process.returncode, err.replace("PAUSED\n", "") + rest


def test_a_migration_interrupted_after_the_copy_says_the_copy_is_whole_and_a_retry_does_not_ask_for_a_drop(
        source, postgres_url, tmp_path, monkeypatch, capsys, embedder):
    """Ctrl-C during the index rebuild printed a traceback, and the retry asked for an empty database
    although the copy was whole and opening it rebuilds the index."""
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AGENTMEM_URL", raising=False)
    code, err = interrupted_migrate(source, postgres_url, "index", signal.SIGINT)
    assert code == 130 and "Traceback" not in err, err
    [line] = [line for line in err.splitlines() if line.startswith("agentmem:")]
    assert "whole copy" in line and "ready to use" in line and "do not migrate it again" in line
    assert main(["migrate", "--from", str(source), "--to", postgres_url]) == 2
    refusal = capsys.readouterr().err
    assert "already holds the whole copy of this store" in refusal and "ready to use" in refusal
    assert "empty database" not in refusal
    with Memory(postgres_url, embedder=embedder) as copy:   # usable as it is: opening it rebuilds the index
        assert len(copy.notes()) == len(TEXTS)
        assert copy.recall("Bob's cat", k=1, at=T0, reinforce=False)[0].note.text.startswith("Bob")


def test_a_migration_terminated_during_the_copy_leaves_the_database_empty_and_says_run_it_again(
        source, postgres_url, tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AGENTMEM_URL", raising=False)
    code, err = interrupted_migrate(source, postgres_url, "copy", signal.SIGTERM)
    assert code == 143 and "Traceback" not in err, err
    [line] = [line for line in err.splitlines() if line.startswith("agentmem:")]
    assert "still empty" in line and "run the same migrate again" in line
    target = PostgresNoteGraph(postgres_url)
    assert (target.count(), target.get_meta("store_id")) == (0, None)
    target.close()
    assert migrate(source, postgres_url).rows["notes"] == len(TEXTS)

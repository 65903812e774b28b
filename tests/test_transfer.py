"""Backups: a target the file system cannot take, or one that already holds a store's files, is refused
with a typed error before anything is written; a failed backup leaves nothing behind; a backup of a
PostgreSQL store carries the editor state its replicas publish, not this host's copy."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentmem import AgentMemError, InvalidInputError, Memory, MemoryConfig, StoreUnavailableError, transfer
from agentmem.stores.graph import NoteGraph
from agentmem.stores.postgres import PostgresNoteGraph
from tests.conftest import T0, tmpfs


@pytest.fixture
def read_only_disk(tmp_path):
    """A real read-only tmpfs, empty (as tests/test_faults.py mounts its disk); skipped where it cannot be mounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    with tmpfs(tmp_path / "read-only", "ro,size=1m") as mount:
        yield mount


@pytest.mark.parametrize("name", ["nul\x00byte", "lone\udc80surrogate", "x" * 300, "x" * 5000])
def test_a_target_the_file_system_cannot_take_is_refused_and_nothing_is_made(memory, tmp_path, name):
    before = sorted(tmp_path.iterdir())
    with pytest.raises(InvalidInputError):
        memory.backup(tmp_path / "backups" / name)
    assert sorted(tmp_path.iterdir()) == before


def test_a_target_holding_a_store_s_files_or_a_file_is_refused_before_the_graph_is_copied(memory, tmp_path):
    memory.remember("Alice lives in Lisbon", at=T0)
    (tmp_path / "has-editor" / "editor").mkdir(parents=True)
    with pytest.raises(InvalidInputError, match="editor"):
        memory.backup(tmp_path / "has-editor")
    assert [p.name for p in (tmp_path / "has-editor").iterdir()] == ["editor"]
    (tmp_path / "a-file").write_text("kept")
    with pytest.raises(InvalidInputError, match="not a folder"):
        memory.backup(tmp_path / "a-file")
    assert (tmp_path / "a-file").read_text() == "kept"
    assert (memory.backup(tmp_path / "fine") / "notes.sqlite3").is_file()


@pytest.mark.parametrize("target", ["/proc/agentmem-backup", "/proc/self/agentmem-backup", "/sys/agentmem-backup",
                                    "/proc/self"])
def test_a_target_on_the_kernel_s_file_systems_is_refused_as_the_caller_s(memory, target):
    """Under /proc or /sys no backup can ever be written (the kernel's entries, not files): the caller's error, not
    the store's (StoreUnavailableError says "try again later"), and nothing is made there."""
    with pytest.raises(InvalidInputError, match="file system"):
        memory.backup(target)
    assert target == "/proc/self" or not Path(target).exists()


def test_a_backup_goes_into_a_new_or_empty_folder_and_a_folder_holding_other_files_is_refused(memory, tmp_path):
    """A folder that held other files got the backup's files beside them; an empty one (a disk just mounted there,
    whose root holds lost+found) is a fine target."""
    memory.remember("Alice lives in Lisbon", at=T0)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_text("not a backup")
    with pytest.raises(InvalidInputError, match="photos.*cat.jpg.*new folder or an empty one"):
        memory.backup(tmp_path / "photos")
    assert [p.name for p in (tmp_path / "photos").iterdir()] == ["cat.jpg"]
    (tmp_path / "mounted" / "lost+found").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    for target in ("mounted", "empty", "new/folder"):
        assert (memory.backup(tmp_path / target) / transfer.BACKUP_COMPLETE).is_file()


def test_a_failed_backup_removes_what_it_wrote_and_the_folders_it_made(tmp_path):
    with pytest.raises(RuntimeError), transfer.new_backup(tmp_path / "new" / "backup") as folder:
        (folder / "notes.sqlite3").write_text("half a copy")
        (folder / "editor").mkdir()
        raise RuntimeError("the disk is full")
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept" / "lost+found").mkdir(parents=True)  # a folder it did not make (a disk's root) stays
    with pytest.raises(RuntimeError), transfer.new_backup(tmp_path / "kept") as folder:
        (folder / "notes.sqlite3").write_text("half a copy")
        raise RuntimeError("the disk is full")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["lost+found"]


def test_a_backup_of_a_postgres_store_carries_the_published_editor_state(postgres_url, tmp_path):
    published = tmp_path / "replica" / "editor"
    (published / "v000002").mkdir(parents=True)
    (published / "v000002" / "state.bin").write_bytes(b"newer")
    (published / "CURRENT").write_text("v000002")
    stale = tmp_path / "this-host"
    (stale / "editor" / "v000001").mkdir(parents=True)
    (stale / "editor" / "CURRENT").write_text("v000001")
    store = PostgresNoteGraph(postgres_url)
    try:
        store.shared_folders.publish("editor", published, based_on=None)
        with transfer.new_backup(tmp_path / "backup") as folder:
            transfer.copy_editor_state(stale, folder, store.shared_folders)
    finally:
        store.close()
    assert (folder / "editor" / "CURRENT").read_text() == "v000002"
    assert (folder / "editor" / "v000002" / "state.bin").read_bytes() == b"newer"
    assert sorted(p.name for p in folder.iterdir()) == [transfer.BACKUP_COMPLETE, "editor"]  # no staging left behind


def test_a_backup_that_fails_midway_leaves_nothing_in_its_target(memory, tmp_path, monkeypatch):
    memory.remember("Alice lives in Lisbon", at=T0)

    def disk_full(graph, target):
        target.write_bytes(b"half a copy")
        raise StoreUnavailableError("No space left on device")

    monkeypatch.setattr(NoteGraph, "backup", disk_full)
    with pytest.raises(StoreUnavailableError):
        memory.backup(tmp_path / "backups" / "today")
    assert not (tmp_path / "backups").exists()


def test_a_postgres_store_s_backup_has_the_editor_state_its_replicas_published(postgres_url, embedder, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "home"))
    published = tmp_path / "replica" / "editor"
    (published / "v000003").mkdir(parents=True)
    (published / "CURRENT").write_text("v000003")
    with Memory(postgres_url, embedder=embedder) as mem:  # this host never loaded the model: it holds no state
        mem.remember("Alice lives in Lisbon", at=T0)
        mem._graph.shared_folders.publish("editor", published, based_on=None)  # noqa: SLF001 (as a replica's job does)
        folder = mem.backup(tmp_path / "backup")
    assert (folder / "editor" / "CURRENT").read_text() == "v000003" and (folder / "editor" / "v000003").is_dir()
    with Memory.restore_backup(folder, tmp_path / "restored", embedder=embedder) as restored:
        assert [n.text for n in restored.notes()] == ["Alice lives in Lisbon"]


def test_a_backup_stopped_before_it_finished_is_not_restored(memory, tmp_path, embedder):
    """SIGKILL runs no cleanup: such a backup had a whole note graph whose ledger named edits its half-copied
    editor state lacked, and was restored without a word (the edits then silently retracted)."""
    memory.remember("Alice lives in Lisbon", at=T0)
    folder = memory.backup(tmp_path / "backup")
    assert (folder / transfer.BACKUP_COMPLETE).is_file()
    (folder / transfer.BACKUP_COMPLETE).unlink()  # as a backup killed before its last step leaves it
    with pytest.raises(InvalidInputError, match="not a whole backup"):
        Memory.restore_backup(folder, tmp_path / "restored", embedder=embedder)
    assert not (tmp_path / "restored").exists()


def test_a_restore_whose_backup_cannot_be_opened_leaves_the_target_free_for_another(memory, tmp_path, embedder):
    memory.remember("Alice lives in Lisbon", at=T0)
    sound = memory.backup(tmp_path / "sound")
    damaged = memory.backup(tmp_path / "damaged")
    graph = damaged / "notes.sqlite3"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 3])
    with pytest.raises(AgentMemError):
        Memory.restore_backup(damaged, tmp_path / "restored", embedder=embedder)
    assert not (tmp_path / "restored" / "notes.sqlite3").exists()
    with Memory.restore_backup(sound, tmp_path / "restored", embedder=embedder) as restored:
        assert [n.text for n in restored.notes()] == ["Alice lives in Lisbon"]


def test_a_restore_into_a_folder_holding_an_editor_state_is_refused_and_keeps_it(memory, tmp_path, embedder):
    """A failed restore removed the `editor/` it found there: the saved edits of the store moved aside."""
    memory.remember("Alice lives in Lisbon", at=T0)
    folder = memory.backup(tmp_path / "backup")
    (tmp_path / "target" / "editor" / "v000001").mkdir(parents=True)
    with pytest.raises(InvalidInputError, match="editor"):
        Memory.restore_backup(folder, tmp_path / "target", embedder=embedder)
    assert (tmp_path / "target" / "editor" / "v000001").is_dir()


def test_an_import_of_values_postgres_cannot_hold_is_bad_input_and_writes_nothing(postgres_url, embedder, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "home"))
    note = {"id": "big", "text": "Ines keeps bees", "created_at": "2024-01-01T00:00:00Z",
            "updated_at": "2024-01-01T00:00:00Z", "last_recalled": "2024-01-01T00:00:00Z"}
    # a store that keeps that many keywords (the default, 12, refuses the file before PostgreSQL sees it)
    with Memory(postgres_url, embedder=embedder, config=MemoryConfig(max_keywords=30_000)) as mem:
        (tmp_path / "count.jsonl").write_text(json.dumps(note | {"recall_count": 2**31}) + "\n")
        with pytest.raises(InvalidInputError, match="recall_count"):
            mem.import_(tmp_path / "count.jsonl")
        words = [f"w{i:06d}" + "x" * 40 for i in range(30_000)]  # more than a tsvector holds (1 MB)
        (tmp_path / "words.jsonl").write_text(json.dumps(note | {"keywords": words}) + "\n")
        with pytest.raises(InvalidInputError, match="cannot hold"):
            mem.import_(tmp_path / "words.jsonl")
        assert mem.stats().notes == 0


@pytest.mark.parametrize("late", ["updated_at", "last_recalled"])
def test_an_import_line_changed_or_recalled_before_it_was_made_is_refused(late):
    """No export writes such a line; its times would skew the note's forgetting curve."""
    line = {"id": "n1", "text": "Nora plays the oboe", "created_at": "2024-05-02T00:00:00Z",
            "updated_at": "2024-05-02T00:00:00Z", "last_recalled": "2024-05-02T00:00:00Z"}
    assert [note.id for note in transfer.notes_in(json.dumps(line), "x.jsonl")] == ["n1"]
    with pytest.raises(InvalidInputError, match="x.jsonl:1: .*earlier than created_at"):
        transfer.notes_in(json.dumps({**line, late: "2024-05-01T00:00:00Z"}), "x.jsonl")


def test_an_import_from_what_is_no_regular_file_says_so(tmp_path):
    with pytest.raises(InvalidInputError, match="is not a regular file"):
        transfer.read_notes(tmp_path)   # a folder here; /dev/zero and pipes alike
    with pytest.raises(InvalidInputError, match="no such file"):
        transfer.read_notes(tmp_path / "missing.jsonl")


def test_a_restore_or_backup_into_a_read_only_folder_is_store_unavailable_not_a_traceback(memory, tmp_path,
                                                                                          read_only_disk):
    """The copy failed with EROFS, then the cleanup's `unlink(missing_ok=True)` failed with EROFS too (missing_ok
    covers only "not found") and masked it: the CLI ended in a chained OSError traceback, exit 1."""
    memory.remember("Alice lives in Lisbon", at=T0)
    folder = memory.backup(tmp_path / "backup")
    restored = subprocess.run([sys.executable, "-m", "agentmem.cli", "--path", str(read_only_disk), "restore-backup",
                               str(folder)], capture_output=True, text=True, timeout=300)
    assert restored.returncode == 2, restored.stderr
    assert "Traceback" not in restored.stderr
    assert f"StoreUnavailableError: cannot restore into {read_only_disk}" in restored.stderr
    assert "Read-only file system" in restored.stderr
    with pytest.raises(StoreUnavailableError, match="cannot be written"):
        memory.backup(read_only_disk)  # an existing empty folder: the same cleanup ran after SQLite's refusal
    assert list(read_only_disk.iterdir()) == []


def test_a_backup_target_with_more_dot_dots_than_the_working_folder_is_deep_is_read_as_the_shell_reads_it(
        memory, tmp_path):
    """`/..` is `/`: the kernel reads ../../../../../tmp/x from a folder three deep as /tmp/x, but SQLite refused such a
    relative path ("unable to open database file", a StoreUnavailableError telling to check the disk)."""
    memory.remember("Alice lives in Lisbon", at=T0)
    memory.close()
    working = tmp_path / "a" / "b"
    working.mkdir(parents=True)
    target = tmp_path / "backups" / "today"
    relative = "../" * (len(working.parts) + 3) + str(target).lstrip("/")
    done = subprocess.run([sys.executable, "-m", "agentmem.cli", "--path", str(memory.path), "backup", relative],
                          cwd=working, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"backup": str(target)}
    assert (target / "notes.sqlite3").is_file() and (target / transfer.BACKUP_COMPLETE).is_file()


def test_a_restore_target_with_more_dot_dots_than_the_working_folder_is_deep_is_read_as_the_shell_reads_it(
        memory, tmp_path, embedder, monkeypatch):
    memory.remember("Alice lives in Lisbon", at=T0)
    folder = memory.backup(tmp_path / "backup")
    working = tmp_path / "a" / "b"
    working.mkdir(parents=True)
    monkeypatch.chdir(working)
    relative = "../" * (len(working.parts) + 3) + str(tmp_path / "restored").lstrip("/")
    with Memory.restore_backup(folder, relative, embedder=embedder) as restored:
        assert [n.text for n in restored.notes()] == ["Alice lives in Lisbon"]

"""The job against what happens around it: a forget while the job edits, a replica forgetting without the
model, a save that fails, a policy whose probes are bad. Mechanics on the tiny random LLaMA (GRACE)."""
from __future__ import annotations

import errno
import threading
import time
from datetime import timedelta

import filelock
import pytest

from agentmem import Fact, InvalidInputError, Memory, StoreCorruptedError, StoreUnavailableError
from agentmem.consolidation import ConsolidationPolicy, ParametricMemory
from agentmem.editors import base as editor_base
from tests.conftest import T0
from tests.editors.conftest import tiny_config, tiny_lm, tiny_tokenizer  # noqa: F401 (fixtures)
from tests.test_consolidation import open_memory  # noqa: F401 (fixture)

LATER = T0 + timedelta(days=1)
POLICY = ConsolidationPolicy(min_recalls=0, stable_for=timedelta(0), neighbours=False)
LISBON = Fact(prompt="Alice lives in", target="Lisbon")


def alice(mem):
    return mem.remember("Alice lives in Lisbon.", user_id="alice", at=T0, fact=LISBON)


def from_weights(mem) -> bool:
    return mem.answer("Alice lives in", user_id="alice", retrieval=False, max_new_tokens=2).source == "weights"


def saved_editor_folder(open_memory, tmp_path):
    """The editor folder of a store whose one fact was consolidated, once its memory closed (its editor left the
    model: what happens to the folder next stands for another process's doing)."""
    mem = open_memory(policy=POLICY)
    alice(mem)
    assert mem.consolidate(at=LATER).applied == 1
    mem.close()
    return tmp_path / "mem" / "editor"


def test_a_note_forgotten_while_the_job_edits_it_leaves_no_edit_and_no_ledger_row(open_memory, monkeypatch):
    mem = open_memory(policy=POLICY)
    note = alice(mem)
    edit = ParametricMemory.edit
    forgetting = []

    def edit_then_forget(self, *args, **kwargs):
        made = edit(self, *args, **kwargs)
        forgetting.append(threading.Thread(target=mem.forget, args=(note.id,)))
        forgetting[0].start()
        while any(n.id == note.id for n in mem.notes()):  # committed; the job, which holds the model, rolls its edit back
            time.sleep(0.02)
        return made

    monkeypatch.setattr(ParametricMemory, "edit", edit_then_forget)
    report = mem.consolidate(at=LATER)
    forgetting[0].join()
    assert [d.outcome for d in report.decisions] == ["retracted"]
    assert mem.editor.edits() == [] and mem.ledger() == []
    assert not from_weights(mem)


def test_an_edit_whose_note_another_replica_forgot_stops_answering_at_the_next_answer(open_memory, tmp_path):
    serving = open_memory(policy=POLICY)
    note = alice(serving)
    assert serving.consolidate(at=LATER).applied == 1 and from_weights(serving)
    other = Memory(tmp_path / "mem", embedder=serving._embedder, policy=POLICY)  # noqa: SLF001 (same embedder)
    try:
        other.forget(note.id)  # it never loaded the model: the row waits as `retracting`
        assert [e.status for e in other.ledger()] == ["retracting"]
    finally:
        other.close()
    assert not from_weights(serving)
    assert serving.editor.edits() == [] and serving.ledger() == []


def test_a_save_that_fails_is_a_typed_error_and_leaves_nothing_unsaved_answering(open_memory, monkeypatch):
    mem = open_memory(policy=POLICY)
    alice(mem)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(editor_base, "save_file", disk_full)
        with pytest.raises(StoreUnavailableError, match="cannot save"):
            mem.consolidate(at=LATER)
    assert mem.ledger() == [] and mem.editor.edits() == []
    assert not from_weights(mem)
    assert mem.consolidate(at=LATER).applied == 1  # the disk has room again: the next job lands it
    assert from_weights(mem)


@pytest.mark.parametrize("probes", [[""], ["The capital of France is", "   "], ["x" * 501], []])
def test_bad_probes_are_refused_before_the_job_changes_anything(open_memory, probes):
    mem = open_memory(policy=POLICY)
    note = alice(mem)
    assert mem.consolidate(at=LATER).applied == 1
    mem.update(note.id, fact=Fact(prompt="Alice lives in", target="Oslo"), at=LATER)
    before = [(e.edit_id, e.status) for e in mem.ledger()], [r.id for r in mem.editor.edits()]
    with pytest.raises(InvalidInputError, match="probes"):
        mem.consolidate({"probes": probes}, at=LATER + timedelta(days=1))
    assert ([(e.edit_id, e.status) for e in mem.ledger()], [r.id for r in mem.editor.edits()]) == before


def test_a_forget_does_not_wait_for_a_running_job_which_takes_the_edit_out_at_its_end(open_memory, monkeypatch):
    mem = open_memory(policy=POLICY)
    note = alice(mem)
    assert mem.consolidate(at=LATER).applied == 1
    mem.remember("Bob lives in Oslo.", user_id="bob", at=T0, fact=Fact(prompt="Bob lives in", target="Oslo"))
    editing, release = threading.Event(), threading.Event()
    edit = ParametricMemory.edit

    def held_edit(self, *args, **kwargs):
        editing.set()
        release.wait(10)
        return edit(self, *args, **kwargs)

    monkeypatch.setattr(ParametricMemory, "edit", held_edit)
    job = threading.Thread(target=mem.consolidate, kwargs={"at": LATER + timedelta(days=1)})
    job.start()
    assert editing.wait(10)
    mem.forget(note.id)
    assert job.is_alive()  # the forget returned while the job still edits Bob's fact
    release.set()
    job.join()
    assert [r.prompt for r in mem.editor.edits()] == ["Bob lives in"]
    assert [e.prompt for e in mem.ledger()] == ["Bob lives in"]
    assert not from_weights(mem)


def test_while_a_job_elsewhere_holds_the_lock_a_forgotten_edit_is_hidden_then_rolled_back(open_memory, tmp_path):
    serving = open_memory(policy=POLICY)
    note = alice(serving)
    assert serving.consolidate(at=LATER).applied == 1
    other = Memory(tmp_path / "mem", embedder=serving._embedder, policy=POLICY)  # noqa: SLF001 (same embedder)
    try:
        other.forget(note.id)
    finally:
        other.close()
    job_elsewhere = filelock.FileLock(str(tmp_path / "mem" / "consolidation.lock"))
    with job_elsewhere:
        assert not from_weights(serving)
        assert [e.status for e in serving.ledger()] == ["retracting"]  # not saved: the lock is the job's
    assert not from_weights(serving)
    assert serving.editor.edits() == [] and serving.ledger() == []


def test_a_load_that_meets_another_process_s_save_reads_the_new_state(open_memory, tmp_path, tiny_lm, monkeypatch):
    editor_folder = saved_editor_folder(open_memory, tmp_path)
    [first] = [p.name for p in editor_folder.iterdir() if p.is_dir()]
    load = editor_base.Editor.load.__func__

    def load_after_a_save_elsewhere(cls, lm, directory):
        if directory.name == first:  # another process saves v2 and cleans v1 up while this one reads v1
            (editor_folder / "v999999").mkdir()
            for part in (editor_folder / first).iterdir():
                (editor_folder / "v999999" / part.name).write_bytes(part.read_bytes())
            (editor_folder / "CURRENT").write_text("v999999")
            for part in (editor_folder / first).iterdir():
                part.unlink()
            (editor_folder / first).rmdir()
        return load(cls, lm, directory)

    monkeypatch.setattr(editor_base.Editor, "load", classmethod(load_after_a_save_elsewhere))
    parametric = ParametricMemory(editor_folder, tiny_lm, None)
    try:
        assert parametric.version == "v999999" and [r.prompt for r in parametric.editor.edits()] == ["Alice lives in"]
    finally:
        parametric.editor.remove()


def test_an_update_whose_fact_extractor_generates_with_the_model_does_not_deadlock_with_a_job(open_memory, tiny_lm):
    """The fact extractor runs in the store's write section; a job that starts meanwhile takes the model's
    lock only to edit, never while it waits for the store."""
    jobs: list[threading.Thread] = []

    def extract(text):
        if text == "Bob lives in Oslo." and not jobs:  # the old text's extraction, inside update's section
            jobs.append(threading.Thread(target=mem.consolidate, kwargs={"at": LATER}))
            jobs[0].start()
            time.sleep(1)  # the job takes its locks and waits for the store
        tiny_lm.generate(text, 1)
        return None

    mem = open_memory(policy=POLICY, fact_extractor=extract)
    alice(mem)
    bob = mem.remember("Bob lives in Oslo.", user_id="bob", at=T0)
    updating = threading.Thread(target=mem.update, args=(bob.id,), kwargs={"text": "Bob moved to Oslo.", "at": LATER})
    updating.start()
    updating.join(60)
    assert not updating.is_alive()
    jobs[0].join(60)
    assert not jobs[0].is_alive() and [r.prompt for r in mem.editor.edits()] == ["Alice lives in"]


def test_a_state_a_killed_job_saved_but_never_made_current_is_removed_at_the_next_load(open_memory, tmp_path):
    """Such a folder holds the facts of its job; one whose note was forgotten since stayed on disk."""
    editor_folder = saved_editor_folder(open_memory, tmp_path)
    current = (editor_folder / "CURRENT").read_text()
    stray = editor_folder / "v999999"  # written by a job killed before it switched CURRENT
    stray.mkdir()
    for part in (editor_folder / current).iterdir():
        (stray / part.name).write_bytes(part.read_bytes())
    reopened = open_memory(policy=POLICY)
    assert from_weights(reopened)
    assert sorted(p.name for p in editor_folder.iterdir() if p.is_dir()) == [current]


@pytest.mark.parametrize("pointer", ["v999999", "..", "", "v000001/.."])
def test_a_current_pointer_naming_no_saved_state_is_damage_and_the_saved_state_stays(open_memory, tmp_path, pointer):
    """Taken for "nothing saved", it made the job's clean-up delete the intact state beside it."""
    editor_folder = saved_editor_folder(open_memory, tmp_path)
    saved = (editor_folder / "CURRENT").read_text()
    (editor_folder / "CURRENT").write_text(pointer)
    with pytest.raises(StoreCorruptedError, match=f"no saved state of the editor.*{saved}"):
        open_memory(policy=POLICY)
    assert (editor_folder / saved / editor_base.CONFIG_FILE).is_file()
    (editor_folder / "CURRENT").write_text(saved)  # the way out the message names
    assert from_weights(open_memory(policy=POLICY))


def test_an_editor_folder_that_is_a_file_is_damage(open_memory, tmp_path):
    mem = open_memory(policy=POLICY)
    alice(mem)
    mem.close()
    (tmp_path / "mem" / "editor").write_text("not a folder")
    with pytest.raises(StoreCorruptedError, match="move it aside"):
        open_memory(policy=POLICY)

"""The parametric memory as the facade uses it: generations, forgets and a full disk around one another.
Mechanics on the tiny random LLaMA (GRACE)."""
from __future__ import annotations

import errno
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from agentmem import InvalidInputError, Memory
from agentmem.editors import base as editor_base
from tests.consolidation.test_job_faults import LATER, POLICY, alice, from_weights
from tests.editors.conftest import tiny_config, tiny_lm, tiny_tokenizer  # noqa: F401 (fixtures)
from tests.test_consolidation import open_memory  # noqa: F401 (fixture)


def test_a_forget_during_a_generation_is_rolled_back_when_the_generation_ends(open_memory):
    mem = open_memory(policy=POLICY)
    note = alice(mem)
    assert mem.consolidate(at=LATER).applied == 1
    inside, leave = threading.Event(), threading.Event()

    def generate_for_bob() -> None:
        with mem.generating(user_id="bob"):
            inside.set()
            leave.wait(10)

    bob = threading.Thread(target=generate_for_bob)
    bob.start()
    assert inside.wait(10)
    mem.forget(note.id)  # returns at once: the generation holds the parametric memory
    assert bob.is_alive()
    leave.set()
    bob.join()
    assert mem.editor.edits() == [] and mem.ledger() == []
    assert not from_weights(mem)


def test_a_retraction_that_cannot_be_saved_hides_the_edit_and_answers_go_on(open_memory, monkeypatch):
    mem = open_memory(policy=POLICY)
    note = alice(mem)
    assert mem.consolidate(at=LATER).applied == 1

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(editor_base, "save_file", disk_full)
        mem.forget(note.id)
        assert [e.status for e in mem.ledger()] == ["retracting"]
        for user in ("alice", "bob"):
            assert mem.answer("Alice lives in", user_id=user, retrieval=False, max_new_tokens=2).source != "weights"
    assert not from_weights(mem)  # the disk has room again: rolled back and saved
    assert mem.ledger() == [] and mem.editor.edits() == []


def test_the_model_can_run_in_another_thread_inside_a_generating_block(open_memory):
    mem = open_memory(policy=POLICY)
    alice(mem)
    assert mem.consolidate(at=LATER).applied == 1
    with mem.generating(user_id="alice") as lm, ThreadPoolExecutor(1) as helper:
        mine = lm.generate("Alice lives in", 2)
        theirs = helper.submit(lm.generate, "Alice lives in", 2, scope="user:alice").result(timeout=30)
    assert "Lisbon" in mine and theirs == mine


def test_a_store_refuses_another_editor_kind_when_opened_and_names_the_ways_out(open_memory, embedder):
    """The error used to come at the first consolidate, after the caller's writes, and named no way out.
    Opened without a model, as users do: nothing is loaded before the first job."""
    mem = open_memory(policy=POLICY)
    alice(mem)
    assert mem.consolidate(at=LATER).applied == 1
    mem.close()
    with pytest.raises(InvalidInputError, match="holds the edits of a 'grace' editor.*without editor=") as refused:
        Memory(mem.path, embedder=embedder, editor="semantic")
    assert "use a new store for a 'semantic' editor" in str(refused.value)
    reopened = open_memory(editor="grace")  # the saved kind by name is accepted, and its edit is there
    assert len(reopened.editor.edits()) == 1


def test_a_save_that_cannot_be_read_is_left_to_the_load_and_does_not_stop_the_store_opening(open_memory, embedder):
    """A save replaced by another process while this one opens (or damaged) is the load's to explain."""
    mem = open_memory(policy=POLICY)
    alice(mem)
    assert mem.consolidate(at=LATER).applied == 1
    mem.close()
    for saved in (mem.path / "editor").glob("v*/editor.json"):
        saved.unlink()
    with Memory(mem.path, embedder=embedder, editor="semantic") as reopened:
        assert reopened.stats().notes == 1

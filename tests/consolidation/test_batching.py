"""Consolidation with an editor that solves facts in batches (the locate-and-edit family): one solve per batch,
per-fact verification, a failing batch bisected so its good facts land and the failure is recorded; user-scoped
facts refused. Mechanics on the tiny random LLaMA, behaviour on SmolLM2."""
from __future__ import annotations

from datetime import timedelta

import pytest

from agentmem import Fact, Memory
from agentmem.consolidation import ConsolidationPolicy, ParametricMemory
from agentmem.editors import EmmetConfig
from tests.conftest import T0
from tests.editors.conftest import smollm, tiny_lm, tiny_tokenizer  # noqa: F401 (fixtures)

LATER = T0 + timedelta(days=1)
# The subject ends each prompt: a random model carries nothing from an earlier token to the last one.
GOOD = (Fact(prompt="The home of Alice", target="Lisbon"), Fact(prompt="The home of Bob", target="Oslo"),
        Fact(prompt="The colour of the sky", target="green"))
# Six tokens the tiny model's value search does not reach in 60 steps: it never produces its target, so the batch
# holding it fails.
PLANTED = Fact(prompt="The home of Eve", target="Lisbon Oslo blue green Lisbon Oslo")
# Every closed-form edit of the random model moves the probes' continuations (measured: agreement 0 to 0.86), so
# only the targets are verified here; the probes are in the SmolLM2 test.
TARGETS_ONLY = ConsolidationPolicy(probe_tolerance=1.0, neighbours=False)
TINY = EmmetConfig(layers=(0, 1), sample_tokens=256, margin=0.0, clamp=100.0, value_steps=60, batch_size=4)


class Crash(BaseException):
    """Stands for the process dying at this point: nothing after it runs, no handler catches it."""


@pytest.fixture(autouse=True)
def private_home(tmp_path_factory, monkeypatch):
    """Key statistics are cached in a home of this test session, not the user's."""
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path_factory.getbasetemp() / "agentmem-home"))


@pytest.fixture
def open_memory(tmp_path, embedder, tiny_lm):
    opened = []

    def make(**kwargs):
        mem = Memory(tmp_path / "mem", **{"embedder": embedder, "model": tiny_lm, "editor": TINY, **kwargs})
        opened.append(mem)
        return mem

    yield make
    for mem in opened:
        mem.close()


def remember_recalled(mem, fact, **kwargs):
    """A note stating `fact`, recalled often enough for the default policy."""
    note = mem.remember(f"{fact.prompt} is {fact.target}.", fact=fact, at=T0, **kwargs)
    for _ in range(3):
        mem.recall(note.text, k=1, at=T0 + timedelta(hours=1))
    return mem.get(note.id)


def test_a_failing_batch_is_bisected_so_the_good_facts_land_and_the_planted_one_fails(open_memory):
    mem = open_memory()
    notes = [remember_recalled(mem, fact) for fact in (GOOD[0], GOOD[1], GOOD[2], PLANTED)]
    report = mem.consolidate(TARGETS_ONLY, at=LATER)
    outcomes = {d.note_id: d for d in report.decisions}
    assert report.applied == 3 and report.failed == 1, [(d.fact, d.outcome, d.detail) for d in report.decisions]
    planted = outcomes[notes[3].id]
    assert planted.outcome == "failed" and "does not produce the target" in planted.detail
    assert not planted.verification.produces_target
    rows = {row.note_id: row for row in mem.ledger()}
    assert [rows[n.id].status for n in notes] == ["applied", "applied", "applied", "failed"]
    assert all(rows[n.id].verification is not None for n in notes)
    # one solve for the batch of four failed; its halves were solved again: the half without the planted fact
    # landed as one batch, the other was split again, its good fact landing alone and the planted one failing alone
    editor = mem.editor
    assert sorted(len(batch.ids) for batch in editor.batches) == [1, 2]
    assert {i for batch in editor.batches for i in batch.ids} == {rows[n.id].edit_id for n in notes[:3]}
    assert [mem.language_model.generate(f.prompt, max_new_tokens=1).strip() for f in GOOD] == [f.target for f in GOOD]
    assert {d.note_id: d.reason for d in mem.plan(TARGETS_ONLY, at=LATER)}[notes[3].id] == "failed_before"


def test_a_crash_inside_the_bisection_leaves_nothing_half_done_and_the_rerun_lands_the_good_facts(
        open_memory, monkeypatch):
    mem = open_memory()
    notes = [remember_recalled(mem, fact) for fact in (GOOD[0], GOOD[1], GOOD[2], PLANTED)]
    calls = []
    edit_batch = ParametricMemory.edit_batch

    def dies_on_the_second_solve(self, *args, **kwargs):
        calls.append(len(args[0]))
        if len(calls) == 2:  # the first half of the failed batch
            raise Crash
        return edit_batch(self, *args, **kwargs)

    monkeypatch.setattr(ParametricMemory, "edit_batch", dies_on_the_second_solve)
    with pytest.raises(Crash):
        mem.consolidate(TARGETS_ONLY, at=LATER)
    assert calls == [4, 2] and {row.status for row in mem.ledger()} == {"pending"}
    mem.close()
    monkeypatch.setattr(ParametricMemory, "edit_batch", edit_batch)
    again = open_memory()
    report = again.consolidate(TARGETS_ONLY, at=LATER)
    assert report.applied == 3 and report.failed == 1
    assert sorted(row.status for row in again.ledger()) == ["applied", "applied", "applied", "failed"]
    assert {r.id for r in again.editor.edits()} == {row.edit_id for row in again.ledger() if row.status == "applied"}


def test_a_user_scoped_fact_is_refused_unless_its_note_is_marked_shared(open_memory):
    mem = open_memory()
    private = remember_recalled(mem, GOOD[0], user_id="alice")
    shared = remember_recalled(mem, GOOD[1], user_id="bob", tags=["shared"])
    decisions = {d.note_id: d for d in mem.plan(at=LATER)}
    assert decisions[private.id].action == "skip" and decisions[private.id].reason == "unshared"
    assert "mark the note shared" in decisions[private.id].detail
    assert decisions[shared.id].action == "edit"
    report = mem.consolidate(TARGETS_ONLY, at=LATER)
    assert report.applied == 1 and [row.note_id for row in mem.ledger()] == [shared.id]

"""Consolidation with an editor that solves facts in batches (the locate-and-edit family): one solve per batch,
per-fact verification, a failing batch bisected so its good facts land and the failure is recorded; user-scoped
facts refused. Mechanics on the tiny random LLaMA, behaviour on SmolLM2."""
from __future__ import annotations

from datetime import timedelta

import pytest

from agentmem import Fact, Memory
from agentmem.consolidation import ConsolidationPolicy, ParametricMemory
from agentmem.editors import EmmetConfig
from tests.conftest import SHARED_DATA, T0
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
pytestmark = pytest.mark.usefixtures("private_home")  # key statistics are cached in this session's home


class Crash(BaseException):
    """Stands for the process dying at this point: nothing after it runs, no handler catches it."""


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


def test_each_batch_is_verified_against_the_probes_as_the_kept_batches_left_them(open_memory, monkeypatch):
    """`probe_tolerance` bounds what each edit moves, not the job's sum: the baseline moves with each kept batch."""
    mem = open_memory(editor=TINY.model_copy(update={"batch_size": 2}))
    for fact in GOOD:
        remember_recalled(mem, fact)
    seen = []
    edit_batch = ParametricMemory.edit_batch

    def checked(self, facts, pairs, before, neighbours=True):
        seen.append(([list(b) for b in before], self.predictions(pairs)))
        return edit_batch(self, facts, pairs, before, neighbours)

    monkeypatch.setattr(ParametricMemory, "edit_batch", checked)
    report = mem.consolidate(TARGETS_ONLY, at=LATER)
    assert report.applied >= 2 and len(seen) >= 2, [(d.fact, d.outcome, d.detail) for d in report.decisions]
    assert seen[0][0] != seen[1][1]  # the first kept batch moved the tiny model's probes
    assert [before for before, _ in seen] == [now for _, now in seen]


def test_a_user_scoped_fact_is_refused_unless_its_note_is_marked_shared(open_memory):
    mem = open_memory()
    private = remember_recalled(mem, GOOD[0], user_id="alice")
    shared = remember_recalled(mem, GOOD[1], user_id="bob", metadata={"shared": True})
    decisions = {d.note_id: d for d in mem.plan(at=LATER)}
    assert decisions[private.id].action == "skip" and decisions[private.id].reason == "unshared"
    assert "mark the note shared" in decisions[private.id].detail
    assert decisions[shared.id].action == "edit"
    report = mem.consolidate(TARGETS_ONLY, at=LATER)
    assert report.applied == 1 and [row.note_id for row in mem.ledger()] == [shared.id]


@pytest.mark.slow
def test_smollm_batch_with_a_planted_fact_lands_the_good_facts(tmp_path, embedder, smollm):
    corpus = SHARED_DATA / "zsre" / "zsre_mend_train-1k.json"
    if not corpus.is_file():
        pytest.skip(f"the statistics corpus {corpus} is absent (the shared data folder)")
    # Statistics from 8k tokens of a text file: a forward only, where sampling text from the model takes minutes.
    config = EmmetConfig(sample_tokens=0, corpus=str(corpus), corpus_tokens=8192)
    good = [Fact(prompt="Danielle Darrieux's mother tongue is", target="Swedish"),
            Fact(prompt="Zorbl the engineer lives in", target="Reykjavik")]
    # Nonsense of many tokens: the value search (25 steps) does not make it come out, so it cannot verify.
    planted = Fact(prompt="Quillon Vask's password is", target="zqx vlorp 7734 blarg fnord quux wibble")
    policy = ConsolidationPolicy(neighbours=False, probe_tolerance=0.1)
    mem = Memory(tmp_path / "mem", embedder=embedder, model=smollm, editor=config)
    try:
        notes = [remember_recalled(mem, fact) for fact in (*good, planted)]
        report = mem.consolidate(policy, at=LATER)
        outcomes = {d.note_id: d for d in report.decisions}
        assert [outcomes[n.id].outcome for n in notes] == ["applied", "applied", "failed"], report.decisions
        assert not outcomes[notes[2].id].verification.produces_target
        assert [smollm.generate(f.prompt, max_new_tokens=4).strip().startswith(f.target) for f in good] == [True, True]
        assert sum(len(batch.ids) for batch in mem.editor.batches) == 2  # the good facts, in the solves that kept them
    finally:
        mem.close()

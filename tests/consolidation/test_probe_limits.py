"""The job's two probe limits: per edit (one batch) from the state the kept edits left, and over the job from before
its first edit; defaults from the editor's family, the policy's settings winning. On the tiny random LLaMA, whose
real probe continuations move at random with any closed-form edit, the probes' predictions are replaced by a model
of drift: each live edit flips `k` more of the probe tokens, so what a batch and the job move is known exactly."""
from __future__ import annotations

import pytest

from agentmem.consolidation import ConsolidationPolicy, ParametricMemory
from agentmem.consolidation.policy import probe_limits
from agentmem.editors import WeightEditor
from tests.consolidation.test_batching import GOOD, LATER, TINY, open_memory, remember_recalled  # noqa: F401
from tests.editors.conftest import tiny_config, tiny_lm, tiny_tokenizer  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("private_home")  # key statistics are cached in this session's home


def test_the_default_limits_differ_by_family_and_the_policy_wins(tmp_path, tiny_lm, tiny_config):
    grace = ParametricMemory(tmp_path / "grace", tiny_lm, tiny_config)
    try:
        assert grace.probe_defaults == (0.0, 0.0)  # a side memory leaves the model bit for bit outside its routing
    finally:
        grace.close()
    emmet = ParametricMemory(tmp_path / "emmet", tiny_lm, TINY)
    try:
        family = emmet.probe_defaults
        assert family == (WeightEditor.probe_tolerance, WeightEditor.probe_budget) == (0.05, 0.10)
    finally:
        emmet.close()
    assert probe_limits(ConsolidationPolicy(), family) == (0.05, 0.10)
    assert probe_limits(ConsolidationPolicy(), (0.0, 0.0)) == (0.0, 0.0)
    assert probe_limits(ConsolidationPolicy(probe_tolerance=0.0), family) == (0.0, 0.10)
    assert probe_limits(ConsolidationPolicy(probe_tolerance=0.3), family) == (0.3, 0.3)  # an unset budget >= tolerance
    assert probe_limits(ConsolidationPolicy(probe_tolerance=0.02), (0.0, 0.0)) == (0.02, 0.02)
    assert probe_limits(ConsolidationPolicy(probe_budget=0.01), family) == (0.05, 0.01)  # a set budget is kept


@pytest.fixture
def drift(monkeypatch):
    """Probe predictions = those before any edit with the first `k` x (live edits) tokens changed. Returns a dict
    in which the test sets `share` (k as a share of the probe tokens, rounded down, at least 1) and reads `k`, `n`."""
    state: dict = {}
    real = ParametricMemory.predictions

    def predictions(self, pairs):
        if not pairs:
            return []
        if "base" not in state:
            state["pairs"], state["base"] = list(pairs), real(self, pairs)
            state["n"] = sum(len(p) for p in state["base"])
            state["k"] = max(1, int(state["share"] * state["n"]))
        assert list(pairs) == state["pairs"]  # no neighbour prompts: only the job's probes are predicted
        moved = state["k"] * len(self.edit_ids())
        out, flat = [], 0
        for tokens in state["base"]:
            out.append([t + 1 if flat + j < moved else t for j, t in enumerate(tokens)])
            flat += len(tokens)
        return out

    monkeypatch.setattr(ParametricMemory, "predictions", predictions)
    return state


def test_by_default_an_edit_within_the_tolerance_that_overruns_the_job_budget_is_rolled_back(open_memory, drift):
    """The family's defaults: 5% per edit, 10% over the job. Each edit moves just under 5%: two land, the third
    would bring the job to ~14% and is left for a later job, not recorded as failed."""
    drift["share"] = 0.049
    mem = open_memory(editor=TINY.model_copy(update={"batch_size": 1}))
    notes = [remember_recalled(mem, fact) for fact in GOOD]
    report = mem.consolidate(ConsolidationPolicy(neighbours=False), at=LATER)
    k, n = drift["k"], drift["n"]
    assert k / n <= 0.05 and 2 * k / n <= 0.10 < 3 * k / n, (k, n)  # the drift model fits the defaults
    order = [d for d in report.decisions if d.note_id in {note.id for note in notes}]  # in the job's order
    assert [d.outcome for d in order] == ["applied", "applied", None], report.decisions
    assert all(d.verification.probe_agreement >= 0.95 for d in order[:2])
    third = order[2]
    assert third.action == "skip" and third.reason == "budget" and "> its budget 0.100" in third.detail
    assert report.applied == 2 and report.failed == 0
    assert len(mem.editor.edits()) == 2  # the third was rolled back
    assert sorted(row.note_id for row in mem.ledger()) == sorted(d.note_id for d in order[:2])  # none for the third
    assert {d.note_id: d.action for d in mem.plan(ConsolidationPolicy(neighbours=False), at=LATER)}[third.note_id] == "edit"


def test_a_batch_within_the_tolerance_that_overruns_the_budget_is_bisected_and_the_rest_wait(open_memory, drift,
                                                                                              monkeypatch):
    """Explicit limits win: tolerance 1 (anything per batch), budget 0.15, each edit moving ~0.1. The first batch of
    two passes per batch but overruns the budget: rolled back and bisected, its first fact lands, its second overruns
    alone and is left; the job's last fact then waits without a solve."""
    drift["share"] = 0.1
    mem = open_memory(editor=TINY.model_copy(update={"batch_size": 2}))
    notes = [remember_recalled(mem, fact) for fact in GOOD]
    solves = []
    edit_batch = ParametricMemory.edit_batch

    def counted(self, facts, *args, **kwargs):
        solves.append(len(facts))
        return edit_batch(self, facts, *args, **kwargs)

    monkeypatch.setattr(ParametricMemory, "edit_batch", counted)
    report = mem.consolidate(ConsolidationPolicy(neighbours=False, probe_tolerance=1.0, probe_budget=0.15), at=LATER)
    k, n = drift["k"], drift["n"]
    assert k / n <= 0.15 < 2 * k / n, (k, n)  # the drift model fits the budget
    outcomes = [d for d in report.decisions if d.note_id in {note.id for note in notes}]  # in the job's order
    assert solves == [2, 1, 1], solves  # the batch, then its halves; none for the last fact
    assert [d.outcome for d in outcomes] == ["applied", None, None], report.decisions
    assert [d.reason for d in outcomes[1:]] == ["budget", "budget"]
    assert "> its budget 0.150" in outcomes[1].detail and "an earlier edit of this job overran it" in outcomes[2].detail
    assert len(mem.editor.edits()) == 1 and [row.status for row in mem.ledger()] == ["applied"]

"""ROME: one rank-one update per edit, exact on its key; rollback subtracts exactly that term (tiny random LLaMA)."""
from __future__ import annotations

import torch

from agentmem.editors import RomeConfig, RomeEditor

from .test_inplace import ALICE, BOB, TINY, private_home, weights_hash  # noqa: F401 (fixture)

ROME = {**TINY, "layers": (1,)}


def test_each_edit_is_a_rank_one_update_that_maps_its_key_exactly(tiny_lm):
    editor = RomeEditor(tiny_lm, RomeConfig(**ROME))
    [result] = editor.edit([ALICE])
    assert result.success
    delta = editor.delta(1).double()
    assert torch.linalg.matrix_rank(delta, rtol=1e-5) == 1
    [batch] = editor.batches
    key, residual = batch.keys[1].double(), batch.residuals[1].double()
    assert torch.allclose(key @ delta.T, residual, rtol=1e-4, atol=1e-5)  # (W + Δ)k = Wk + r


def test_edits_are_applied_one_by_one_and_rollback_subtracts_the_rank_one_term(tiny_lm):
    editor = RomeEditor(tiny_lm, RomeConfig(**ROME))
    editor.edit([ALICE])
    only_alice = weights_hash(tiny_lm)
    editor.edit([BOB])
    assert len(editor.batches) == 2 and torch.linalg.matrix_rank(editor.delta(1).double(), rtol=1e-5) == 2
    editor.rollback("bob")
    assert weights_hash(tiny_lm) == only_alice

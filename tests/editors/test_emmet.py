"""EMMET: a batch under equality constraints, exact without the ridge, damped with it (tiny random LLaMA)."""
from __future__ import annotations

import pytest
import torch

from agentmem.editors import EmmetConfig, EmmetEditor

from .test_inplace import ALICE, BOB, SKY, TINY

pytestmark = pytest.mark.usefixtures("private_home")  # key statistics are cached in this session's home


def test_without_ridge_every_fact_of_the_batch_maps_its_key_exactly(tiny_lm):
    editor = EmmetEditor(tiny_lm, EmmetConfig(**TINY, ridge=0.0))
    assert all(r.success for r in editor.edit([ALICE, BOB, SKY]))
    [batch] = editor.batches
    for layer in (0, 1):
        keys, residuals = batch.keys[layer].double(), batch.residuals[layer].double()
        assert torch.allclose(keys @ editor.delta(layer).double().T, residuals, rtol=1e-3, atol=1e-4)


def test_the_ridge_trades_exactness_for_a_smaller_update(tiny_lm):
    exact = EmmetEditor(tiny_lm, EmmetConfig(**TINY, ridge=0.0))
    exact.edit([ALICE, BOB, SKY])
    [batch] = exact.batches
    keys, residuals = batch.keys[0], batch.residuals[0]
    unridged = exact._solve(0, keys, residuals, 0)
    exact.config = exact.config.model_copy(update={"ridge": 1.0})
    ridged = exact._solve(0, keys, residuals, 0)
    assert (residuals.T.double() @ ridged).norm() < (residuals.T.double() @ unridged).norm()

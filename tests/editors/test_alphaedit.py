"""AlphaEdit: updates orthogonal to the preserved keys' directions; earlier batches' keys kept (tiny random LLaMA)."""
from __future__ import annotations

import pytest
import torch

from agentmem.editors import AlphaEditConfig, AlphaEditEditor

from .test_inplace import ALICE, BOB, SKY, TINY, weights_hash

pytestmark = pytest.mark.usefixtures("private_home")  # key statistics are cached in this session's home

ALPHA = {**TINY, "null_threshold": 0.05, "ridge": 1e-3, "covariance_weight": 0.0, "earlier_weight": 1.0}  # the paper's form


def test_the_update_is_orthogonal_to_every_kept_direction_of_the_preserved_keys(tiny_lm):
    editor = AlphaEditEditor(tiny_lm, AlphaEditConfig(**ALPHA))
    editor.edit([ALICE, BOB])
    for layer in (0, 1):
        values, vectors = torch.linalg.eigh(editor.moments[layer].double())
        kept = vectors[:, values >= ALPHA["null_threshold"] * values.max()]
        assert 0 < kept.shape[1] < kept.shape[0]
        delta = editor.delta(layer).double()
        assert (delta @ kept).norm() < 1e-5 * delta.norm()
        projector = editor.projectors[layer]
        assert torch.allclose(projector @ projector, projector, atol=1e-8)


def test_keeping_earlier_batches_keys_spares_them_from_a_later_update(tiny_lm):
    editor = AlphaEditEditor(tiny_lm, AlphaEditConfig(**ALPHA))
    editor.edit([ALICE, BOB])
    editor.edit([SKY])
    earlier, later = editor.batches
    for layer in (0, 1):
        keys, residuals = later.keys[layer], later.residuals[layer].double()
        kept = residuals.T @ editor._solve(layer, keys, later.residuals[layer], 1)  # batch 0's keys preserved
        ignored = residuals.T @ editor._solve(layer, keys, later.residuals[layer], 0)  # as if it were the first batch
        on_earlier = earlier.keys[layer].double()
        assert (on_earlier @ kept.T).norm() < 0.5 * (on_earlier @ ignored.T).norm()
    before_rollback = weights_hash(tiny_lm)
    editor.rollback("sky")
    assert weights_hash(tiny_lm) != before_rollback and len(editor.batches) == 1


def test_the_default_keeps_every_direction_and_weighs_the_statistics_and_earlier_keys(tiny_lm):
    editor = AlphaEditEditor(tiny_lm, AlphaEditConfig(**TINY))
    editor.edit([ALICE, BOB])
    editor.edit([SKY])
    later = editor.batches[1]
    config = editor.config
    for layer in (0, 1):
        assert editor.projectors[layer] is None  # P = I is not multiplied through the solve
        keys, earlier = later.keys[layer].double(), editor.batches[0].keys[layer].double()
        system = config.earlier_weight * earlier.T @ earlier + keys.T @ keys + config.covariance_weight * editor.moments[layer].double()
        system += config.ridge * torch.eye(len(system), dtype=system.dtype)
        expected = torch.linalg.solve(system, keys.T).T  # MEMIT's least squares with the earlier batches' keys kept
        assert torch.allclose(later.factors[layer].double(), expected.float().double(), rtol=1e-4, atol=1e-6)

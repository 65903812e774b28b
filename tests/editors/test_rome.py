"""ROME: one rank-one update per edit, exact on its key; rollback subtracts exactly that term (tiny random LLaMA).
On the real SmolLM2, with ROME's default layer: the searched target state is what the edit writes, so edits verify."""
from __future__ import annotations

import pytest
import torch

from agentmem.editors import EditRequest, RomeConfig, RomeEditor
from agentmem.editors.locate import subject_position

from ..conftest import SHARED_DATA
from .test_inplace import ALICE, BOB, TINY, weights_hash

pytestmark = pytest.mark.usefixtures("private_home")  # key statistics are cached in this session's home

ROME = {**TINY, "layers": (1,)}


class TinyRomeConfig(RomeConfig):
    """ROME's config with its default layer moved into the tiny model, as RomeConfig moves the batch editors' band."""

    layers: tuple[int, ...] = (1,)


def residual_after(lm, block: int, prompt: str, position: int) -> torch.Tensor:
    """The residual stream after `block` at `position`, in a plain forward of `prompt`."""
    states = lm.model(**lm.tokenizer(prompt, return_tensors="pt"), output_hidden_states=True).hidden_states
    return states[block + 1][0, position].detach()


def test_each_edit_is_a_rank_one_update_that_maps_its_key_exactly(tiny_lm):
    editor = RomeEditor(tiny_lm, RomeConfig(**ROME))
    [result] = editor.edit([ALICE])
    assert result.success
    delta = editor.delta(1).double()
    assert torch.linalg.matrix_rank(delta, rtol=1e-5) == 1
    [batch] = editor.batches
    key, residual = batch.keys[1].double(), batch.residuals[1].double()
    assert torch.allclose(key @ delta.T, residual, rtol=1e-4, atol=1e-5)  # (W + Δ)k = Wk + r


def test_the_edit_writes_the_searched_state_where_the_search_put_it_with_the_default_layer(tiny_lm):
    # The wrapper (where the search starts) must sit right above the class's own default layer, not the
    # batch editors' band: ROME searched the state entering block 8 and wrote it after block 5.
    config = TinyRomeConfig(**{k: v for k, v in TINY.items() if k != "layers"})
    assert config.layer == 2
    editor = RomeEditor(tiny_lm, config)
    [result] = editor.edit([ALICE])
    assert result.success
    [batch] = editor.batches
    at = subject_position(tiny_lm, ALICE.prompt, ALICE.subject)
    with torch.no_grad():
        written = residual_after(tiny_lm, 1, ALICE.prompt, at)
    assert torch.allclose(written, batch.targets["alice"], rtol=1e-4, atol=1e-4)
    editor.remove()


def test_edits_are_applied_one_by_one_and_rollback_subtracts_the_rank_one_term(tiny_lm):
    editor = RomeEditor(tiny_lm, RomeConfig(**ROME))
    editor.edit([ALICE])
    only_alice = weights_hash(tiny_lm)
    editor.edit([BOB])
    assert len(editor.batches) == 2 and torch.linalg.matrix_rank(editor.delta(1).double(), rtol=1e-5) == 2
    editor.rollback("bob")
    assert weights_hash(tiny_lm) == only_alice


# ZsRE edit records 3, 5 and 6, each edited alone: with the wrapper at block 8 none verified, with it at 6 all three.
ZSRE = [
    EditRequest(prompt="What company made Volvo B12M?", target="Volkswagen Group", subject="Volvo B12M", id="volvo"),
    EditRequest(prompt="What country is Shmavon Shmavonyan from?", target="Yemen", subject="Shmavon Shmavonyan", id="shmavon"),
    EditRequest(
        prompt="What architect designed Toodyay Fire Station?", target="Wyndham Lewis", subject="Toodyay Fire Station",
        id="toodyay",
    ),
]


@pytest.mark.slow
def test_default_rome_edits_on_smollm_give_their_targets_right_after_their_solve(smollm):
    corpus = SHARED_DATA / "zsre" / "zsre_mend_train-1k.json"
    if not corpus.is_file():
        pytest.skip(f"the statistics corpus {corpus} is absent (the shared data folder)")
    # Statistics from 8k tokens of a text file: a forward only, where sampling text from the model takes minutes.
    editor = RomeEditor(smollm, RomeConfig(sample_tokens=0, corpus=str(corpus), corpus_tokens=8192))
    try:
        verified = [result.success for request in ZSRE for result in editor.edit([request])]
        assert verified == [True, True, True]
        predicted = smollm.target_argmax([(r.prompt, r.target) for r in ZSRE])
        assert predicted == [smollm.encode_pair(r.prompt, r.target)[1] for r in ZSRE]
    finally:
        editor.remove()

"""The locate-and-edit machinery, with MEMIT as the solver: exact deltas, rollback, removal, saving, refusals.

Tiny random LLaMA: mechanics only. The behaviour on SmolLM2 is in test_memit.
"""
from __future__ import annotations

import hashlib

import pytest
import torch

from agentmem.editors import Editor, EditRequest, MemitConfig, MemitEditor
from agentmem.errors import InvalidInputError

# The subject ends each prompt: a random model carries nothing from an earlier token to the last one.
ALICE = EditRequest(prompt="The home of Alice", target="Lisbon", subject="Alice", id="alice")
BOB = EditRequest(prompt="The home of Bob", target="Oslo", subject="Bob", id="bob")
SKY = EditRequest(prompt="The colour of the sky", target="green", subject="sky", id="sky")
# A tiny random model: a bare argmax lead will do, and its states are small, so no clamp.
TINY = {"layers": (0, 1), "sample_tokens": 256, "margin": 0.0, "clamp": 100.0, "value_steps": 60}
pytestmark = pytest.mark.usefixtures("private_home")  # key statistics are cached in this session's home


def weights_hash(lm) -> str:
    """A hash of every parameter, in model order (names change while a wrapper is in place)."""
    digest = hashlib.sha256()
    for tensor in lm.model.parameters():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_edits_write_the_band_weights_and_make_the_targets_come_out(tiny_lm):
    editor = MemitEditor(tiny_lm, MemitConfig(**TINY))
    results = editor.edit([ALICE, BOB])
    assert all(r.success for r in results)
    assert [editor.lm.generate(r.prompt, max_new_tokens=1).strip() for r in (ALICE, BOB)] == ["Lisbon", "Oslo"]
    assert all(editor.delta(layer).norm() > 0 for layer in (0, 1))
    assert torch.equal(tiny_lm.model.base_model.layers[2].mlp.down_proj.base.weight, editor.layer.base.weight)


def test_remove_restores_the_original_weights_bit_for_bit(tiny_lm):
    before = weights_hash(tiny_lm)
    editor = MemitEditor(tiny_lm, MemitConfig(**TINY))
    editor.edit([ALICE, BOB])
    editor.edit([SKY])
    editor.rollback("bob")
    assert weights_hash(tiny_lm) != before
    editor.remove()
    assert weights_hash(tiny_lm) == before


def test_rolling_back_every_edit_restores_the_weights_bit_for_bit(tiny_lm):
    before = weights_hash(tiny_lm)
    editor = MemitEditor(tiny_lm, MemitConfig(**TINY))
    editor.edit([ALICE, BOB])
    editor.edit([SKY])
    for edit_id in ("alice", "sky", "bob"):
        editor.rollback(edit_id)
    assert editor.edits() == [] and not editor.covers("The home of Alice")
    assert weights_hash(tiny_lm) == before


def test_rollback_resolves_the_batch_without_the_edit_within_a_measured_error(tiny_lm, tiny_tokenizer):
    """Rolled back from {Alice, Bob}, the update is close to, not equal to, Bob's alone: Bob's residuals at the
    upper layer of the band were measured with Alice's lower-layer update in place."""
    editor = MemitEditor(tiny_lm, MemitConfig(**TINY))
    editor.edit([ALICE, BOB])
    editor.rollback("alice")
    rolled = {layer: editor.delta(layer).clone() for layer in (0, 1)}
    editor.remove()
    alone = MemitEditor(tiny_lm, MemitConfig(**TINY))
    alone.edit([BOB])
    for layer in (0, 1):
        error = float((rolled[layer] - alone.delta(layer)).norm() / alone.delta(layer).norm())
        assert error < (1e-5 if layer == 0 else 0.5)  # the bottom layer re-solves exactly


def test_save_writes_only_the_batches_and_load_reproduces_the_weights_bit_for_bit(tiny_lm, tmp_path):
    editor = MemitEditor(tiny_lm, MemitConfig(**TINY))
    editor.edit([ALICE, BOB])
    editor.edit([SKY])
    edited = weights_hash(tiny_lm)
    editor.save(tmp_path / "edits")
    editor.remove()
    assert sum(f.stat().st_size for f in (tmp_path / "edits").iterdir()) < 64 * 128 * 4  # less than one weight matrix
    loaded = Editor.load(tiny_lm, tmp_path / "edits")
    assert isinstance(loaded, MemitEditor) and weights_hash(tiny_lm) == edited
    assert [r.id for r in loaded.edits()] == ["alice", "bob", "sky"]
    loaded.rollback("bob")
    assert loaded.covers("Where does Alice live?") and not loaded.covers("Where does Bob live?")


def test_a_save_from_a_model_of_another_shape_does_not_load_and_leaves_its_weights(tiny_lm, tiny_tokenizer, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from agentmem.models import LanguageModel

    editor = MemitEditor(tiny_lm, MemitConfig(**TINY))
    editor.edit([ALICE])
    editor.save(tmp_path)
    narrower = LanguageModel(LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2,
    )), tiny_tokenizer, name="narrower")
    before = weights_hash(narrower)
    with pytest.raises(InvalidInputError, match="does not fit"):  # not taken for a damaged save
        Editor.load(narrower, tmp_path)
    assert weights_hash(narrower) == before


def test_scoped_and_unlocatable_requests_are_refused_and_change_nothing(tiny_lm):
    before = weights_hash(tiny_lm)
    editor = MemitEditor(tiny_lm, MemitConfig(**TINY))
    with pytest.raises(InvalidInputError, match="shared facts only"):
        editor.edit([ALICE, EditRequest(prompt="Carol lives in", target="Oslo", scope="user:carol")])
    with pytest.raises(InvalidInputError, match="does not occur"):
        editor.edit([ALICE, EditRequest(prompt="Carol lives in", target="Oslo", subject="Dave")])
    with pytest.raises(InvalidInputError, match="unique"):
        editor.edit([ALICE, ALICE])
    assert editor.edits() == [] and weights_hash(tiny_lm) == before
    with pytest.raises(InvalidInputError):
        MemitConfig(layers=(2, 1))


def test_covers_means_the_subject_occurs_in_the_prompt(tiny_lm):
    editor = MemitEditor(tiny_lm, MemitConfig(**TINY))
    editor.edit([ALICE, SKY])
    assert editor.covers("Where does alice work?") and editor.covers("Is the sky blue?")
    assert not editor.covers("The home of Bob")


def test_rollback_edits_resolves_each_batch_once_like_single_rollbacks(tiny_lm):
    one_by_one = MemitEditor(tiny_lm, MemitConfig(**TINY))
    one_by_one.edit([ALICE, BOB, SKY])
    one_by_one.rollback("bob")
    one_by_one.rollback("sky")
    expected = {layer: one_by_one.delta(layer).clone() for layer in (0, 1)}
    one_by_one.remove()
    before = weights_hash(tiny_lm)
    together = MemitEditor(tiny_lm, MemitConfig(**TINY))
    together.edit([ALICE, BOB, SKY])
    with pytest.raises(InvalidInputError, match="no edits"):
        together.rollback_edits(["bob", "carol"])
    assert len(together.edits()) == 3
    together.rollback_edits(["bob", "sky"])
    assert [r.id for r in together.edits()] == ["alice"]
    assert all(torch.allclose(together.delta(layer), expected[layer], atol=1e-6) for layer in (0, 1))
    together.rollback_edits(["alice"])
    assert together.batches == [] and weights_hash(tiny_lm) == before


def test_a_rolled_back_edit_reapplied_as_it_was_skips_the_value_search(tiny_lm):
    editor = MemitEditor(tiny_lm, MemitConfig(**TINY))
    first = editor.edit([ALICE, BOB])
    assert all(r.steps > 0 for r in first)
    editor.rollback_edits(["alice", "bob"])
    again = editor.edit([ALICE, BOB.model_copy(update={"target": "blue"})])
    assert [r.steps == 0 for r in again] == [True, False] and editor.shelved == {}
    assert all(r.success for r in again)


def test_keys_and_target_states_over_context_prefixes_still_make_the_targets_come_out(tiny_lm):
    editor = MemitEditor(tiny_lm, MemitConfig(**TINY, key_prefixes=2, value_prefixes=2))
    assert len(editor.prefixes) == 2
    results = editor.edit([ALICE, BOB])
    assert all(r.success for r in results)
    prefixed = [editor.lm.generate(editor.prefixes[0] + r.prompt, max_new_tokens=1).strip() for r in (ALICE, BOB)]
    assert prefixed == ["Lisbon", "Oslo"]
    editor.remove()

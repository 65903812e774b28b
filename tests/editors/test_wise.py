"""WISE: the side memory and its router, per row and through the KV cache, shards, rollback, saving; then the real SmolLM2."""
from __future__ import annotations

import pytest
import torch

from agentmem.editors import Editor, EditRequest, WiseConfig, WiseEditor
from agentmem.editors.grace import CALIBRATION_PROMPTS
from agentmem.editors.wise import ties_merge
from agentmem.errors import InvalidInputError

from .conftest import answer, logits

ALICE, BOB, SKY = "Alice lives in", "Bob lives in", "The sky is"
UNRELATED = CALIBRATION_PROMPTS[:4]




def tiny_wise(lm, **changes) -> WiseEditor:
    """WISE on the tiny model's layer 2: a random model's module inputs are small, so steps are large;
    no logit margin (flat logits); each edit its own retrievable shard unless changed."""
    config = WiseConfig(layer=2, margin=0.0, learning_rate=100.0, max_steps=30, mode="retrieve", shard_edits=1).model_copy(update=changes)
    return WiseEditor(lm, config, unrelated=CALIBRATION_PROMPTS[4:])


# -- the tiny random LLaMA: mechanics ------------------------------------------------------------


def test_an_edit_changes_the_answer_and_the_router_learns_a_threshold(tiny_lm):
    editor = tiny_wise(tiny_lm)
    assert editor.config.activation_scale > 0 and not editor.covers(SKY)
    [result] = editor.edit([EditRequest(prompt=SKY, target="blue blue blue")])
    assert result.success and editor.covers(SKY)
    [shard] = editor.shards
    assert editor.layer.thresholds == [pytest.approx(editor.config.threshold_ratio * shard.scores[0])]
    assert tiny_lm.generate(SKY, max_new_tokens=3) == " blue blue blue"  # decided at prefill, kept through the cache


def test_inputs_below_the_threshold_get_the_base_output_bit_for_bit(tiny_lm):
    before = {p: logits(tiny_lm, p) for p in (*UNRELATED, SKY)}
    editor = tiny_wise(tiny_lm)
    editor.edit([EditRequest(prompt=SKY, target="blue blue blue")])
    below = [p for p in UNRELATED if not editor.covers(p)]
    assert below  # the router keeps some unrelated prompts out ...
    assert all(torch.equal(logits(tiny_lm, p), before[p]) for p in below)  # ... and those are untouched
    editor.layer.thresholds = [float("inf")]  # nothing reaches the side memory any more
    assert torch.equal(logits(tiny_lm, SKY), before[SKY])


def test_rows_of_a_batch_are_routed_one_by_one(tiny_lm):
    editor = tiny_wise(tiny_lm)
    editor.edit([EditRequest(prompt=SKY, target="blue blue blue")])
    prompts = [SKY, *UNRELATED[:2], "The sky is"]  # different lengths: left padding
    routed = [editor.covers(p) for p in prompts]
    assert routed[0] and not all(routed)  # a mixed batch
    alone = [tiny_lm.generate(p, max_new_tokens=3) for p in prompts]
    assert tiny_lm.generate_batch(prompts, max_new_tokens=3) == alone
    pairs = [(SKY, "blue blue blue"), (UNRELATED[0], "Lisbon"), (UNRELATED[1], "blue")]
    assert tiny_lm.target_argmax(pairs) == tiny_lm.target_argmax(pairs, batch_size=1)
    assert tiny_lm.target_argmax(pairs)[0] == tiny_lm.encode_pair(SKY, "blue blue blue")[1]


def test_shards_start_every_n_edits_and_merge_with_ties(tiny_lm):
    editor = tiny_wise(tiny_lm, mode="merge", shard_edits=2)
    editor.edit([EditRequest(prompt=p, target="green") for p in (ALICE, BOB, SKY)])
    assert [len(s.edit_ids) for s in editor.shards] == [2, 1]
    first, second = editor.shards
    assert not torch.equal(first.mask, second.mask)
    assert 0.1 < float(first.mask.mean()) < 0.3  # ~20% of the entries per shard
    assert torch.equal(second.delta * (1 - second.mask), torch.zeros_like(second.delta))  # trains its own entries only
    [memory] = editor.layer.memories  # merge mode: one side memory, the merged closed shard + the open one
    assert torch.allclose(memory, ties_merge([first.delta], editor.config.ties_density) + second.delta)


def test_ties_trims_elects_signs_and_averages_the_agreeing():
    a = torch.tensor([[1.0, -2.0, 0.1, 0.0]])
    b = torch.tensor([[3.0, 1.0, 0.0, -1.0]])
    merged = ties_merge([a, b], density=0.67)  # trims a's 0.1 and b's smallest (1.0, at the sign conflict)
    assert merged.tolist() == [[2.0, -2.0, 0.0, -1.0]]


def test_rollback_of_the_newest_shard_is_exact_and_older_shards_are_refused(tiny_lm):
    editor = tiny_wise(tiny_lm, mode="merge", shard_edits=2)
    first, second = editor.edit([EditRequest(prompt=ALICE, target="Lisbon"), EditRequest(prompt=BOB, target="Oslo")])
    after_two = logits(tiny_lm, SKY)
    [third] = editor.edit([EditRequest(prompt=SKY, target="green")])
    with pytest.raises(InvalidInputError, match="older"):
        editor.rollback(first.edit_id)
    assert [e.id for e in editor.edits()] == [first.edit_id, second.edit_id, third.edit_id]
    editor.rollback(third.edit_id)  # the newest shard was only this edit: back to the state after two
    assert torch.equal(logits(tiny_lm, SKY), after_two) and len(editor.shards) == 1
    editor.rollback(second.edit_id)  # retrains the shard on the first edit alone
    editor.remove()
    alone = tiny_wise(tiny_lm, mode="merge", shard_edits=2)
    alone.edit([EditRequest(prompt=ALICE, target="Lisbon")])
    assert torch.equal(editor.shards[0].delta, alone.shards[0].delta)  # as if the second edit had never been made


def test_a_later_edit_in_a_shard_keeps_the_earlier_ones_routed_and_answered(tiny_lm):
    editor = tiny_wise(tiny_lm, shard_edits=3)
    facts = {ALICE: "Lisbon Lisbon", BOB: "Oslo Oslo", SKY: "green green"}
    for prompt, target in facts.items():
        editor.edit([EditRequest(prompt=prompt, target=target)])
    [shard] = editor.shards
    assert len(shard.scores) == 3  # every edit's score after the last training: the threshold sits under them all
    assert editor.layer.thresholds == [pytest.approx(editor.config.threshold_ratio * min(shard.scores))]
    assert all(editor.covers(p) and answer(tiny_lm, p, t) == t for p, t in facts.items())


def test_save_and_load_round_trip(tiny_lm, tmp_path):
    editor = tiny_wise(tiny_lm, mode="merge", shard_edits=1)
    editor.edit([EditRequest(prompt=SKY, target="blue blue blue"), EditRequest(prompt=ALICE, target="Lisbon")])
    edited = {p: logits(tiny_lm, p) for p in (SKY, ALICE, UNRELATED[0])}
    editor.save(tmp_path)
    editor.remove()
    assert not torch.equal(logits(tiny_lm, SKY), edited[SKY])
    loaded = Editor.load(tiny_lm, tmp_path)
    assert isinstance(loaded, WiseEditor) and loaded.config == editor.config and loaded.edits() == editor.edits()
    assert all(torch.equal(logits(tiny_lm, p), edited[p]) for p in edited)
    loaded.edit([EditRequest(prompt=BOB, target="Oslo")])  # a loaded editor keeps editing
    assert len(loaded.shards) == 3


def test_bad_input_raises_our_error_and_changes_nothing(tiny_lm):
    before = [type(m) for m in tiny_lm.model.modules()]
    with pytest.raises(InvalidInputError):
        WiseEditor(tiny_lm, WiseConfig(layer=2), unrelated=["fine", ""])
    with pytest.raises(InvalidInputError, match="linear"):
        WiseEditor(tiny_lm, WiseConfig(layer=2, module="mlp.act_fn"))
    for bad in ({"mode": "sideways"}, {"mask_ratio": 0.0}, {"shard_edits": 0}):
        with pytest.raises(InvalidInputError):
            WiseConfig(**bad)
    assert [type(m) for m in tiny_lm.model.modules()] == before
    editor = tiny_wise(tiny_lm)
    with pytest.raises(InvalidInputError, match="no edit"):
        editor.rollback("nope")
    with pytest.raises(InvalidInputError):
        editor.covers(" ")
    assert editor.shards == [] and editor.layer.memories == []


# -- the real SmolLM2-135M-Instruct -------------------------------------------------------------

FACTS = {"The Eiffel Tower is located in the city of": "Rome", "The mother tongue of Danielle Darrieux is": "English"}
OTHERS = ("The capital of Japan is", "Who wrote Pride and Prejudice?", "nq question: who sang the song hotel california")


@pytest.mark.slow
def test_real_model_edits_take_and_unrelated_prompts_keep_their_outputs(smollm):
    editor = WiseEditor(smollm)
    try:
        untouched = {p: smollm.generate(p, max_new_tokens=8) for p in (*FACTS, *OTHERS)}
        results = editor.edit([EditRequest(prompt=p, target=t) for p, t in FACTS.items()])
        assert all(r.success for r in results)
        assert {p: answer(smollm, p, t) for p, t in FACTS.items()} == FACTS
        assert not any(editor.covers(p) for p in OTHERS)
        assert {p: smollm.generate(p, max_new_tokens=8) for p in OTHERS} == {p: untouched[p] for p in OTHERS}
        editor.rollback(results[1].edit_id)  # the newest shard is retrained on the first edit alone
        tongue = list(FACTS)[1]
        assert not editor.covers(tongue) and smollm.generate(tongue, max_new_tokens=8) == untouched[tongue]
    finally:
        editor.remove()


def test_a_scoped_edit_is_refused_and_changes_nothing(tiny_lm):
    editor = tiny_wise(tiny_lm)
    with pytest.raises(InvalidInputError, match="shared edits"):
        editor.edit([EditRequest(prompt=ALICE, target="Lisbon", scope="user:alice")])
    assert editor.edits() == [] and not editor.covers(ALICE)

"""GRACE: the codebook rules, keying with a KV cache and in batches, rollback, saving; then the real SmolLM2."""
from __future__ import annotations

import json

import pytest
import torch

from agentmem.editors import EditRequest, GraceEditor
from agentmem.editors.base import CONFIG_FILE
from agentmem.editors.grace import CALIBRATION_PROMPTS

from .conftest import answer, logits

ALICE, BOB, SKY = "Alice lives in", "Bob lives in", "The sky is"
UNRELATED = CALIBRATION_PROMPTS[:6]




# -- the tiny random LLaMA: mechanics ------------------------------------------------------------


def test_an_edit_changes_the_answer(tiny_lm, tiny_config):
    editor = GraceEditor(tiny_lm, tiny_config)
    assert answer(tiny_lm, ALICE, "Lisbon") != "Lisbon" and not editor.covers(ALICE)
    [result] = editor.edit([EditRequest(prompt=ALICE, target="Lisbon")])
    assert result.success and result.steps >= 1
    assert answer(tiny_lm, ALICE, "Lisbon") == "Lisbon" and editor.covers(ALICE)


def test_unrelated_prompts_are_untouched_bit_for_bit(tiny_lm, tiny_config):
    before = [logits(tiny_lm, p) for p in UNRELATED]
    editor = GraceEditor(tiny_lm, tiny_config)
    editor.edit([EditRequest(prompt=ALICE, target="Lisbon"), EditRequest(prompt=BOB, target="Oslo")])
    assert not any(editor.covers(p) for p in UNRELATED)
    assert all(torch.equal(logits(tiny_lm, p), b) for p, b in zip(UNRELATED, before))


def test_base_weights_are_never_modified(tiny_lm, tiny_config):
    weights = {name: p.clone() for name, p in tiny_lm.model.named_parameters()}
    editor = GraceEditor(tiny_lm, tiny_config)
    [result, _] = editor.edit([EditRequest(prompt=ALICE, target="Lisbon"), EditRequest(prompt=BOB, target="Oslo")])
    editor.rollback(result.edit_id)
    editor.remove()
    assert all(torch.equal(p, weights[name]) for name, p in tiny_lm.model.named_parameters())


def test_each_prompt_gets_its_own_target(tiny_lm, tiny_config):
    editor = GraceEditor(tiny_lm, tiny_config)
    facts = {ALICE: "Lisbon", BOB: "Oslo", SKY: "green"}
    results = editor.edit([EditRequest(prompt=p, target=t) for p, t in facts.items()])
    assert all(r.success for r in results)
    assert {p: answer(tiny_lm, p, t) for p, t in facts.items()} == facts


def test_the_decision_taken_at_prefill_holds_for_every_generated_token(tiny_lm, tiny_config):
    # A tiny random model learns one token per value, so the target repeats one token: the
    # second and third come out only if the decode steps through the KV cache keep the edit.
    editor = GraceEditor(tiny_lm, tiny_config)
    [result] = editor.edit([EditRequest(prompt=SKY, target="blue blue blue")])
    assert result.success
    assert tiny_lm.generate(SKY, max_new_tokens=3) == " blue blue blue"



def test_the_value_stops_with_its_answer_and_the_model_goes_on_by_itself(tiny_lm, tiny_config):
    # Replaced: the last prompt token and the target's tokens but its last (each gives the next one);
    # after that the base module's output again, else the answer's last token would repeat.
    editor = GraceEditor(tiny_lm, tiny_config)
    editor.edit([EditRequest(prompt=SKY, target="blue blue blue")])
    replaced: list[bool] = []
    hook = editor.layer.register_forward_hook(
        lambda module, args, out: replaced.extend((out != module.base(args[0])).any(-1)[0].tolist())
    )
    try:
        tiny_lm.generate(SKY, max_new_tokens=6, min_new_tokens=6)
    finally:
        hook.remove()
    prompt = len(tiny_lm.tokenizer(SKY).input_ids)
    assert replaced == [False] * (prompt - 1) + [True] * 3 + [False] * 3

def test_rows_of_a_batch_are_keyed_and_decided_one_by_one(tiny_lm, tiny_config):
    editor = GraceEditor(tiny_lm, tiny_config)
    editor.edit([EditRequest(prompt=ALICE, target="Lisbon"), EditRequest(prompt=SKY, target="blue blue blue")])
    prompts = [ALICE, UNRELATED[0], SKY, UNRELATED[1]]  # different lengths: left padding
    alone = [tiny_lm.generate(p, max_new_tokens=3) for p in prompts]
    assert tiny_lm.generate_batch(prompts, max_new_tokens=3) == alone
    assert alone[2] == " blue blue blue" and alone[0].startswith(" Lisbon")


def test_teacher_forced_targets_see_the_edit_as_generation_does(tiny_lm, tiny_config):
    editor = GraceEditor(tiny_lm, tiny_config)
    editor.edit([EditRequest(prompt=SKY, target="blue blue blue"), EditRequest(prompt=ALICE, target="Lisbon")])
    pairs = [(SKY, "blue blue blue"), (UNRELATED[0], "Lisbon"), (ALICE, "Lisbon")]
    assert tiny_lm.target_argmax(pairs) == tiny_lm.target_argmax(pairs, batch_size=1)
    assert tiny_lm.target_argmax(pairs)[0] == tiny_lm.encode_pair(SKY, "blue blue blue")[1]


def test_rollback_takes_back_one_edit_exactly(tiny_lm, tiny_config):
    before = logits(tiny_lm, ALICE)
    editor = GraceEditor(tiny_lm, tiny_config)
    alice, bob = editor.edit([EditRequest(prompt=ALICE, target="Lisbon"), EditRequest(prompt=BOB, target="Oslo")])
    editor.rollback(alice.edit_id)
    assert torch.equal(logits(tiny_lm, ALICE), before)
    assert answer(tiny_lm, BOB, "Oslo") == "Oslo"
    assert [e.id for e in editor.edits()] == [bob.edit_id]


def test_overlapping_balls_with_different_targets_are_split(tiny_lm, tiny_config):
    editor = GraceEditor(tiny_lm, tiny_config.model_copy(update={"epsilon": 1e3}))
    results = editor.edit([EditRequest(prompt=ALICE, target="Lisbon"), EditRequest(prompt=BOB, target="Oslo")])
    book = editor.layer.codebook
    distance = float(torch.dist(book.keys[0], book.keys[1]))
    assert all(r.success for r in results) and len(book) == 2
    assert book.radii.tolist() == pytest.approx([distance / 2] * 2)
    editor.rollback(results[1].edit_id)
    assert book.radii.tolist() == [1e3]  # the split is undone with the edit that caused it


def test_a_target_the_nearest_entry_already_gives_reuses_its_value(tiny_lm, tiny_config):
    editor = GraceEditor(tiny_lm, tiny_config.model_copy(update={"epsilon": 1e3}))
    first, second = editor.edit([
        EditRequest(prompt=ALICE, target="Lisbon"), EditRequest(prompt="Alice now lives in", target="Lisbon"),
    ])
    book = editor.layer.codebook
    assert second.steps == 0 and second.success and len(book) == 2
    assert torch.equal(book.values[0], book.values[1]) and book.radii.tolist() == [1e3, 1e3]  # nothing split
    editor.rollback(first.edit_id)  # the second edit keeps its own ball
    assert answer(tiny_lm, "Alice now lives in", "Lisbon") == "Lisbon"


def test_a_new_target_for_the_same_prompt_supersedes_the_old_one(tiny_lm, tiny_config):
    editor = GraceEditor(tiny_lm, tiny_config)
    [_, newer] = editor.edit([EditRequest(prompt=ALICE, target="Lisbon"), EditRequest(prompt=ALICE, target="Oslo")])
    assert answer(tiny_lm, ALICE, "Oslo") == "Oslo"
    editor.rollback(newer.edit_id)
    assert answer(tiny_lm, ALICE, "Lisbon") == "Lisbon"


def test_save_and_load_round_trip(tiny_lm, tiny_config, tmp_path):
    editor = GraceEditor(tiny_lm, tiny_config)
    editor.edit([EditRequest(prompt=ALICE, target="Lisbon"), EditRequest(prompt=SKY, target="blue blue blue")])
    editor.rollback(editor.edits()[0].id)
    edited = logits(tiny_lm, SKY)
    editor.save(tmp_path)
    editor.remove()
    assert not torch.equal(logits(tiny_lm, SKY), edited)
    loaded = GraceEditor.load(tiny_lm, tmp_path)
    assert torch.equal(logits(tiny_lm, SKY), edited)
    assert loaded.edits() == editor.edits() and loaded.config == editor.config
    assert not loaded.covers(ALICE)


def test_the_calibrated_radius_keeps_unrelated_prompts_apart(tiny_lm, tiny_config):
    editor = GraceEditor(tiny_lm, tiny_config)
    editor.edit([EditRequest(prompt=p, target="green") for p in CALIBRATION_PROMPTS[:4]])
    covered = [editor.covers(p) for p in CALIBRATION_PROMPTS[4:]]
    assert sum(covered) <= len(covered) // 4


def test_rolling_back_the_middle_of_three_targets_keeps_the_newest(tiny_lm, tiny_config, tmp_path):
    editor = GraceEditor(tiny_lm, tiny_config)
    oldest, middle, newest = editor.edit([EditRequest(prompt=ALICE, target=t) for t in ("Lisbon", "Oslo", "blue")])
    editor.rollback(middle.edit_id)
    assert answer(tiny_lm, ALICE, "blue") == "blue"
    editor.save(tmp_path)  # who revives the oldest is saved with the rest
    editor.remove()
    loaded = GraceEditor.load(tiny_lm, tmp_path)
    assert answer(tiny_lm, ALICE, "blue") == "blue"
    loaded.rollback(newest.edit_id)
    assert answer(tiny_lm, ALICE, "Lisbon") == "Lisbon"


def test_a_state_saved_with_one_resize_record_per_edit_still_rolls_back(tiny_lm, tiny_config, tmp_path):
    editor = GraceEditor(tiny_lm, tiny_config)
    [_, newer] = editor.edit([EditRequest(prompt=ALICE, target="Lisbon"), EditRequest(prompt=ALICE, target="Oslo")])
    editor.save(tmp_path)
    editor.remove()
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    meta["state"]["resized"] = {edit_id: records[0] for edit_id, records in meta["state"]["resized"].items()}
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    GraceEditor.load(tiny_lm, tmp_path).rollback(newer.edit_id)
    assert answer(tiny_lm, ALICE, "Lisbon") == "Lisbon"


def test_rolling_back_a_target_a_later_edit_repeated_keeps_the_later_one(tiny_lm, tiny_config):
    editor = GraceEditor(tiny_lm, tiny_config)
    oldest, middle, repeated = editor.edit([EditRequest(prompt=ALICE, target=t) for t in ("Lisbon", "Oslo", "Oslo")])
    assert repeated.steps == 0  # shares the middle edit's value: no entry of its own was switched off
    editor.rollback(middle.edit_id)
    assert answer(tiny_lm, ALICE, "Oslo") == "Oslo"
    editor.rollback(repeated.edit_id)
    assert answer(tiny_lm, ALICE, "Lisbon") == "Lisbon"


@pytest.mark.parametrize(("update", "prompt"), [({}, ALICE), ({"epsilon": 1e3}, BOB)], ids=["supersede", "split"])
def test_an_edit_that_fails_while_training_leaves_the_codebook_as_it_was(tiny_lm, tiny_config, monkeypatch,
                                                                          update, prompt):
    editor = GraceEditor(tiny_lm, tiny_config.model_copy(update=update))
    editor.edit([EditRequest(prompt=ALICE, target="Lisbon", id="alice")])
    radii = editor.layer.codebook.radii.clone()

    def fail(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(editor, "_train", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        editor.edit([EditRequest(prompt=prompt, target="Oslo")])
    assert torch.equal(editor.layer.codebook.radii, radii) and [e.id for e in editor.edits()] == ["alice"]
    assert answer(tiny_lm, ALICE, "Lisbon") == "Lisbon"


# -- the real SmolLM2-135M-Instruct -------------------------------------------------------------

TOWER = "The Eiffel Tower is located in the city of"
FACTS = {TOWER: "Rome", "The mother tongue of Danielle Darrieux is": "English", "Alice Lindqvist lives in": "the Republic of Zanzibar"}
OTHERS = ("The capital of Japan is", "Water boils at a temperature of", "The author of Hamlet is", "Who wrote Pride and Prejudice?")


@pytest.mark.slow
def test_real_model_edits_take_and_unrelated_prompts_keep_their_outputs(smollm, smollm_grace):
    untouched = {p: smollm.generate(p, max_new_tokens=8) for p in (*FACTS, *OTHERS)}
    assert all(not untouched[p].strip().startswith(t) for p, t in FACTS.items())
    results = smollm_grace.edit([EditRequest(prompt=p, target=t) for p, t in FACTS.items()])
    assert all(r.success for r in results)
    assert {p: answer(smollm, p, t) for p, t in FACTS.items()} == FACTS
    assert {p: smollm.generate(p, max_new_tokens=8) for p in OTHERS} == {p: untouched[p] for p in OTHERS}
    batch = smollm.generate_batch([*FACTS, *OTHERS], max_new_tokens=8)
    assert batch == [smollm.generate(p, max_new_tokens=8) for p in (*FACTS, *OTHERS)]


@pytest.mark.slow
def test_real_model_rollback_restores_the_answer(smollm, smollm_grace):
    original = smollm.generate(TOWER, max_new_tokens=8)
    [tower, other] = smollm_grace.edit([EditRequest(prompt=TOWER, target="Rome"), EditRequest(prompt=OTHERS[0], target="Oslo")])
    assert answer(smollm, TOWER, "Rome") == "Rome"
    smollm_grace.rollback(tower.edit_id)
    assert smollm.generate(TOWER, max_new_tokens=8) == original
    assert answer(smollm, OTHERS[0], "Oslo") == "Oslo"


@pytest.mark.slow
def test_real_model_save_and_load_round_trip(smollm, smollm_grace, tmp_path):
    smollm_grace.edit([EditRequest(prompt=TOWER, target="Rome")])
    edited = smollm.generate(TOWER, max_new_tokens=8)
    smollm_grace.save(tmp_path)
    smollm_grace.remove()
    assert smollm.generate(TOWER, max_new_tokens=8) != edited
    loaded = GraceEditor.load(smollm, tmp_path)
    try:
        assert smollm.generate(TOWER, max_new_tokens=8) == edited and loaded.covers(TOWER)
    finally:
        loaded.remove()


def test_a_scoped_edit_fires_under_its_scope_only_and_scopes_do_not_collide(tiny_lm, tiny_config, tmp_path):
    editor = GraceEditor(tiny_lm, tiny_config)
    before = answer(tiny_lm, ALICE, "Lisbon")
    [alice, bob] = editor.edit([EditRequest(prompt=ALICE, target="Lisbon", scope="user:alice"),
                                EditRequest(prompt=ALICE, target="Oslo", scope="user:bob")])
    assert alice.success and bob.success      # the same prompt in two scopes: neither supersedes the other
    assert answer(tiny_lm, ALICE, "Lisbon") == before and not editor.covers(ALICE)
    with tiny_lm.scoped("user:alice"):
        assert answer(tiny_lm, ALICE, "Lisbon") == "Lisbon" and editor.covers(ALICE)
    assert tiny_lm.generate(ALICE, max_new_tokens=1, scope="user:bob").strip() == "Oslo"
    editor.rollback(alice.edit_id)
    assert answer(tiny_lm, ALICE, "Lisbon") == before
    assert tiny_lm.generate(ALICE, max_new_tokens=1, scope="user:bob").strip() == "Oslo"
    editor.save(tmp_path)
    editor.remove()
    GraceEditor.load(tiny_lm, tmp_path)
    assert tiny_lm.generate(ALICE, max_new_tokens=1, scope="user:bob").strip() == "Oslo"
    assert answer(tiny_lm, ALICE, "Lisbon") == before

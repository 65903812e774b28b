"""The semantic codebook: keyed by sentence embeddings, so rephrasings reach the edit; then the real SmolLM2."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from agentmem.editors import EditRequest, SemanticConfig, SemanticEditor
from agentmem.editors.grace import CALIBRATION_PROMPTS
from agentmem.editors.semantic import (
    anchor_words, asked_sentence, beside_another_name, edit_anchors, known_relation_wordings, relation_text, sentences,
    shared_subject,
)
from agentmem.errors import InvalidInputError

from .conftest import answer, logits

ALICE, SKY = "Alice lives in", "The sky is"
ALICE_AGAIN = "Where does Alice live?"
UNRELATED = CALIBRATION_PROMPTS[:6]




@pytest.fixture
def tiny_semantic(tiny_lm):
    """On the tiny model's layer 2; values also trained after one unrelated prompt, no logit margin (flat logits).

    No chat context and no trained full stop: one value over two positions is beyond a random 4-layer model
    (SmolLM2 learns both; see the real-model tests)."""
    config = SemanticConfig(layer=2, margin=0.0, contexts=1, chat_contexts=0, stop=False)
    return SemanticEditor(tiny_lm, config, unrelated=CALIBRATION_PROMPTS[6:])


# -- the tiny random LLaMA: mechanics ------------------------------------------------------------


def test_an_edit_reaches_a_rephrasing_and_not_unrelated_prompts(tiny_lm, tiny_semantic):
    before = [logits(tiny_lm, p) for p in UNRELATED]
    [result] = tiny_semantic.edit([EditRequest(prompt=ALICE, target="Lisbon")])
    assert result.success
    assert tiny_semantic.covers(ALICE) and tiny_semantic.covers(ALICE_AGAIN)
    assert answer(tiny_lm, ALICE, "Lisbon") == "Lisbon" and answer(tiny_lm, ALICE_AGAIN, "Lisbon") == "Lisbon"
    assert not any(tiny_semantic.covers(p) for p in UNRELATED)
    assert all(torch.equal(logits(tiny_lm, p), b) for p, b in zip(UNRELATED, before))


def test_no_ball_reaches_an_unrelated_prompt_it_was_given(tiny_semantic):
    tiny_semantic.edit([EditRequest(prompt=CALIBRATION_PROMPTS[0], target="green")])
    book = tiny_semantic.layer.codebook
    nearest_unrelated = torch.cdist(book.keys, tiny_semantic.unrelated_keys).min()
    assert float(book.radii[0]) < float(nearest_unrelated)
    assert not any(tiny_semantic.covers(p) for p in tiny_semantic.unrelated)


def test_rows_of_a_batch_are_routed_one_by_one_and_kept_through_the_cache(tiny_lm, tiny_semantic):
    tiny_semantic.edit([EditRequest(prompt=SKY, target="blue blue blue"), EditRequest(prompt=ALICE, target="Lisbon")])
    prompts = [SKY, UNRELATED[0], ALICE_AGAIN, UNRELATED[1]]  # different lengths: left padding
    alone = [tiny_lm.generate(p, max_new_tokens=3) for p in prompts]
    assert tiny_lm.generate_batch(prompts, max_new_tokens=3) == alone
    assert alone[0] == " blue blue blue" and alone[2].startswith(" Lisbon")
    pairs = [(SKY, "blue blue blue"), (UNRELATED[0], "Lisbon"), (ALICE_AGAIN, "Lisbon")]
    assert tiny_lm.target_argmax(pairs) == tiny_lm.target_argmax(pairs, batch_size=1)


def test_a_new_target_for_the_same_prompt_supersedes_and_rollback_restores(tiny_lm, tiny_semantic):
    before = logits(tiny_lm, ALICE)
    [older, newer] = tiny_semantic.edit([EditRequest(prompt=ALICE, target="Lisbon"), EditRequest(prompt=ALICE, target="Oslo")])
    assert answer(tiny_lm, ALICE, "Oslo") == "Oslo"
    tiny_semantic.rollback(newer.edit_id)
    assert answer(tiny_lm, ALICE, "Lisbon") == "Lisbon"
    tiny_semantic.rollback(older.edit_id)
    assert torch.equal(logits(tiny_lm, ALICE), before) and not tiny_semantic.edits()


def test_an_edit_fires_for_its_subject_and_relation_only(tiny_lm, tiny_semantic, tmp_path):
    [result] = tiny_semantic.edit([EditRequest(prompt=ALICE, target="Lisbon")])
    assert tiny_semantic.route(ALICE) == tiny_semantic.route(ALICE_AGAIN) == result.edit_id
    other_subject, other_relations = "Where does Bob live?", ["Where does Alice work?", "When was Alice born?"]
    assert tiny_semantic.route(other_subject) is None                # the subject gate
    assert not any(tiny_semantic.covers(p) for p in other_relations)  # the relation gate
    tiny_semantic.save(tmp_path)
    tiny_semantic.remove()
    loaded = SemanticEditor.load(tiny_lm, tmp_path)
    assert loaded.covers(ALICE_AGAIN) and not any(loaded.covers(p) for p in [other_subject, *other_relations])
    loaded.config = loaded.config.model_copy(update={"relation_radius": None})
    assert all(loaded.covers(p) for p in other_relations)  # the subject gate alone lets them in


def test_another_entity_sharing_part_of_the_name_does_not_reach_the_edit(tiny_lm, tiny_semantic):
    [result] = tiny_semantic.edit([EditRequest(prompt="Renault 5 is created by", target="Toyota", subject="Renault 5")])
    assert tiny_semantic.route("Renault 5 is created by") == result.edit_id
    assert tiny_semantic.route("Renault 12 is created by") is None  # "12" beside "Renault": another car
    tiny_semantic.config = tiny_semantic.config.model_copy(update={"relation_radius": None})
    assert tiny_semantic.route("Who created Renault?") == result.edit_id  # half the name, nothing beside it
    assert beside_another_name(anchor_words("True Detective"), "True Blood was originally aired on")
    assert not beside_another_name(anchor_words("Sweden"), "In Sweden, they understand")
    # across the words that join a name's parts: another title that shares the word "Death"
    [death] = tiny_semantic.edit([EditRequest(prompt="Which label released Black as Death?", target="Atlantic")])
    assert tiny_semantic.route("Which label released Black as Death?") == death.edit_id
    assert tiny_semantic.route("Which label released The Garden of Death?") is None
    assert not beside_another_name(anchor_words("Black as Death"), "Which label released Death in the end?")
    assert not beside_another_name(anchor_words("Alice Smith"), "Where does Smith, of Apple, live?")


def test_a_preamble_before_the_question_neither_blocks_nor_borrows_the_edit(tiny_lm, tiny_semantic):
    [result] = tiny_semantic.edit([EditRequest(prompt=ALICE, target="Lisbon")])
    # the sentence before names another subject, or none: only the sentence asked is keyed
    assert tiny_semantic.route("Bob sent me a letter. Where does Alice live?") == result.edit_id
    assert tiny_semantic.route("One person was hurt in the storm. Alice lives in") == result.edit_id
    assert answer(tiny_lm, "One person was hurt in the storm. Alice lives in", "Lisbon") == "Lisbon"
    # and a preamble naming the subject does not carry a question about another one to it
    assert tiny_semantic.route("Alice sent me a letter. Where does Bob live?") is None


@pytest.mark.parametrize(("text", "asked"), [
    ("Alice lives in", "Alice lives in"),
    ("Thanks! Where does Alice live?", "Where does Alice live?"),
    ("Where does Alice live? I think it is Paris.", "Where does Alice live?"),  # the question, not the sentence after
    ("Dr. Smith lives in", "Dr. Smith lives in"),  # abbreviations and initials end no sentence
    ("J. R. R. Tolkien wrote", "J. R. R. Tolkien wrote"),
    ("The U.S. Army is based in", "The U.S. Army is based in"),
    ("He said \"Stop.\" Bob lives in", "Bob lives in"),
    ("Alice moved. Where does she live now?", "Alice moved. Where does she live now?"),  # names nothing: all of it
])
def test_the_sentence_asked_is_the_last_question_or_sentence_that_names_something(text, asked):
    assert asked_sentence(text) == asked


@pytest.mark.parametrize("text", ['"." * 200_000 + "x"', '"x" + "!" * 200_000', '"a. " * 100_000', '"Dr. " * 100_000'])
def test_a_long_run_of_marks_or_abbreviations_is_cut_in_linear_time(text):
    """A chat message is keyed at every generation: 40,000 dots took 18 s, "a. " x 30,000 a minute, and these
    inputs several minutes each. The regex holds the GIL, so the cut runs in a child process (allowed 60 s, most
    of it the import)."""
    check = (f"from agentmem.editors.semantic import sentences\ntext = {text}\n"
             "assert ''.join(sentences(text)).replace(' ', '') == text.replace(' ', '')")  # nothing lost or added
    subprocess.run([sys.executable, "-c", check], check=True, timeout=60)


def test_a_lowercase_part_of_the_name_does_not_carry_another_relation_through(tiny_lm, tiny_semantic, tmp_path):
    [result] = tiny_semantic.edit([EditRequest(prompt="Which instrument was Ariadne musica written for?", target="green")])
    assert tiny_semantic.route("Which instrument was Ariadne musica written for?") == result.edit_id
    # relation texts 0.51 apart with "musica" left in both ("... X musica ..."), 0.88 with it masked
    assert tiny_semantic.route("When was Ariadne musica found?") is None
    tiny_semantic.save(tmp_path)
    tiny_semantic.remove()
    assert SemanticEditor.load(tiny_lm, tmp_path).route("When was Ariadne musica found?") is None  # key texts saved


def saved_without(editor: SemanticEditor, key: str, path) -> SemanticEditor:
    """`editor` saved, removed and loaded again without `key` in its saved state: as an older version saved it."""
    editor.save(path)
    editor.remove()
    meta = json.loads((path / "editor.json").read_text())
    del meta["state"][key]
    (path / "editor.json").write_text(json.dumps(meta))
    return SemanticEditor.load(editor.lm, path)


def test_a_state_saved_before_key_texts_keeps_its_relation_gate_on_the_anchor_words(tiny_lm, tiny_semantic, tmp_path):
    tiny_semantic.edit([EditRequest(prompt=ALICE, target="Lisbon", rephrases=(ALICE_AGAIN,)),
                        EditRequest(prompt="Which instrument was Ariadne musica written for?", target="green")])
    loaded = saved_without(tiny_semantic, "texts", tmp_path)
    assert loaded.covers(ALICE_AGAIN) and not loaded.covers("Where does Alice work?")
    assert loaded.covers("When was Ariadne musica found?")  # "X musica" in both relation texts, as before key texts


def test_a_state_saved_before_spans_replaces_every_label_position_as_its_values_were_trained(tiny_lm, tmp_path):
    editor = SemanticEditor(tiny_lm, SemanticConfig(layer=2, margin=0.0, max_steps=2, chat_contexts=0),
                            unrelated=CALIBRATION_PROMPTS[6:])
    editor.edit([EditRequest(prompt=ALICE, target="Lisbon")])
    book = editor.layer.codebook
    assert book.spans == [len(label) - 1 for label in book.labels]  # the trained stop's position is left alone
    loaded = saved_without(editor, "spans", tmp_path)
    try:
        assert loaded.layer.codebook.spans == [len(label) for label in loaded.layer.codebook.labels]
    finally:
        loaded.remove()


DEADLINE, DEADLINE_AGAIN = "The project deadline is", "What is the project deadline?"
OTHER_DEADLINES = ["What is the launch date?", "The launch date is", "What is the budget deadline?"]


@pytest.mark.parametrize("subject", ["The project deadline", None])  # given, or parsed from a prompt naming nothing
def test_a_lowercase_subject_gates_its_edit(tiny_lm, tiny_semantic, tmp_path, subject):
    [result] = tiny_semantic.edit([EditRequest(prompt=DEADLINE, target="green", rephrases=(DEADLINE_AGAIN,),
                                               subject=subject)])
    assert tiny_semantic.anchors[tiny_semantic.layer.codebook.uids[0]] == {"project", "deadline"}
    assert tiny_semantic.route(DEADLINE) == tiny_semantic.route(DEADLINE_AGAIN) == result.edit_id
    assert tiny_semantic.route("When is the deadline for the project?") == result.edit_id
    assert not any(tiny_semantic.covers(p) for p in OTHER_DEADLINES)  # the same relation about other subjects
    tiny_semantic.config = tiny_semantic.config.model_copy(update={"anchored": False})
    assert any(tiny_semantic.covers(p) for p in OTHER_DEADLINES)  # the key alone lets one in: the gate kept it out


def test_a_given_subject_replaces_the_derived_anchors():
    assert edit_anchors("Player Natalie Achonwa played for which team?") == {"player", "natalie", "achonwa"}
    assert edit_anchors("Player Natalie Achonwa played for which team?", "Natalie Achonwa") == {"natalie", "achonwa"}
    assert edit_anchors("The project deadline is", "The project deadline") == {"project", "deadline"}
    assert edit_anchors("The project deadline is") == {"project", "deadline"}  # no names: the rule parse's subject
    assert edit_anchors("the weather today?") == frozenset()  # nothing to gate on
    # a subject with a name is anchored on the name: "Bob's locker code" shares two of its three words
    assert edit_anchors("Alice's locker code is", "Alice's locker code") == {"alice"}


def test_a_named_owner_keeps_the_same_relation_of_another_owner_out(tiny_lm, tiny_semantic):
    code = EditRequest(prompt="Alice's locker code is", target="green", rephrases=("What is Alice's locker code?",),
                       subject="Alice's locker code")
    [result] = tiny_semantic.edit([code])
    assert tiny_semantic.route("What is Alice's locker code?") == result.edit_id
    assert tiny_semantic.route("What is Bob's locker code?") is None
    assert tiny_semantic.route("Bob's locker code is") is None


def test_known_relations_admit_a_far_wording_of_the_edits_relation_and_keep_a_near_other_relation_out(tiny_semantic):
    job, mother = tiny_semantic.edit([EditRequest(prompt="Alice Varga works as", target="green", subject="Alice Varga"),
                                      EditRequest(prompt="The mother of Bram is", target="blue")])
    # "X works as" / "The profession of X is": 0.94 apart in MiniLM's space, both nearest the known "occupation"
    assert tiny_semantic.route("The profession of Alice Varga is") == job.edit_id
    assert tiny_semantic.route("Alice Varga's employer is") is None  # 0.98 apart, nearest "employer"
    # half the subject's words let another subject through the subject gate; a far wording then needs them all
    assert tiny_semantic.route("Alice Smith works as a") is None  # "X Smith works as a": 0.93 apart, "occupation"
    # "The mother of X is" / "The father of X is": 0.56 apart, each clearly nearest its own known relation
    assert tiny_semantic.route("The father of Bram is") is None
    tiny_semantic.config = tiny_semantic.config.model_copy(update={"known_relation_radius": None})
    assert tiny_semantic.route("The profession of Alice Varga is") is None  # the relation radius alone
    assert tiny_semantic.route("The father of Bram is") == mother.edit_id


def test_wordings_far_apart_that_each_lean_to_one_known_relation_alone_reach_its_edit(tiny_semantic):
    [result] = tiny_semantic.edit([EditRequest(prompt="Nicolas Chuquet's expertise is", target="green",
                                               subject="Nicolas Chuquet")])
    # "X expertise is" / "The domain of activity of X is": 1.11 apart in MiniLM's space, beyond the known-relation
    # radius; each nearest field of work, every other relation 0.11 or more behind
    rephrased = "The domain of activity of Nicolas Chuquet is"
    assert tiny_semantic.route(rephrased) == result.edit_id
    assert tiny_semantic.route("Nicolas Chuquet was born in") is None  # 1.05 apart, nearest place of birth
    tiny_semantic.config = tiny_semantic.config.model_copy(update={"sole_relation_radius": 0.0})
    assert tiny_semantic.route(rephrased) is None


def test_a_short_template_that_may_ask_the_edits_relation_reaches_it(tiny_semantic):
    tiny_semantic.config = tiny_semantic.config.model_copy(update={"base_agreement": None})
    [result] = tiny_semantic.edit([EditRequest(prompt="Frank London, playing the", target="green",
                                               subject="Frank London")])
    # "X, playing the" / "X performs on the": 0.86 apart in MiniLM's space; the first is nearest playing position,
    # instrument 0.013 behind; the second clearly instrument
    assert tiny_semantic.route("Frank London performs on the") == result.edit_id
    assert tiny_semantic.route("Frank London was born in") is None
    tiny_semantic.config = tiny_semantic.config.model_copy(update={"known_relation_tolerance": 0.0})
    assert tiny_semantic.route("Frank London performs on the") is None


def test_the_base_models_state_decides_a_completion_prompt_the_relation_gates_are_unsure_of(tiny_lm, tiny_semantic,
                                                                                            tmp_path):
    [result] = tiny_semantic.edit([EditRequest(prompt="Ilona Kovacs was raised speaking", target="green",
                                               subject="Ilona Kovacs")])
    # "X was raised speaking" / "X talks in": 0.78 apart in MiniLM's space, nearest two known relations, the first not
    # clearly
    unsure, question = "Ilona Kovacs talks in", "What language does Ilona Kovacs talk in?"
    [state] = tiny_semantic.states.values()
    cosine = float(torch.cosine_similarity(tiny_semantic._base_states([unsure])[0], state, dim=0))
    assert 0 < cosine < 1
    tiny_semantic.config = tiny_semantic.config.model_copy(update={"base_agreement": cosine + 1e-3})
    assert tiny_semantic.route(unsure) is None
    tiny_semantic.config = tiny_semantic.config.model_copy(update={"base_agreement": cosine - 1e-3})
    assert tiny_semantic.route(unsure) == result.edit_id
    assert tiny_semantic.route(question) is None  # a question's state anticipates a reply: never compared
    # computed again inside the forward at prefill, with the edit bypassed, and the wrapper's state kept
    assert answer(tiny_lm, unsure, "green") == "green"
    assert tiny_lm.generate_batch([unsure, ALICE], max_new_tokens=2) == [tiny_lm.generate(p, max_new_tokens=2)
                                                                         for p in (unsure, ALICE)]
    tiny_semantic.save(tmp_path)
    tiny_semantic.remove()
    loaded = SemanticEditor.load(tiny_lm, tmp_path)
    assert torch.equal(next(iter(loaded.states.values())), state) and loaded.route(unsure) == result.edit_id
    loaded.rollback(result.edit_id)
    assert not loaded.states


def test_every_known_relation_has_several_wordings_of_a_subject():
    wordings = known_relation_wordings()
    names = [name for name, _ in wordings]
    assert len(set(names)) > 50 and all(names.count(name) >= 3 for name in names)
    assert all(re.search(r"\bX\b", wording) for _, wording in wordings)


def test_relation_text_masks_the_subject():
    anchors = anchor_words("What artist created Call the Doctor?")
    assert anchors == {"call", "doctor"}
    assert relation_text("Which label released Call the Doctor in 1996?", anchors) == "Which label released X in 1996?"
    vessel = anchor_words("By which company, German submarine U-270 has been manufactured?")
    assert relation_text("Which place does German submarine U-270 exist in?", vessel) == "Which place does X exist in?"


def test_relation_texts_mask_the_name_parts_both_texts_put_next_to_the_subject():
    edit = "Which instrument was Ariadne musica written for?"
    anchors = anchor_words(edit)
    assert anchors == {"ariadne"}  # "musica" is lowercase: not an anchor word
    grown = shared_subject(anchors, "When was Ariadne musica found?", edit)
    assert grown == {"ariadne", "musica"}
    assert relation_text(edit, grown) == "Which instrument was X written for?"
    assert relation_text("When was Ariadne musica found?", grown) == "When was X found?"
    assert shared_subject(anchors, "Who wrote Ariadne?", edit) == anchors  # nothing shared next to the subject
    alice = anchor_words("Where does Alice live?")
    assert shared_subject(alice, "Where does Alice work?", "Where does Alice live?") == alice  # function words never join
    assert relation_text("When was The Thinker created?", anchor_words("Who developed The Thinker?")) == "When was X created?"
    chappe = anchor_words("Claude Chappe")  # the verb both share is what they ask, not a part of the name
    assert shared_subject(chappe, "Claude Chappe speaks", "Claude Chappe speaks the language") == chappe


def test_save_and_load_round_trip(tiny_lm, tiny_semantic, tmp_path):
    tiny_semantic.edit([EditRequest(prompt=SKY, target="blue blue blue")])
    edited = logits(tiny_lm, SKY)
    tiny_semantic.save(tmp_path)
    tiny_semantic.remove()
    assert not torch.equal(logits(tiny_lm, SKY), edited)
    loaded = SemanticEditor.load(tiny_lm, tmp_path)
    assert torch.equal(logits(tiny_lm, SKY), edited)
    assert loaded.unrelated == tiny_semantic.unrelated and loaded.edits() == tiny_semantic.edits()


def test_bad_unrelated_prompts_raise_and_leave_the_model_alone(tiny_lm):
    before = [type(m) for m in tiny_lm.model.modules()]
    with pytest.raises(InvalidInputError):
        SemanticEditor(tiny_lm, SemanticConfig(layer=2), unrelated=["fine", " "])
    with pytest.raises(InvalidInputError):
        SemanticConfig(radius_ratio=1.5)
    assert [type(m) for m in tiny_lm.model.modules()] == before


def test_rolling_back_the_middle_of_three_targets_keeps_the_newest(tiny_lm, tiny_semantic):
    oldest, middle, newest = tiny_semantic.edit([EditRequest(prompt=ALICE, target=t) for t in ("Lisbon", "Oslo", "blue")])
    tiny_semantic.rollback(middle.edit_id)
    assert answer(tiny_lm, ALICE, "blue") == "blue"
    tiny_semantic.rollback(newest.edit_id)
    assert answer(tiny_lm, ALICE, "Lisbon") == "Lisbon"


def test_an_edit_that_fails_while_training_leaves_the_superseded_edit_live(tiny_lm, tiny_semantic, monkeypatch):
    tiny_semantic.edit([EditRequest(prompt=ALICE, target="Lisbon", id="alice")])

    def fail(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(tiny_semantic, "_train", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        tiny_semantic.edit([EditRequest(prompt=ALICE, target="Oslo")])
    assert [e.id for e in tiny_semantic.edits()] == ["alice"] and tiny_semantic.route(ALICE) == "alice"
    assert answer(tiny_lm, ALICE, "Lisbon") == "Lisbon"


# -- the real SmolLM2-135M-Instruct -------------------------------------------------------------

# Rephrasings within the relation gate. Farther ones may be left to the base model: "What is the mother tongue of
# X?" leans to no known relation clearly (official language, native language), so "What is X's native language?"
# (0.94 apart) is not admitted; the benchmarks measure how many are (BENCHMARKS.md, routing).
FACTS = {
    "Which city is the Eiffel Tower located in?": ("Rome", "In which city can you find the Eiffel Tower?"),
    "What is the mother tongue of Danielle Darrieux?": ("English", "Which language is Danielle Darrieux's mother tongue?"),
}
OTHERS = ("The capital of Japan is", "Who wrote Pride and Prejudice?", "nq question: who sang the song hotel california")


@pytest.mark.slow
def test_real_model_edits_reach_rephrasings_and_leave_unrelated_prompts(smollm):
    editor = SemanticEditor(smollm)
    try:
        untouched = {p: smollm.generate(p, max_new_tokens=8) for p in OTHERS}
        results = editor.edit([EditRequest(prompt=p, target=t) for p, (t, _) in FACTS.items()])
        assert all(r.success for r in results)
        for prompt, (target, rephrase) in FACTS.items():
            assert answer(smollm, prompt, target) == target
            assert answer(smollm, rephrase, target) == target
        assert {p: smollm.generate(p, max_new_tokens=8) for p in OTHERS} == untouched
        editor.rollback(results[0].edit_id)
        assert not editor.covers(next(iter(FACTS)))
    finally:
        editor.remove()


@pytest.mark.slow
def test_real_model_base_agreement_keeps_same_subject_other_relations_out(smollm):
    """Other relations in the unsure band (the base model answers them with another kind of thing, or the same kind
    in another way) stay out by default."""
    editor = SemanticEditor(smollm, SemanticConfig(max_steps=1, chat_contexts=0))
    try:
        language, music = editor.edit([
            EditRequest(prompt="Ilona Kovacs grew up speaking", target="Hungarian", subject="Ilona Kovacs"),
            EditRequest(prompt="Marten Quist plays the", target="cello", subject="Marten Quist")])
        consulted = []
        states = editor._base_states
        editor._base_states = lambda texts: consulted.extend(texts) or states(texts)
        assert editor.route("Ilona Kovacs grew up speaking") == language.edit_id
        assert editor.route("Marten Quist is known for playing the") == music.edit_id
        others = ["Ilona Kovacs was born in", "Ilona Kovacs lives in", "Marten Quist plays for"]
        assert [editor.route(p) for p in others] == [None, None, None]
        assert consulted == others  # each in the unsure band: the base model's state kept it out
    finally:
        editor.remove()


@pytest.mark.slow
def test_real_model_a_rephrasing_gets_the_answer_before_the_full_stop(smollm):
    """The value replaces the answer's positions only: a value that also replaced the stop's position answered this
    rephrasing ". piano"."""
    editor = SemanticEditor(smollm)
    try:
        [result] = editor.edit([EditRequest(prompt="Matthew Tuck plays", target="piano", subject="Matthew Tuck")])
        assert result.success
        assert editor.route("Matthew Tuck plays the instrument") == result.edit_id
        assert smollm.generate("Matthew Tuck plays", max_new_tokens=2).strip() == "piano."
        assert smollm.generate("Matthew Tuck plays the instrument", max_new_tokens=2).strip().startswith("piano")
    finally:
        editor.remove()

"""The CounterFact loader reads ROME's and EasyEdit's layouts into the editing benchmark's records, and refuses anything else."""
from __future__ import annotations

import json

import pytest

from agentmem import InvalidInputError
from agentmem.eval.counterfact import is_counterfact, load_counterfact

CASE = {
    "case_id": 0,
    "requested_rewrite": {"prompt": "{} plays the position of", "subject": "David Robinson",
                          "target_new": {"str": "goaltender"}, "target_true": {"str": "center"}},
    "paraphrase_prompts": ["David Robinson is known for playing as", "What position does David Robinson play?"],
    "neighborhood_prompts": ["Shaquille O'Neal plays the position of", "Hakeem Olajuwon plays as"],
}


def test_a_counterfact_case_becomes_a_record_with_its_neighbourhood(tmp_path):
    path = tmp_path / "counterfact.json"
    path.write_text(json.dumps([CASE, CASE]))
    assert is_counterfact(path)
    [record] = load_counterfact(path, limit=1)
    assert (record.src, record.alt, record.true) == ("David Robinson plays the position of", "goaltender", "center")
    assert record.rephrase == CASE["paraphrase_prompts"][0] and record.subject == "David Robinson"
    assert record.neighbourhood == tuple(CASE["neighborhood_prompts"])
    assert (record.loc, record.loc_ans) == (CASE["neighborhood_prompts"][0], "center")


EASYEDIT_CASE = {
    "case_id": 7, "prompt": "Apple A5 was created by", "target_new": "Google", "subject": "Apple A5",
    "ground_truth": "Apple", "rephrase_prompt": "Apple A5 is a product of",
    "locality_prompt": "Calendar and Contacts Server was created by", "locality_ground_truth": "Apple",
}


def test_an_easyedit_case_becomes_a_record_with_its_locality_prompt_as_neighbour(tmp_path):
    path = tmp_path / "counterfact-edit.json"
    path.write_text(json.dumps([EASYEDIT_CASE]))
    assert is_counterfact(path)
    [record] = load_counterfact(path)
    assert (record.src, record.alt, record.true, record.subject) == ("Apple A5 was created by", "Google", "Apple", "Apple A5")
    assert record.rephrase == "Apple A5 is a product of"
    assert record.neighbourhood == ("Calendar and Contacts Server was created by",)
    assert (record.loc, record.loc_ans) == (record.neighbourhood[0], "Apple")


def test_an_easyedit_case_whose_locality_answer_is_another_object_is_refused(tmp_path):
    """Such a locality prompt is an unrelated one, not a neighbour: scoring it as one would be wrong."""
    path = tmp_path / "counterfact-edit.json"
    path.write_text(json.dumps([EASYEDIT_CASE | {"locality_ground_truth": "Microsoft"}]))
    with pytest.raises(InvalidInputError, match="locality answer"):
        load_counterfact(path)


def test_a_zsre_file_in_easyedit_layout_is_not_taken_for_counterfact(tmp_path):
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps([{"subject": "X", "src": "What is X?", "rephrase": "X is?", "alt": "Y", "loc": "q", "loc_ans": "a"}]))
    assert not is_counterfact(path)


def test_a_file_of_another_layout_is_refused(tmp_path):
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps([{"src": "q", "alt": "a"}]))
    assert not is_counterfact(path)
    with pytest.raises(InvalidInputError):
        load_counterfact(path)
    with pytest.raises(InvalidInputError):
        load_counterfact(tmp_path / "missing.json")


def _easyedit(subject: str, prompt: str, neighbour: str) -> dict:
    return {"prompt": prompt.format(subject), "subject": subject, "target_new": "Latin", "ground_truth": "French",
            "rephrase_prompt": f"Where {subject} is from, people speak the language of",
            "locality_prompt": neighbour, "locality_ground_truth": "French"}


def test_a_template_paraphrase_asks_the_record_s_relation_in_its_neighbour_s_other_wording(tmp_path):
    """The neighbour's template is the longest rewrite template it fits ("{} plays the position of", not "{} plays");
    a record whose neighbour is worded as its own prompt has no other wording and is left out."""
    path = tmp_path / "counterfact-edit.json"
    path.write_text(json.dumps([
        _easyedit("Danielle Darrieux", "The mother tongue of {} is", "Michel Rocard is a native speaker of"),
        _easyedit("Léon Blum", "{} is a native speaker of", "Jacques Chirac is a native speaker of"),
        _easyedit("David Robinson", "{} plays", "Shaquille O'Neal plays the position of"),
        _easyedit("Hakeem Olajuwon", "{} plays the position of", "Tim Duncan plays"),
    ]))
    assert [r.rephrase for r in load_counterfact(path)][0] == "Where Danielle Darrieux is from, people speak the language of"
    records = load_counterfact(path, paraphrases="template")
    assert [(r.subject, r.rephrase) for r in records] == [
        ("Danielle Darrieux", "Danielle Darrieux is a native speaker of"),
        ("David Robinson", "David Robinson plays the position of"),
        ("Hakeem Olajuwon", "Hakeem Olajuwon plays"),
    ]
    assert records[0].neighbourhood == ("Michel Rocard is a native speaker of",)
    assert len(load_counterfact(path, limit=2, paraphrases="template")) == 2
    with pytest.raises(InvalidInputError, match="paraphrases"):
        load_counterfact(path, paraphrases="templates")

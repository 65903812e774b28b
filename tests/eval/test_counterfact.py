"""The CounterFact loader reads ROME's layout into the editing benchmark's records, and refuses anything else."""
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


def test_a_file_of_another_layout_is_refused(tmp_path):
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps([{"src": "q", "alt": "a"}]))
    assert not is_counterfact(path)
    with pytest.raises(InvalidInputError):
        load_counterfact(path)
    with pytest.raises(InvalidInputError):
        load_counterfact(tmp_path / "missing.json")

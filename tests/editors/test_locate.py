"""Where a fact lives: the subject rule, its token, and the states read there (tiny random LLaMA)."""
from __future__ import annotations

import pytest
import torch

from agentmem.editors.locate import derived_subject, subject_position, subject_states
from agentmem.errors import InvalidInputError


@pytest.mark.parametrize(
    ("prompt", "subject"),
    [
        ("Alice lives in", "Alice"),
        ("The Great Wall is located in", "The Great Wall"),
        ("Bank of America is based in", "Bank of America"),
        ("Marie Curie's husband was", "Marie Curie"),
        ("the sky is", "the sky is"),  # no proper-noun phrase: the prompt is its own subject
        ("The project deadline is", "The project deadline is"),
        ("What company made Volvo B12M?", "Volvo B12M"),  # a question: its longest proper-noun phrase
        ("Who is the architect of Toodyay Fire Station?", "Toodyay Fire Station"),
        ("The genus Platypatrobus is a part of what family?", "Platypatrobus"),
        ("In which fictional universe is Chlorophyll Kid a character?", "Chlorophyll Kid"),
    ],
)
def test_the_derived_subject_is_the_leading_proper_noun_phrase(prompt, subject):
    assert derived_subject(prompt) == subject


def test_the_subject_position_is_the_token_holding_its_last_character(tiny_lm):
    prompt = "Alice lives in Lisbon"
    at = subject_position(tiny_lm, prompt, "Alice")
    spans = tiny_lm.tokenizer(prompt, return_offsets_mapping=True)["offset_mapping"]
    assert spans[at][0] < len("Alice") <= spans[at][1]
    assert subject_position(tiny_lm, prompt, "lives in Lisbon") == len(spans) - 1
    with pytest.raises(InvalidInputError):
        subject_position(tiny_lm, prompt, "Bob")


def test_states_are_read_at_each_prompt_own_position_whatever_the_padding(tiny_lm):
    blocks = tiny_lm.model.base_model.layers
    projections = {0: blocks[0].mlp.down_proj, 1: blocks[1].mlp.down_proj}
    short, long = tiny_lm.tokenizer("Alice lives").input_ids, tiny_lm.tokenizer("Bob lives in Oslo now").input_ids
    together = subject_states(tiny_lm, projections, blocks[1], [short, long], [len(short) - 1, 2])
    alone = subject_states(tiny_lm, projections, blocks[1], [short], [len(short) - 1])
    assert torch.allclose(together.keys[1][0], alone.keys[1][0], atol=1e-5)
    assert torch.allclose(together.top[0], alone.top[0], atol=1e-5)
    assert together.keys[0].shape == (2, 128) and together.top.shape == (2, 64)

"""Where a fact lives: the subject rule, its token, and the states read there (tiny random LLaMA)."""
from __future__ import annotations

import pytest
import torch

from agentmem.editors.locate import (
    ValueSearch, context_prefixes, derived_subject, subject_position, subject_states, target_states,
)
from agentmem.errors import InvalidInputError
from agentmem.models import agentmem_home

pytestmark = pytest.mark.usefixtures("private_home")  # key statistics are cached in this session's home


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
        # a leading preposition opens the question: "Over" was the subject, and covered 9 unrelated ZsRE questions
        ("Over which river does Delaware Memorial Bridge cross?", "Delaware Memorial Bridge"),
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


def test_a_fact_key_is_the_mean_over_its_prefixed_prompts_and_its_top_state_the_bare_one(tiny_lm):
    blocks = tiny_lm.model.base_model.layers
    projections = {0: blocks[0].mlp.down_proj, 1: blocks[1].mlp.down_proj}
    bare, prefixed = tiny_lm.tokenizer("Alice lives").input_ids, tiny_lm.tokenizer("The sky is blue. Alice lives").input_ids
    at = [len(bare) - 1, len(prefixed) - 1]
    run = subject_states(tiny_lm, projections, blocks[1], [bare, prefixed], at, variants=2)
    each = subject_states(tiny_lm, projections, blocks[1], [bare, prefixed], at)
    assert run.keys[1].shape == (1, 128) and run.top.shape == (1, 64)
    assert torch.allclose(run.keys[1][0], each.keys[1].mean(0), atol=1e-5)
    assert torch.allclose(run.top[0], each.top[0], atol=1e-5) and not torch.allclose(each.keys[1][0], each.keys[1][1])


def test_a_run_of_identical_prompts_searches_the_same_state_as_the_bare_prompt_alone(tiny_lm):
    blocks = tiny_lm.model.base_model.layers
    search = ValueSearch(steps=8, lr=0.5, margin=0.0, clamp=100.0, weight_decay=0.5)
    pair = tiny_lm.encode_pair("The home of Alice", "Lisbon")
    at = subject_position(tiny_lm, "The home of Alice", "Alice")
    alone, steps_alone = target_states(tiny_lm, blocks, 2, [pair], [at], search)
    run, steps_run = target_states(tiny_lm, blocks, 2, [pair, pair], [at, at], search, variants=2)
    assert run.shape == alone.shape == (1, 64) and steps_run == steps_alone
    assert torch.allclose(run, alone, atol=1e-4)


def test_context_prefixes_are_sampled_once_and_cached(tiny_lm):
    prefixes = context_prefixes(tiny_lm, 3, tokens=5)
    assert list((agentmem_home() / "statistics").glob("prefixes-*.json"))
    assert len(prefixes) == 3 and all(p.endswith(". ") and p.strip() for p in prefixes)
    assert context_prefixes(tiny_lm, 3, tokens=5) == prefixes and context_prefixes(tiny_lm, 0) == []

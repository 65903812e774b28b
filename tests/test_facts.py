"""The rule-based fact extractor, the LLM-backed one, and facts on notes."""
from __future__ import annotations

import pytest

from agentmem import Fact, InvalidInputError
from agentmem.facts import LLMFactExtractor, extract_fact


@pytest.mark.parametrize("text, prompt, target", [
    ("Alice lives in Lisbon", "Alice lives in", "Lisbon"),
    ("The project deadline is March 3", "The project deadline is", "March 3"),
    ("Alice lives in Lisbon.", "Alice lives in", "Lisbon"),
    ("Maya's cat is called Nata.", "Maya's cat is called", "Nata"),
    ("Bob works at Acme Corp", "Bob works at", "Acme Corp"),
    ("The capital of Atlantis is Poseidonia", "The capital of Atlantis is", "Poseidonia"),
    ("Dana likes jazz", "Dana likes", "jazz"),
])
def test_simple_declaratives_become_facts(text, prompt, target):
    assert extract_fact(text) == Fact(prompt=prompt, target=target)


@pytest.mark.parametrize("text", [
    "Where does Alice live?",                                        # a question
    "My sister is Ines",                                             # first person: whose sister?
    "Your train leaves at noon",                                     # second person
    "He is in Paris",                                                # a pronoun needs context
    "Bob is not in Oslo",                                            # negation
    "Bob isn't in Oslo",
    "Alice probably lives in Porto",                                 # no relation right after the subject
    "Alice is maybe in Porto",                                       # hedge
    "The studio is in Alfama, I walk there along the river",         # compound
    "Alice lives in Lisbon. Bob lives in Oslo.",                     # two sentences
    "The weather today is rainy and grey",                           # compound target
    "Nata knocked the plant off the balcony again",                  # no known relation
    "The meeting is about the budget for the next three fiscal years",  # target too long
    "   ",
])
def test_anything_else_gives_no_fact(text):
    assert extract_fact(text) is None


def test_the_llm_extractor_keeps_only_facts_found_in_the_text():
    answers = iter(["Alice lives in | Lisbon", "Alice lives in | Paris", "none", "garbage without a bar"])
    extractor = LLMFactExtractor(lambda messages: next(answers), fallback=None)
    assert extractor("Alice lives in Lisbon these days") == Fact(prompt="Alice lives in", target="Lisbon")
    assert extractor("Alice lives in Lisbon these days") is None   # Paris is not in the text: invented
    assert extractor("Alice lives in Lisbon these days") is None
    assert extractor("Alice lives in Lisbon these days") is None


def test_the_llm_extractor_falls_back_to_the_rules_when_the_model_fails():
    seen = []

    def broken(messages):
        seen.append(messages)
        raise RuntimeError("model crashed")

    extractor = LLMFactExtractor(broken)
    assert extractor("Bob works at Acme") == Fact(prompt="Bob works at", target="Acme")
    assert seen and seen[0][0]["role"] == "user" and "Bob works at Acme" in seen[0][0]["content"]


def test_notes_get_facts_from_the_extractor_unless_given_or_switched_off(tmp_path, embedder):
    from agentmem import Memory

    explicit = Fact(prompt="Alice's home town is", target="Lisbon", rephrases=("Alice comes from",))
    with Memory(tmp_path / "m", embedder=embedder) as mem:
        assert mem.remember("Alice lives in Lisbon").fact == Fact(prompt="Alice lives in", target="Lisbon")
        assert mem.remember("Alice grew up by the sea in Lisbon", fact=explicit).fact == explicit
        assert mem.remember("What a lovely day it was").fact is None
        note = mem.remember("The project deadline is March 3")
        assert mem.update(note.id, text="The project deadline is March 10").fact.target == "March 10"
    with Memory(tmp_path / "n", embedder=embedder, fact_extractor=None) as mem:
        assert mem.remember("Alice lives in Lisbon").fact is None
    with Memory(tmp_path / "o", embedder=embedder, fact_extractor=lambda text: 1 / 0) as mem:
        assert mem.remember("Alice lives in Lisbon").fact is None   # a failing extractor costs the fact, not the note


def test_malformed_facts_are_refused(tmp_path, embedder):
    from agentmem import Memory

    with Memory(tmp_path / "m", embedder=embedder) as mem:
        for bad in ({"prompt": "  ", "target": "x"}, {"prompt": "x"}, {"prompt": "x", "target": "y", "rephrases": [""]}):
            with pytest.raises(InvalidInputError):
                mem.remember("Some text", fact=bad)
        assert mem.stats().notes == 0


# -- question forms and neighbour prompts, from the same parse --------------------------------------

from agentmem.facts import fact_subject, neighbour_prompts, parse_prompt, question_forms  # noqa: E402


@pytest.mark.parametrize("text, questions", [
    ("Alice lives in Lisbon", ("Where does Alice live?", "What city does Alice live in?", "What city is Alice in?")),
    ("Alice's locker code is 4471", ("What is Alice's locker code?",)),
    ("The project deadline is March 3", ("What is the project deadline?",)),
    ("Bob works at Acme Corp", ("Where does Bob work?", "Who does Bob work for?")),
    ("Dana teaches maths", ("What does Dana teach?",)),
    ("Maya's cat is called Nata", ("What is Maya's cat called?",)),
])
def test_a_fact_has_the_questions_a_user_would_ask(text, questions):
    assert question_forms(extract_fact(text)) == questions


def test_neighbours_share_the_subject_or_the_relation_but_not_both():
    fact = extract_fact("Alice lives in Lisbon")
    near = neighbour_prompts(fact)
    assert "Alice works at" in near and "Where does Alice work?" in near        # same subject, another relation
    assert "Maria lives in" in near and "Where does Maria live?" in near        # same relation, another subject
    assert fact.prompt not in near and not set(question_forms(fact)) & set(near)


def test_an_unparsed_prompt_has_no_question_forms_or_neighbours():
    fact = Fact(prompt="What university did Watts Humphrey attend?", target="University of Michigan")
    assert parse_prompt(fact.prompt) is None
    assert question_forms(fact) == () and neighbour_prompts(fact) == ()


@pytest.mark.parametrize("text, subject", [
    ("Alice lives in Lisbon", "Alice"),
    ("The project deadline is March 3", "The project deadline"),
    ("Alice's locker code is 4471", "Alice's locker code"),
    ("Bob works at Acme Corp", "Bob"),
])
def test_a_fact_subject_is_the_parse_subject_and_reads_in_the_prompt(text, subject):
    fact = extract_fact(text)
    assert fact_subject(fact.prompt) == subject and subject in fact.prompt


def test_an_unparsed_prompt_has_no_subject():
    assert fact_subject("What university did Watts Humphrey attend?") is None
    assert fact_subject("Alice\n Smith lives in") is None  # the parse's subject ("Alice Smith") must read verbatim

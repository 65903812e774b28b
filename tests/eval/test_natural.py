"""Natural-stopping scoring: the first sentence is the answer, and the target must be that answer."""
from __future__ import annotations

import pytest

from agentmem.eval.natural import first_sentence, is_answer


@pytest.mark.parametrize("generated, target, correct", [
    (" Lisbon.", "Lisbon", True),
    (" Lisbon, Portugal. It is sunny.", "Lisbon", True),
    ("lisbon", "Lisbon", True),
    (" The Beatles", "Beatles", True),
    (" 4471211", "4471", False),          # the answer runs on into other digits
    (" Lisbonne", "Lisbon", False),
    (" I think Lisbon.", "Lisbon", False),   # the target is in the sentence but is not the answer
    (" Porto. Lisbon.", "Lisbon", False),    # only the first sentence counts
    ("\nLisbon", "Lisbon", True),
    ("", "Lisbon", False),
])
def test_the_target_must_be_the_first_sentences_answer(generated, target, correct):
    assert is_answer(generated, target) is correct


def test_first_sentence_keeps_abbreviations_and_decimals_inside_words():
    assert first_sentence(" 3.5 million people. More") == "3.5 million people"
    assert first_sentence("Yes\nNo") == "Yes"

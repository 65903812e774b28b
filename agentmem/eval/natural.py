"""Generation-based scoring with natural stopping: what a user would read, not what teacher forcing flatters.

The "WILD" protocol of "The Mirage of Model Editing" (ACL 2025): greedy generation until the end
of the first sentence or twice the target's tokens, whichever comes first; correct when the
target is the answer. Here "is the answer" means: after normalizing both (case, punctuation,
articles, spacing, as SQuAD does), the answer equals the target or starts with it followed by
more words ("Lisbon, Portugal" answers "Lisbon"; "Lisbonne" and "I think Lisbon" do not).
Completion form continues the bare prompt; chat form puts the prompt as the user's message in
the model's chat template (after `system`, if given).
"""
from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Sequence

from ..models import LanguageModel

_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def first_sentence(text: str) -> str:
    """`text` up to (not including) the end of its first sentence."""
    text = text.lstrip()
    match = _SENTENCE_END.search(text)
    return text[: match.start()] if match else text


def normalize(text: str) -> str:
    text = "".join(c for c in text.casefold() if c not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def is_answer(generated: str, target: str) -> bool:
    """Whether the first sentence of `generated` is the target (see the module docstring)."""
    answer, expected = normalize(first_sentence(generated)), normalize(target)
    return bool(expected) and (answer == expected or answer.startswith(expected + " "))


def natural_answers(lm: LanguageModel, pairs: Sequence[tuple[str, str]], chat: bool = False, system: str | None = None,
                    batch_size: int = 16) -> list[str]:
    """Per (prompt, target): the greedy answer, at most 2x the target's tokens, cut after its first sentence."""
    by_budget: dict[int, list[int]] = defaultdict(list)
    for index, (prompt, target) in enumerate(pairs):
        by_budget[2 * len(lm.encode_pair(prompt, target)[1])].append(index)
    answers = [""] * len(pairs)
    for budget, indices in by_budget.items():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            if chat:
                head = [{"role": "system", "content": system}] if system else []
                outputs = lm.reply_batch([[*head, {"role": "user", "content": pairs[i][0]}] for i in chunk], budget)
            else:
                outputs = lm.generate_batch([pairs[i][0] for i in chunk], max_new_tokens=budget)
            for i, output in zip(chunk, outputs):
                answers[i] = first_sentence(output)
    return answers


def natural_exact_match(lm: LanguageModel, pairs: Sequence[tuple[str, str]], chat: bool = False,
                        system: str | None = None) -> list[float]:
    """Per pair: 1.0 when the naturally stopped greedy answer is the target."""
    answers = natural_answers(lm, pairs, chat, system)
    return [float(is_answer(a, target)) for a, (_, target) in zip(answers, pairs)]

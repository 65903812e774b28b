"""Where a fact lives in the weights: its subject's last token, the keys there, and the target state.

The locate-and-edit editors (ROME, MEMIT, EMMET, AlphaEdit) read a fact as (subject, relation,
object): the MLPs of a band of early-middle blocks recall facts about a subject at the subject's
last token, so that token's MLP down-projection input is the fact's *key* at each edited layer,
and the residual stream after the band's last block there is what must change. The target of
that change is found by gradient: a vector added to the residual at that one position until the
model continues the prompt with the target (Meng et al. 2022, 2023).

The subject: `EditRequest.subject` when given (ZsRE records carry it). Otherwise the prompt's
leading proper-noun phrase, which is the rule-based fact extractor's subject for sentences like
"Alice lives in" or "The Great Wall is located in"; a prompt with no such phrase is its own
subject (the key is then its last token, and the edit is keyed on the whole prompt).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InvalidInputError
from ..models import LanguageModel
from .base import Captured

_ARTICLES = {"The", "A", "An"}
_JOINERS = {"of", "de", "the", "von", "van", "and", "&", "del", "la", "le"}


def derived_subject(prompt: str) -> str:
    """The prompt's leading proper-noun phrase (capitalised words, 'of'-like joiners inside), else the prompt."""
    words = prompt.split()
    taken: list[str] = []
    for index, word in enumerate(words):
        bare = word.strip("\"'“”()")
        if bare[:1].isupper() or bare[:1].isdigit() or (index == 0 and bare in _ARTICLES):
            taken.append(word)
        elif taken and bare in _JOINERS and index + 1 < len(words) and words[index + 1][:1].isupper():
            taken.append(word)
        else:
            break
    while taken and (taken[-1] in _JOINERS or taken[-1] in _ARTICLES):
        taken.pop()
    subject = re.sub(r"(['’]s)?[,.;:?!]*$", "", " ".join(taken))
    return subject if subject and subject not in _ARTICLES else prompt.strip()


def mentions(prompt: str, subject: str) -> bool:
    """Whether `subject` occurs in `prompt` as whole words, ignoring case ("Ra" is not in "Rain")."""
    return re.search(r"(?<!\w)" + re.escape(subject) + r"(?!\w)", prompt, re.IGNORECASE) is not None


def subject_position(lm: LanguageModel, prompt: str, subject: str) -> int:
    """Index, in the prompt's token ids, of the token holding the subject's last character (its last occurrence)."""
    start = prompt.casefold().rfind(subject.casefold())
    if start < 0:
        raise InvalidInputError(f"the subject {subject!r} does not occur in the prompt {prompt!r}")
    end = start + len(subject)
    encoding = lm.tokenizer(prompt, return_offsets_mapping=True)
    for index, (first, last) in enumerate(encoding["offset_mapping"]):
        if first < end <= last or (first <= end - 1 < last):
            return index
    return len(encoding["input_ids"]) - 1


@dataclass
class SubjectStates:
    """At each fact's subject token: the key at each edited layer, and the residual after the top block."""

    keys: dict[int, torch.Tensor]  # layer -> (facts, key size)
    top: torch.Tensor  # (facts, hidden size)


def subject_states(
    lm: LanguageModel, projections: dict[int, nn.Module], top_block: nn.Module,
    prompts: Sequence[list[int]], positions: Sequence[int],
) -> SubjectStates:
    """One padded forward of the prompts, stopped after `top_block`; read at each prompt's subject position.

    Padding goes on the right: with causal attention no real position sees it.
    """
    pad = lm.tokenizer.pad_token_id
    length = max(len(p) for p in prompts)
    batch = torch.tensor([p + [pad] * (length - len(p)) for p in prompts], device=lm.device)
    rows = torch.arange(len(prompts), device=lm.device)
    at = torch.tensor(list(positions), device=lm.device)
    keys: dict[int, torch.Tensor] = {}
    top: list[torch.Tensor] = []

    def key_hook(layer: int):
        def grab(module: nn.Module, args: tuple) -> None:
            keys[layer] = args[0][rows, at].detach().float()
        return grab

    def top_hook(module: nn.Module, args: tuple, output: object) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        top.append(hidden[rows, at].detach().float())
        raise Captured

    handles = [module.register_forward_pre_hook(key_hook(layer)) for layer, module in projections.items()]
    handles.append(top_block.register_forward_hook(top_hook))
    try:
        with torch.no_grad():
            lm.model(input_ids=batch, use_cache=False)
    except Captured:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return SubjectStates(keys, top[0])

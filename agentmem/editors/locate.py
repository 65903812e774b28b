"""Where a fact lives in the weights: its subject's last token, the keys there, and the target state.

The locate-and-edit editors (ROME, MEMIT, EMMET, AlphaEdit) read a fact as (subject, relation,
object): the MLPs of a band of early-middle blocks recall facts about a subject at the subject's
last token, so that token's MLP down-projection input is the fact's *key* at each edited layer,
and the residual stream after the band's last block there is what must change. The target of
that change is found by gradient: a vector added to the residual at that one position until the
model continues the prompt with the target (Meng et al. 2022, 2023).

The subject: `EditRequest.subject` when given (ZsRE records carry it). Otherwise the prompt's
leading proper-noun phrase, which is the rule-based fact extractor's subject for sentences like
"Alice lives in" or "The Great Wall is located in"; in a question ("What company made Volvo B12M?")
the longest proper-noun phrase after the question word (ZsRE's subject for 888 of its first 1,000
questions, overlapping it for 996); a prompt with no such phrase is its own subject (the key is
then its last token, and the edit is keyed on the whole prompt).
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidInputError
from ..models import LanguageModel, agentmem_home
from .base import Captured, leads

_ARTICLES = {"The", "A", "An"}
_JOINERS = {"of", "de", "the", "von", "van", "and", "&", "del", "la", "le"}
# Words that open a question (or a sentence) without being its subject.
_OPENERS = {
    "What", "Which", "Who", "Whom", "Whose", "When", "Where", "Why", "How", "In", "On", "At", "From", "By", "For",
    "Of", "To", "During", "With", "Into", "After", "Before", "Under", "Over", "Through", "Across", "Against",
    "Between", "Among", "Within", "Near", "Since", "Until", "Upon", "About", "Along", "Around", "Behind", "Beyond",
    "Is", "Was", "Are", "Were", "Did", "Does", "Do", "Has", "Have", "Had", "Can", "The", "A", "An",
}


def derived_subject(prompt: str) -> str:
    """The prompt's leading proper-noun phrase ("Alice lives in"); in a question ("What company made Volvo
    B12M?"), its longest proper-noun phrase after the question word; else the whole prompt."""
    phrases = _proper_noun_phrases(prompt.split())
    leading = [phrase for start, phrase in phrases if start == 0 and _first_word(phrase) not in _OPENERS]
    if leading or (phrases and phrases[0][0] == 0 and len(phrases[0][1].split()) > 1):
        return phrases[0][1]  # "Alice lives in", "The Great Wall is located in"
    later = [phrase for start, phrase in phrases if start > 0]
    return max(reversed(later), key=lambda phrase: len(phrase.split())) if later else prompt.strip()


def _first_word(phrase: str) -> str:
    return phrase.split()[0].strip("\"'“”(")


def _proper_noun_phrases(words: list[str]) -> list[tuple[int, str]]:
    """(first word's index, phrase) of each run of capitalised words (or numbers), 'of'-like joiners inside,
    a leading article kept at the sentence start; trailing punctuation and possessives cut."""
    phrases: list[tuple[int, str]] = []
    taken: list[str] = []
    start = 0
    for index, word in enumerate(words + [""]):
        bare = word.strip("\"'“”()")
        capital = bare[:1].isupper() or bare[:1].isdigit()
        if capital or (index == 0 and bare in _ARTICLES):
            start = index if not taken else start
            taken.append(word)
            if not re.search(r"[,;:?!]$", word):
                continue
        elif taken and bare in _JOINERS and index + 1 < len(words) and words[index + 1][:1].isupper():
            taken.append(word)
            continue
        while taken and (taken[-1] in _JOINERS or taken[-1] in _ARTICLES):
            taken.pop()
        phrase = re.sub(r"(['’]s)?[,.;:?!]*$", "", " ".join(taken))
        if phrase and phrase not in _ARTICLES:
            phrases.append((start, phrase))
        taken = []
    return phrases


PREFIX_STARTS = ("The", "Therefore", "Because", "I", "You")  # MEMIT's openers for its context templates


def context_prefixes(lm: LanguageModel, count: int, tokens: int = 10, seed: int = 0) -> list[str]:
    """`count` short texts the model writes itself, each ending in ". ", to put before a fact's prompt.

    A key read at the subject's last token depends on the text before it. Averaging the key, and
    searching the target state, over prompts with a few such prefixes (MEMIT's and AlphaEdit's
    context templates) makes the edit depend less on the exact wording it was given. Sampled
    once at temperature 1 from MEMIT's openers, cached under AGENTMEM_HOME.
    """
    if count <= 0:
        return []
    settings = {"model": lm.name, "count": count, "tokens": tokens, "seed": seed}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
    cache = agentmem_home() / "statistics" / f"prefixes-{digest}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    starts = [PREFIX_STARTS[i % len(PREFIX_STARTS)] for i in range(count)]
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        texts = lm.generate_batch(starts, max_new_tokens=tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    finally:
        torch.random.set_rng_state(generator_state)
    prefixes = [" ".join(f"{start}{text}".split()).rstrip(".") + ". " for start, text in zip(starts, texts)]
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(cache.name + ".partial")
    partial.write_text(json.dumps(prefixes))
    partial.replace(cache)
    return prefixes


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
    prompts: Sequence[list[int]], positions: Sequence[int], variants: int = 1,
) -> SubjectStates:
    """One padded forward of the prompts, stopped after `top_block`; read at each prompt's subject position.

    The prompts come in runs of `variants` per fact (the bare prompt first, then its prefixed
    copies): a fact's key is the mean over its run, its top state the bare prompt's.
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
            read = args[0][rows, at].detach().float()
            keys[layer] = read.view(-1, variants, read.shape[-1]).mean(1)
        return grab

    def top_hook(module: nn.Module, args: tuple, output: object) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        top.append(hidden[rows[::variants], at[::variants]].detach().float())
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


@dataclass
class ValueSearch:
    """The settings of the target-state search (see `target_states`)."""

    steps: int
    lr: float
    margin: float
    clamp: float
    weight_decay: float


def target_states(
    lm: LanguageModel, blocks: nn.ModuleList, upper: int, pairs: Sequence[tuple[list[int], list[int]]],
    positions: Sequence[int], search: ValueSearch, variants: int = 1,
) -> tuple[torch.Tensor, list[int]]:
    """Per fact, the residual state entering block `upper` at its subject token that makes its target come out,
    and the Adam steps that took; all facts in one padded batch.

    The pairs come in runs of `variants` per fact (the bare prompt first, then prefixed copies,
    see `context_prefixes`): one change vector per fact, added at the subject token of every
    prompt of its run, its loss the run's mean, done when every target token of every prompt of
    the run leads by `margin`; the result is the bare prompt's state plus that change.
    The rows are left-padded so that every subject token falls in one column: the columns before it
    run once into a KV cache, and each step runs only the columns from it on through blocks
    `upper` and above. Each fact has its own change vector, loss and stopping test, so a fact's
    result is what it would be alone; finished facts leave the batch, and the steps get cheaper
    as the batch empties.
    """
    device, pad = lm.device, lm.tokenizer.pad_token_id
    sequences = [prompt + target[:-1] for prompt, target in pairs]
    prefix = max(positions)
    suffix = max(len(s) - at for s, at in zip(sequences, positions))  # every row's columns from its subject on
    rows = [[pad] * (prefix - at) + s + [pad] * (suffix - len(s) + at) for s, at in zip(sequences, positions)]
    mask = torch.tensor(
        [[0] * (prefix - at) + [1] * len(s) + [0] * (suffix - len(s) + at) for s, at in zip(sequences, positions)],
        device=device,
    )
    ids = torch.tensor(rows, device=device)
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    for index, (s, at) in enumerate(zip(sequences, positions)):  # right padding continues the positions
        position_ids[index, prefix - at + len(s):] += torch.arange(1, suffix - len(s) + at + 1, device=device)
    past, hidden = _prefix_and_hidden(lm, blocks[upper], ids, mask, position_ids, prefix)

    # target token j of row r is predicted at suffix column first_r + j
    firsts = [len(prompt) - 1 - at for (prompt, _), at in zip(pairs, positions)]
    targets = [torch.tensor(target, device=device) for _, target in pairs]
    bare = hidden[::variants, 0]  # each fact's bare prompt
    facts = len(bare)
    run = [list(range(fact * variants, (fact + 1) * variants)) for fact in range(facts)]
    scale = bare.norm(dim=-1)
    delta = torch.zeros_like(bare, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=search.lr)
    result = torch.zeros_like(bare)
    steps = [search.steps] * facts
    active = list(range(facts))
    base_model = lm.model.base_model
    lengths = [len(s) - at for s, at in zip(sequences, positions)]
    for step in range(search.steps + 1):
        active_rows = [row for fact in active for row in run[fact]]
        chosen = torch.tensor(active_rows, device=device)
        width = max(lengths[row] for row in active_rows)  # the suffix columns the remaining facts need
        shifted = torch.cat([hidden[chosen, :1] + delta[chosen // variants, None], hidden[chosen, 1:width]], 1)
        cache = copy.deepcopy(past)
        if cache is not None:
            cache.batch_select_indices(chosen)
        base_model.layers = blocks[upper:]
        try:
            states = base_model(
                inputs_embeds=shifted, attention_mask=mask[chosen, : prefix + width],
                position_ids=position_ids[chosen, prefix : prefix + width], cache=cache, use_cache=cache is not None,
            ).last_hidden_state
        finally:
            base_model.layers = blocks
        spans = [states[at, firsts[row] : firsts[row] + len(targets[row])] for at, row in enumerate(active_rows)]
        logits = lm.model.lm_head(torch.cat(spans)).split([len(span) for span in spans])  # one pass over the head
        by_row = dict(zip(active_rows, logits))
        finished = [
            fact for fact in active
            if step == search.steps
            or all(bool(leads(by_row[row].detach(), targets[row], search.margin).all()) for row in run[fact])
        ]
        with torch.no_grad():
            for fact in finished:
                result[fact] = bare[fact] + delta[fact]
                steps[fact] = step
        if len(finished) == len(active):
            break
        loss = sum(
            sum(F.cross_entropy(by_row[row], targets[row]) for row in run[fact]) / variants
            + search.weight_decay * (delta[fact].norm() / scale[fact]) ** 2
            for fact in active if fact not in finished
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        active = [fact for fact in active if fact not in finished]
        with torch.no_grad():
            if finished:  # Adam's momentum moves rows with no gradient; the finished ones keep their result
                delta[finished] = result[finished] - bare[finished]
            limit = (search.clamp * scale)[:, None]
            delta.copy_(delta * (limit / delta.norm(dim=-1, keepdim=True).clamp(min=1e-12)).clamp(max=1.0))
    return result, steps


def _prefix_and_hidden(
    lm: LanguageModel, block: nn.Module, ids: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor, prefix: int,
) -> tuple[Any, torch.Tensor]:
    """The KV cache of the first `prefix` columns (None if none), and `block`'s input on the columns after."""
    captured: dict[str, torch.Tensor] = {}

    def grab(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured["hidden"] = (args[0] if args else kwargs["hidden_states"]).detach()
        raise Captured

    past = None
    with torch.no_grad():
        if prefix:
            past = lm.model(
                input_ids=ids[:, :prefix], attention_mask=mask[:, :prefix], position_ids=position_ids[:, :prefix],
                use_cache=True, logits_to_keep=1,
            ).cache
        handle = block.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            lm.model(
                input_ids=ids[:, prefix:], attention_mask=mask, position_ids=position_ids[:, prefix:],
                cache=copy.deepcopy(past), use_cache=past is not None,
            )
        except Captured:
            pass
        finally:
            handle.remove()
    return past, captured["hidden"]

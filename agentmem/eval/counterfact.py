"""CounterFact (Meng et al., 2022): counterfactual edits with paraphrase and neighbourhood prompts.

The project ships no CounterFact file. The benchmark takes one as a path (`--data`), in either
of the two layouts users have:

- ROME's `counterfact.json` (https://rome.baulab.info/data/dsets/counterfact.json): a list of
  records with `requested_rewrite` (`prompt` with a `{}` for `subject`, `target_new`,
  `target_true`), `paraphrase_prompts` and `neighborhood_prompts`;
- EasyEdit's `counterfact-edit.json` (from EasyEdit's data release): flat records with `prompt`,
  `subject`, `target_new`, `ground_truth`, one `rephrase_prompt` and one `locality_prompt` (a
  neighbourhood prompt: the same relation about another subject) with its `locality_ground_truth`.

Each record becomes a `ZsreRecord` (so the editing benchmark's protocol applies unchanged:
`src` the rewrite prompt, `alt` the new object, `rephrase` the first paraphrase, `loc` the first
neighbourhood prompt with the true object as `loc_ans`) and keeps its neighbourhood prompts and
true object for the Neighbourhood Score: the share of neighbourhood prompts where the true object
is still more likely than the new one (`neighbourhood_score`).

Paraphrases. ROME's `paraphrase_prompts` restate the edited relation in another template, after an
unrelated sentence. EasyEdit's `rephrase_prompt` is often a consequence or another relation instead
("The mother tongue of Danielle Darrieux is" -> "Where Danielle Darrieux is from, people speak the
language of"; "Thomas Joannes Stieltjes was born in" for a mother-tongue edit), which an editor that
keeps other relations apart must not answer with the new object. With `paraphrases="template"` a
record's paraphrase is its own subject put into the template of its first neighbourhood prompt that
is worded otherwise: the same relation by CounterFact's construction, in another wording ("Michel
Rocard is a native speaker of" -> "Danielle Darrieux is a native speaker of"). A neighbourhood
prompt's template is the longest of the file's rewrite templates (each record's `src` with its
subject cut out) that it fits; records without such a prompt are left out.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import torch
from pydantic import ValidationError

from ..errors import InvalidInputError
from ..models import LanguageModel
from .zsre import ZsreRecord


class CounterFactRecord(ZsreRecord):
    """A CounterFact case as the editing benchmark reads it, with what the Neighbourhood Score needs."""

    true: str
    neighbourhood: tuple[str, ...]


Paraphrases = Literal["file", "template"]
_SLOT = "{}"  # where a template's subject goes


def load_counterfact(
    path: str | Path, limit: int | None = None, paraphrases: Paraphrases = "file",
) -> list[CounterFactRecord]:
    """The first `limit` records of a CounterFact file (ROME's or EasyEdit's layout), each with the file's
    paraphrase or (`paraphrases="template"`) its relation in another template; see the module docstring."""
    if paraphrases not in get_args(Paraphrases):
        raise InvalidInputError(f"paraphrases must be one of {get_args(Paraphrases)}, not {paraphrases!r}")
    path = Path(path)
    try:
        records = [_record(row) for row in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError, KeyError, IndexError, ValidationError) as exc:
        raise InvalidInputError(f"cannot read CounterFact records from {path}: {exc}") from exc
    if paraphrases == "template":
        records = with_template_paraphrases(records)
    return records[:limit]


def with_template_paraphrases(records: Sequence[CounterFactRecord]) -> list[CounterFactRecord]:
    """The records that have a neighbourhood prompt in another template than their own, each with its subject
    asked in that template as its `rephrase` (see the module docstring)."""
    templates = {template for r in records if (template := subject_template(r.src, r.subject)) is not None}
    fixed = {template: template.split(_SLOT) for template in templates}
    kept = []
    for record in records:
        own = subject_template(record.src, record.subject)
        for prompt in record.neighbourhood:
            fits = [t for t, (before, after) in fixed.items()
                    if prompt.startswith(before) and prompt.endswith(after) and len(prompt) > len(before) + len(after)]
            template = max(fits, key=len, default=None)
            if template is not None and template != own:
                kept.append(record.model_copy(update={"rephrase": template.replace(_SLOT, record.subject)}))
                break
    return kept


def subject_template(prompt: str, subject: str) -> str | None:
    """`prompt` with its subject cut out (the slot marked "{}"), or None when the subject is not in it once."""
    return prompt.replace(subject, _SLOT) if subject and prompt.count(subject) == 1 and _SLOT not in prompt else None


def is_counterfact(path: str | Path) -> bool:
    """Whether a data file is in a CounterFact layout: its first record has a `requested_rewrite` (ROME's)
    or a `locality_ground_truth` (EasyEdit's; ZsRE files in EasyEdit's layout have none)."""
    try:
        with open(path, encoding="utf-8") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return '"requested_rewrite"' in head or '"locality_ground_truth"' in head


def _record(row: dict) -> CounterFactRecord:
    if "requested_rewrite" not in row:
        return _easyedit_record(row)
    rewrite = row["requested_rewrite"]
    subject = rewrite["subject"]
    true, new = rewrite["target_true"]["str"], rewrite["target_new"]["str"]
    neighbourhood = tuple(row["neighborhood_prompts"])
    return CounterFactRecord(
        subject=subject, src=rewrite["prompt"].format(subject), alt=new, rephrase=row["paraphrase_prompts"][0],
        loc=neighbourhood[0], loc_ans=true, true=true, neighbourhood=neighbourhood,
    )


def _easyedit_record(row: dict) -> CounterFactRecord:
    """EasyEdit's flat layout. Its locality prompt asks the edited relation of another subject whose object is
    the edit's true object, so it serves as the record's one neighbourhood prompt."""
    true, neighbour = row["ground_truth"], row["locality_prompt"]
    if row["locality_ground_truth"] != true:
        raise ValueError(f"case {row.get('case_id')}: the locality answer is not the edit's true object")
    return CounterFactRecord(
        subject=row["subject"], src=row["prompt"], alt=row["target_new"], rephrase=row["rephrase_prompt"],
        loc=neighbour, loc_ans=true, true=true, neighbourhood=(neighbour,),
    )


def target_logprob(lm: LanguageModel, prompt: str, target: str) -> float:
    """Log-probability of `target` after `prompt`, teacher-forced: the prompt is run first and the target fed
    after it through the KV cache, as generation does (so editors that key on the prompt see the prompt)."""
    prompt_ids, target_ids = lm.encode_pair(prompt, target)
    with torch.no_grad():
        first = lm.model(input_ids=torch.tensor([prompt_ids], device=lm.device), use_cache=True)
        logits = first.logits[0, -1:]
        if len(target_ids) > 1:
            rest = lm.model(input_ids=torch.tensor([target_ids[:-1]], device=lm.device),
                            cache=first.cache, use_cache=True)
            logits = torch.cat([logits, rest.logits[0]])
    picked = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(target_ids, device=lm.device)[:, None])
    return float(picked.sum())


def neighbourhood_score(lm: LanguageModel, records: Sequence[CounterFactRecord]) -> list[float]:
    """Per record: the share of its neighbourhood prompts where the true object beats the new one.

    An object's score is its probability as a whole (the sum of its tokens' log-probabilities), as
    CounterFact's paper defines the Neighbourhood Score; ROME's reference code compares the mean per
    token instead, which can flip single verdicts when the two objects have different token counts."""
    scores = []
    for record in records:
        wins = [target_logprob(lm, p, record.true) > target_logprob(lm, p, record.alt) for p in record.neighbourhood]
        scores.append(sum(wins) / len(wins) if wins else 1.0)
    return scores

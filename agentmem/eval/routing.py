"""Which routing signals keep a codebook edit off its neighbours: an ablation on ZsRE, at the routing level.

    python -m agentmem.eval.routing --n 500 --threads 1

A codebook edit changes the answer to a prompt exactly when the prompt is routed to it (elsewhere
the model is the base model, bit for bit), so where prompts are routed decides locality and
generalization; values do not enter, and are trained for one step only here. The first N ZsRE
records are edited as the consolidation job edits facts (the fact's question forms as further
keys, its parsed neighbour prompts kept out of the balls); records N..2N give other subjects and
other relations. Per routing signal, the share of:

- edit prompts and rephrases routed to an edit with their own target (rephrases also over the
  unambiguous records: those no other edited record asks about their subject with another target,
  `zsre.ambiguous`; an ambiguous rephrase can reach only one of its subject's targets);
- same relation, other subject (the record's question about another record's subject) and
  same subject, other relation (another record's question about this record's subject, unless the
  file links the two wordings as one relation, `zsre.Relations`) routed to no edit: their answers
  stay the base model's;
- unrelated `loc` questions routed to no edit.

With a CounterFact file (`--data`; `--paraphrases template` for its relations in other wordings), the
first N cases are edited as the editing benchmark edits them (prompt, new object, the case's subject);
other subject: each case's neighbourhood prompt (also its `loc`, so "unrelated" counts the same prompts);
other relation: the case's subject in the template of the case N places on, when the file's template
paraphrases do not join the two templates into one relation (`counterfact_neighbours`).

Signals: the semantic key (MiniLM embedding of the prompt, balls sized against the unrelated
prompts) alone; + the subject-word gate (`SemanticConfig.anchored`); + the relation gate
(`SemanticConfig.relation_radius`); + the known relations (`SemanticConfig.known_relation_radius`,
`sole_relation_radius`); + the base model's agreement (`SemanticConfig.base_agreement`, the defaults); + a margin
against the nearest entry with another target (`SemanticConfig.route_margin`); and GRACE's own key (the module's
input at the last prompt token). `--skip K` leaves out the first K records (CounterFact with `--paraphrases
template`: template cases), so that signals are tuned on other records than the benchmarks measure (K >= 2000 on
CounterFact).
With `--given-subject` the semantic edits carry the record's subject (`EditRequest.subject`), whose words
then are the gate's anchors, instead of the names and numbers derived from the question.
"""
from __future__ import annotations

import argparse
import functools
import statistics
from collections.abc import Callable, Sequence
from typing import get_args

import torch
from pydantic import BaseModel

from ..editors import EditRequest
from ..editors.codebook import CodebookEditor
from ..editors.grace import GraceConfig, GraceEditor
from ..editors.semantic import SemanticConfig, SemanticEditor
from ..facts import neighbour_prompts, question_forms
from ..models import load_model
from ..notes import Fact
from . import report
from .consolidation import neighbours
from .counterfact import (
    CounterFactRecord, Paraphrases, is_counterfact, load_counterfact, subject_template, with_template_paraphrases,
)
from .zsre import DEFAULT_EDIT_FILE, Relations, ZsreRecord, ambiguous, load_zsre


class RoutingScores(BaseModel):
    signal: str
    edits: int
    prompts_routed: float
    rephrases_routed: float
    unambiguous: int
    rephrases_routed_unambiguous: float
    other_subject: int
    other_subject_kept: float
    other_relation: int
    other_relation_kept: float
    unrelated_kept: float


def scores(signal: str, editor: CodebookEditor, records: Sequence[ZsreRecord], other_subject: Sequence[str],
           other_relation: Sequence[str]) -> RoutingScores:
    """Where the editor routes each prompt set (see the module docstring)."""
    target = {request.id: request.target for request in editor.edits()}
    clear = [r for r, unclear in zip(records, ambiguous(records)) if not unclear]

    def routed(prompts: Sequence[str], targets: Sequence[str]) -> float:
        return statistics.fmean(target.get(editor.route(p)) == t for p, t in zip(prompts, targets)) if prompts else 1.0

    def kept(prompts: Sequence[str]) -> float:
        return statistics.fmean(editor.route(p) is None for p in prompts) if prompts else 1.0

    return RoutingScores(
        signal=signal,
        edits=len(records),
        prompts_routed=routed([r.src for r in records], [r.alt for r in records]),
        rephrases_routed=routed([r.rephrase for r in records], [r.alt for r in records]),
        unambiguous=len(clear),
        rephrases_routed_unambiguous=routed([r.rephrase for r in clear], [r.alt for r in clear]),
        other_subject=len(other_subject),
        other_subject_kept=kept(other_subject),
        other_relation=len(other_relation),
        other_relation_kept=kept(other_relation),
        unrelated_kept=kept([r.loc for r in records]),
    )


def edit_all(editor: CodebookEditor, records: Sequence[ZsreRecord], given_subject: bool = False) -> None:
    """The records as the consolidation job edits facts: question forms as keys, parsed neighbours kept out; with
    `given_subject`, each edit names its subject (the record's `subject`, as a job names a fact's parsed subject)."""
    for r in records:
        fact = Fact(prompt=r.src, target=r.alt)
        forms = tuple(q for q in question_forms(fact) if q != r.src)
        subject = r.subject if given_subject and r.subject.strip() else None
        editor.edit([EditRequest(prompt=r.src, target=r.alt, rephrases=forms, neighbours=neighbour_prompts(fact),
                                 subject=subject)])


def edit_cases(editor: CodebookEditor, records: Sequence[ZsreRecord]) -> None:
    """CounterFact cases as the editing benchmark edits them: the prompt, the new object, the case's subject."""
    for r in records:
        editor.edit([EditRequest(prompt=r.src, target=r.alt, subject=r.subject)])


def counterfact_neighbours(cases: Sequence[CounterFactRecord], others: Sequence[CounterFactRecord],
                           every: Sequence[CounterFactRecord]) -> tuple[list[str], list[str]]:
    """The cases' neighbourhood prompts (the same relation, other subjects), and each case's subject in the template
    of the `others` case beside it when that template asks another relation: templates are one relation when a
    template paraphrase of `every` joins them (a case's own template and its neighbourhood prompt's)."""
    relation: dict[str, set[str]] = {}
    for case in with_template_paraphrases(every):
        joined = {t for p in (case.src, case.rephrase) if (t := subject_template(p, case.subject)) is not None}
        for template in list(joined):
            joined |= relation.get(template, set())
        for template in joined:
            relation[template] = joined
    other_relation = []
    for case, other in zip(cases, others):
        own, theirs = subject_template(case.src, case.subject), subject_template(other.src, other.subject)
        if own in relation and theirs in relation and theirs not in relation[own]:
            other_relation.append(theirs.replace("{}", case.subject))
    return [p for case in cases for p in case.neighbourhood], other_relation


def variants(margins: Sequence[float], radii: Sequence[float]) -> list[tuple[str, dict]]:
    """The semantic editor's routing signals to compare: (name, config fields)."""
    gate, relation = " + subject gate", " + relation gate {:g}"
    out = [("semantic key", {"anchored": False, "relation_radius": None, "route_margin": 0.0})]
    out += [(f"semantic key + margin {m:g}", {"anchored": False, "relation_radius": None, "route_margin": m}) for m in margins]
    out += [("semantic key" + gate, {"anchored": True, "relation_radius": None, "route_margin": 0.0})]
    out += [("semantic key" + gate + relation.format(r), {"anchored": True, "relation_radius": r,
                                                           "known_relation_radius": None, "route_margin": 0.0,
                                                           "base_agreement": None})
            for r in radii]
    default = SemanticConfig()
    known = {"anchored": True, "relation_radius": default.relation_radius,
             "known_relation_radius": default.known_relation_radius, "route_margin": 0.0, "base_agreement": None}
    name = ("semantic key" + gate + relation.format(default.relation_radius)
            + f" + known relations {default.known_relation_radius:g} / {default.sole_relation_radius:g}")
    out += [(name, known)]
    agree = known | {"base_agreement": default.base_agreement}
    name += f" + base agreement {default.base_agreement:g}"
    out += [(name, agree)]
    out += [(name + f" + margin {m:g}", agree | {"route_margin": m}) for m in margins]
    return out


def run(records: Sequence[ZsreRecord], other_subject: Sequence[str], other_relation: Sequence[str],
        margins: Sequence[float], radii: Sequence[float], grace: bool,
        edit: Callable[[CodebookEditor, Sequence[ZsreRecord]], None] = edit_all, label: str = "",
        ) -> list[RoutingScores]:
    """Each signal's scores, the records edited by `edit` (`label` added to the gated signals' names)."""
    lm = load_model()
    rows = []
    semantic = SemanticEditor(lm, SemanticConfig(max_steps=1, chat_contexts=0))
    try:
        edit(semantic, records)
        for name, fields in variants(margins, radii):
            name += label if fields["anchored"] else ""
            semantic.config = semantic.config.model_copy(update=fields)
            semantic.layer.margin = semantic.config.route_margin
            rows.append(scores(name, semantic, records, other_subject, other_relation))
            print(rows[-1].model_dump_json(), flush=True)
    finally:
        semantic.remove()
    if grace:
        editor = GraceEditor(lm, GraceConfig(max_steps=1))
        try:
            edit(editor, records)
            rows.append(scores("GRACE key", editor, records, other_subject, other_relation))
            print(rows[-1].model_dump_json(), flush=True)
        finally:
            editor.remove()
    return rows


def markdown(rows: Sequence[RoutingScores], command: str, model: str, dataset: str = "ZsRE") -> str:
    lines = [
        f"## Routing signals for neighbourhood safety: {dataset}, {model}",
        "",
        f"Measured {report.machine_line()}; torch threads: {torch.get_num_threads()}.",
        "",
        f"`{command}`",
        "",
        "Routing-level ablation (`agentmem.eval.routing`): an edit changes an answer exactly when the prompt is",
        "routed to it, so each share below is where prompts go, with the N edits made as the consolidation job",
        "makes them. Routed: the edit prompt / its rephrase goes to an edit with its own target. Kept: the prompt",
        "goes to no edit, so its answer is the base model's (other subject: the record's question about another",
        "record's subject; other relation: another record's question about this record's subject; unrelated:",
        "ZsRE `loc`). Unambiguous: the records no other edited record asks about their subject with another",
        "target (`zsre.ambiguous`, the editing benchmark's rule).",
        "",
        "| signal | N | prompts routed | rephrases routed | unambiguous: rephrases routed "
        "| same relation, other subject: kept | same subject, other relation: kept | unrelated kept |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.signal} | {r.edits} | {r.prompts_routed:.3f} | {r.rephrases_routed:.3f} "
                     f"| {r.unambiguous}: {r.rephrases_routed_unambiguous:.3f} "
                     f"| {r.other_subject}: {r.other_subject_kept:.3f} | {r.other_relation}: {r.other_relation_kept:.3f} "
                     f"| {r.unrelated_kept:.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[RoutingScores]:
    parser = argparse.ArgumentParser(prog="python -m agentmem.eval.routing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_EDIT_FILE), help="ZsRE edit file, or a CounterFact file")
    parser.add_argument("--paraphrases", choices=get_args(Paraphrases), default="file",
                        help="CounterFact: the file's paraphrases, or the edited relation in another template")
    parser.add_argument("--n", type=int, default=500, help="edits (records N..2N give the neighbours)")
    parser.add_argument("--skip", type=int, default=0,
                        help="leave out the first SKIP records (tune on later ones than the benchmarks measure)")
    parser.add_argument("--margins", type=float, nargs="*", default=[0.05, 0.1], help="route margins to try")
    parser.add_argument("--relation-radii", type=float, nargs="*", default=[0.7, 0.75, 0.8], help="relation radii to try")
    parser.add_argument("--no-grace", action="store_true", help="skip GRACE's key")
    parser.add_argument("--given-subject", action="store_true",
                        help="semantic edits name their subject (ZsRE's subject field) instead of deriving it")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    report.add_benchmarks_option(parser)
    args = parser.parse_args(argv)
    command = report.command_line(parser, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    counterfact = is_counterfact(args.data)
    if counterfact and args.given_subject:
        parser.error("--given-subject applies to ZsRE files: CounterFact edits always name their subject")
    if args.paraphrases != "file" and not counterfact:
        parser.error("--paraphrases template applies to CounterFact files only")
    every = load_counterfact(args.data, paraphrases=args.paraphrases) if counterfact else load_zsre(args.data)
    full, every = every, every[args.skip :]
    records, others = every[: args.n], every[args.n : 2 * args.n]
    if not 0 < args.n <= len(every) // 2:
        parser.error(f"N must be between 1 and half the {len(every)} records")
    if counterfact:
        other_subject, other_relation = counterfact_neighbours(records, others, load_counterfact(args.data))
        rows = run(records, other_subject, other_relation, args.margins, args.relation_radii, not args.no_grace,
                   edit_cases)
    else:
        near = neighbours(records, others, Relations(full))
        rows = run(records, [q for q, _ in near.other_subject], [q for q, _ in near.other_relation], args.margins,
                   args.relation_radii, not args.no_grace,
                   functools.partial(edit_all, given_subject=args.given_subject),
                   " (subject given)" if args.given_subject else "")
    if args.benchmarks:
        dataset = ("CounterFact" + (", template paraphrases" if args.paraphrases == "template" else "")
                   if counterfact else "ZsRE") + (f", records from {args.skip}" if args.skip else "")
        section = "routing-signals" + ("-counterfact" if counterfact else "")
        report.write_section(section, markdown(rows, command, load_model().name, dataset), args.benchmarks)
    return rows


if __name__ == "__main__":
    main()

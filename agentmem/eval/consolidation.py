"""The consolidation benchmark: ZsRE facts go in as notes, get recalled, and a job moves them into the weights.

    python -m agentmem.eval.consolidation --data ../shared/data/zsre/zsre_mend_edit.json --n 100 500 --threads 1

For each N, in a fresh store: the first N ZsRE records are remembered as notes with facts
(`src` -> `alt`, `rephrase` as the fact's rephrase), each note is recalled as often as the
policy asks, and one consolidation job runs (GRACE by default). Then, with retrieval off:

- closed-book exact match (greedy, as many tokens as the target has) on the fact prompts and on
  their rephrasings, before and after the job; after, also over the facts the job consolidated;
- locality: share of `loc_ans` token predictions after `loc` unchanged from before the job;
- retraction: every tenth consolidated note is forgotten, and its prompt must give the pre-edit
  answer again (the other facts must stay);
- the job's wall time and seconds per edit (edit + verification + saving the editor's state).

    python -m agentmem.eval.consolidation --chat --editor semantic --n 500 --threads 1

`--chat` asks as a user would, after the job, with retrieval off: each fact's reworded question
(ZsRE `rephrase`, which the edit never saw) as the user message of a chat with MemoryChat's system
message, scored with natural stopping (`eval.natural`), over all facts and over the unambiguous ones (no other
edited record asks about their subject with another target, `zsre.ambiguous`: at most one of such
records' targets can answer a question about their subject); neighbour locality, on two kinds of
neighbours built with the records after the N edited ones: the fact's question with its subject
swapped for another record's (same relation, other subject), and another record's question about
the fact's subject (same subject, other relation: a wording the file never asks of one fact together with
the fact's own, `zsre.Relations`), whose chat answers must not change; unrelated
locality: the `loc` questions' chat answers unchanged, and `loc_ans` token predictions unchanged.

`--consistent` edits only facts that do not contradict each other (`zsre.consistent`: ZsRE restates
one fact with several made-up targets); the neighbours then come from the consistent records after
the N, reused in turn when fewer than N are left.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple

import torch
from pydantic import BaseModel

from ..consolidation import ConsolidationPolicy
from ..consolidation.parametric import agreement
from ..editors import EditorConfig
from ..memory import Memory
from ..models import LanguageModel, load_embedder, load_model
from ..notes import Fact, MemoryItem
from . import report
from .editing import exact_match
from .natural import is_answer, natural_answers, natural_exact_match
from .zsre import DEFAULT_EDIT_FILE, Relations, ZsreRecord, ambiguous, asked, consistent, load_zsre

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
FORGET_EVERY = 10


class ConsolidationScores(BaseModel):
    facts: int
    notes: int
    recalled: float
    consolidated: int
    known: int
    failed: int
    not_consolidated: dict[str, int]
    em_before: float
    em_after: float
    em_after_consolidated: float
    rephrase_em_before: float
    rephrase_em_after: float
    locality: float
    forgotten: int
    reverted: int
    kept_after_forgetting: float
    job_seconds: float
    edit_seconds_median: float

    @property
    def seconds_per_consolidated(self) -> float:
        """The job's wall time per fact it landed: what a fact costs whichever way the editor batches (the job
        also pays for the facts it rolls back, bisects or leaves over the probe budget)."""
        return self.job_seconds / self.consolidated if self.consolidated else float("nan")


def run(lm: LanguageModel, records: Sequence[ZsreRecord], folder: Path, editor: str | EditorConfig) -> ConsolidationScores:
    """One store, one job, the scores above."""
    policy = ConsolidationPolicy(max_edits=len(records))
    facts = [(r.src, r.alt) for r in records]
    rephrases = [(r.rephrase, r.alt) for r in records]
    locals_ = [(r.loc, r.loc_ans) for r in records]
    with Memory(folder, model=lm, editor=editor, policy=policy, fact_extractor=None, embedder=load_embedder()) as mem:
        notes = mem.remember_many(
            [MemoryItem(text=f"{r.src} {r.alt}", fact=Fact(prompt=r.src, target=r.alt)) for r in records],  # the
            # rephrase is scored: it must not be one of the edit's keys
            at=T0,
        )
        em_before, rephrase_before = exact_match(lm, facts), exact_match(lm, rephrases)
        loc_before = lm.target_argmax(locals_)
        candidates = range(0, len(records), FORGET_EVERY)   # forgotten after the job, if it consolidated them
        pre_edit = dict(zip(candidates, _answers(lm, [facts[i] for i in candidates])))
        found = 0
        for note in notes:
            for _ in range(policy.min_recalls):
                hits = mem.recall(note.fact.prompt, k=1, at=T0 + timedelta(hours=1))
                found += bool(hits) and hits[0].note.id == note.id
        start = time.perf_counter()
        job = mem.consolidate(at=T0 + timedelta(days=1), progress=True)
        job_seconds = time.perf_counter() - start
        applied = {d.note_id: d for d in job.decisions if d.outcome == "applied"}
        em_after, loc_after = exact_match(lm, facts), lm.target_argmax(locals_)
        rephrase_after = exact_match(lm, rephrases)
        # scored on the facts the ledger says were edited in (a record merged into a near-duplicate
        # note with another target is in no edit: it counts in the all-records figure only)
        em_consolidated = exact_match(lm, [(d.fact.prompt, d.fact.target) for d in applied.values()])

        forgotten = list({notes[i].id: i for i in reversed(candidates) if notes[i].id in applied
                          and (notes[i].fact.prompt, notes[i].fact.target) == facts[i]}.values())
        for i in forgotten:
            mem.forget(notes[i].id)
        reverted = sum(a == pre_edit[i] for i, a in zip(forgotten, _answers(lm, [facts[i] for i in forgotten])))
        gone = {notes[i].id for i in forgotten}
        kept = exact_match(lm, [(d.fact.prompt, d.fact.target) for d in applied.values() if d.note_id not in gone])
    seconds = [d.verification.seconds for d in applied.values()]
    return ConsolidationScores(
        facts=len(records),
        notes=len({n.id for n in notes}),
        recalled=found / (len(notes) * policy.min_recalls),
        consolidated=len(applied),
        known=job.known,
        failed=job.failed,
        not_consolidated=dict(Counter(d.reason for d in job.decisions if d.outcome is None)),
        em_before=statistics.fmean(em_before),
        em_after=statistics.fmean(em_after),
        em_after_consolidated=statistics.fmean(em_consolidated) if em_consolidated else 0.0,
        rephrase_em_before=statistics.fmean(rephrase_before),
        rephrase_em_after=statistics.fmean(rephrase_after),
        locality=statistics.fmean(agreement([b], [a]) for b, a in zip(loc_before, loc_after)),
        forgotten=len(forgotten),
        reverted=reverted,
        kept_after_forgetting=statistics.fmean(kept) if kept else 1.0,
        job_seconds=job_seconds,
        edit_seconds_median=statistics.median(seconds) if seconds else 0.0,
    )


class ChatScores(BaseModel):
    facts: int
    consistent: bool = False  # the facts were chosen not to contradict each other (`--consistent`)
    notes: int
    consolidated: int
    failed: int
    not_consolidated: dict[str, int]  # the policy's reason (or the job's outcome) -> notes
    failures: list[str]  # why each failed edit was rolled back
    chat_em_before: float
    chat_em_after: float
    chat_em_after_consolidated: float
    unambiguous: int
    chat_em_after_unambiguous: float
    prompt_em_after: float
    other_subject: int  # same relation, other subject
    other_subject_locality: float
    other_relation: int  # same subject, other relation
    other_relation_locality: float
    same_relation: list[tuple[str, str]] = []  # other-relation candidates left out as one relation (`Relations`)
    changed: list[tuple[str, str, str]] = []  # each neighbour question the job changed: (question, before, after)
    answers: list[tuple[str, str, str]] = []  # each fact's chat question after the job: (question, target, answer)
    unrelated_locality: float
    unrelated_token_locality: float
    job_seconds: float
    edit_seconds_median: float


def swapped_subject(record: ZsreRecord, other: ZsreRecord) -> str | None:
    """`record`'s question about `other`'s subject instead (None when the subject is not in the question)."""
    if not record.subject or record.subject not in record.src or record.subject == other.subject:
        return None
    return record.src.replace(record.subject, other.subject)


Pairs = list[tuple[str, str]]


class Neighbours(NamedTuple):
    other_subject: Pairs  # (question, the target whose length bounds its answer)
    other_relation: Pairs
    same_relation: Pairs  # (a record's question, another's about its subject) left out: `Relations.same`


def neighbours(records: Sequence[ZsreRecord], others: Sequence[ZsreRecord], relations: Relations) -> Neighbours:
    """Questions near the records' own, each with the target of the record whose question it rewords (its answer
    length): the same relation about another subject (a record's question about an `others` record's subject),
    and the same subject with another relation (an `others` record's question about the record's subject, when
    it is worded otherwise and `relations` does not know it for the same relation). A record's own question is
    never among them."""
    own = {r.src for r in records}
    other_subject = [(q, r.alt) for r, o in zip(records, others) if (q := swapped_subject(r, o)) and q not in own]
    about_subject = [(r, o, q) for r, o in zip(records, others)
                     if (q := swapped_subject(o, r)) and q not in own and asked(o) != asked(r)]
    return Neighbours(
        other_subject,
        [(q, o.alt) for r, o, q in about_subject if not relations.same(o, r)],
        [(r.src, q) for r, o, q in about_subject if relations.same(o, r)],
    )


def run_chat(lm: LanguageModel, records: Sequence[ZsreRecord], others: Sequence[ZsreRecord], relations: Relations,
             folder: Path, editor: str | EditorConfig) -> ChatScores:
    """One store, one job, then the facts asked in chat as reworded questions, closed book."""
    from ..integrations.chat import SYSTEM

    policy = ConsolidationPolicy(max_edits=len(records), min_recalls=0, stable_for=timedelta(0))
    questions = [(r.rephrase, r.alt) for r in records]
    other_subject, other_relation, same_relation = neighbours(records, others, relations)
    unrelated = [(r.loc, r.loc_ans) for r in records]

    def chat_answers(pairs: Sequence[tuple[str, str]]) -> list[str]:
        return natural_answers(lm, pairs, chat=True, system=SYSTEM)

    with Memory(folder, model=lm, editor=editor, policy=policy, fact_extractor=None, embedder=load_embedder()) as mem:
        notes = mem.remember_many(
            [MemoryItem(text=f"{r.src} {r.alt}", fact=Fact(prompt=r.src, target=r.alt)) for r in records], at=T0)
        mem.language_model  # noqa: B018 (loads the editor before the baseline, as the job will see the model)
        em_before = natural_exact_match(lm, questions, chat=True, system=SYSTEM)
        subject_before, relation_before = chat_answers(other_subject), chat_answers(other_relation)
        unrelated_before = chat_answers(unrelated)
        loc_before = lm.target_argmax(unrelated)
        start = time.perf_counter()
        job = mem.consolidate(at=T0 + timedelta(days=1), progress=True)
        job_seconds = time.perf_counter() - start
        applied = {d.note_id for d in job.decisions if d.outcome == "applied"}
        not_consolidated = Counter(d.reason if d.outcome is None else d.outcome for d in job.decisions
                                   if d.outcome != "applied")
        seconds = [d.verification.seconds for d in job.decisions if d.outcome == "applied"]
        answers_after = chat_answers(questions)
        em_after = [float(is_answer(a, target)) for a, (_, target) in zip(answers_after, questions)]
        prompt_em = natural_exact_match(lm, [(r.src, r.alt) for r in records])
        subject_after, relation_after = chat_answers(other_subject), chat_answers(other_relation)
        unrelated_after = chat_answers(unrelated)
        loc_after = lm.target_argmax(unrelated)
    consolidated = [em for em, note in zip(em_after, notes) if note.id in applied]
    clear = [em for em, unclear in zip(em_after, ambiguous(records)) if not unclear]
    return ChatScores(
        facts=len(records),
        notes=len({n.id for n in notes}),
        consolidated=len(applied),
        failed=job.failed,
        not_consolidated=dict(not_consolidated),
        failures=[d.detail for d in job.decisions if d.outcome == "failed"],
        chat_em_before=statistics.fmean(em_before),
        chat_em_after=statistics.fmean(em_after),
        chat_em_after_consolidated=statistics.fmean(consolidated) if consolidated else 0.0,
        unambiguous=len(clear),
        chat_em_after_unambiguous=statistics.fmean(clear) if clear else float("nan"),
        prompt_em_after=statistics.fmean(prompt_em),
        other_subject=len(other_subject),
        other_subject_locality=_unchanged(subject_before, subject_after),
        other_relation=len(other_relation),
        other_relation_locality=_unchanged(relation_before, relation_after),
        same_relation=same_relation,
        changed=[(q, b, a) for (q, _), b, a in zip([*other_subject, *other_relation], [*subject_before, *relation_before],
                                                    [*subject_after, *relation_after]) if a != b],
        answers=[(q, t, a) for (q, t), a in zip(questions, answers_after)],
        unrelated_locality=_unchanged(unrelated_before, unrelated_after),
        unrelated_token_locality=statistics.fmean(agreement([b], [a]) for b, a in zip(loc_before, loc_after)),
        job_seconds=job_seconds,
        edit_seconds_median=statistics.median(seconds) if seconds else 0.0,
    )


def chat_markdown(rows: Sequence[ChatScores], command: str, model: str, editor: str) -> str:
    """The BENCHMARKS.md section for a `--chat` run."""
    lines = [
        f"## Consolidation asked in chat: ZsRE facts from notes into {model} ({editor}), closed book",
        "",
        f"Measured {report.machine_line()}; torch threads: {torch.get_num_threads()}.",
        "",
        f"`{command}`",
        "",
        "N facts (`src` -> `alt`) remembered as notes and consolidated by one job (no recall threshold). Then, with",
        "retrieval off, each fact's ZsRE `rephrase` (never shown to the editor) is asked as the user message of a",
        "chat with MemoryChat's system message; natural-stopping greedy EM (first sentence or 2x the target's",
        "tokens; the target is the answer, SQuAD-normalized). Prompt EM: the same scoring on the bare `src`.",
        "Neighbour locality: share of neighbour questions whose chat answer the job leaves unchanged, for the",
        "fact's question about another record's subject (same relation, other subject) and another record's",
        "question about the fact's subject (same subject, other relation: worded otherwise, and not linked to the",
        "fact's wording by a rephrasing or a shared fact in the file, `zsre.Relations`, whose left-out questions",
        "are counted after the +); unrelated locality: the same for the",
        "`loc` questions, and the share of `loc_ans` token predictions unchanged. Unambiguous: the facts no other",
        "record of the N asks about their subject with another target (`zsre.ambiguous`, the editing benchmark's",
        "rule); a question about such a subject can get only one of its targets. Targets (issue 14, N=500): chat",
        "EM >= 0.80, neighbour >= 0.98, unrelated >= 0.99. N \"consistent\": the first N records that do not",
        "restate an earlier one's fact with another target (`--consistent`, `zsre.consistent`).",
        "",
        "| N | notes | consolidated / failed | not consolidated (reason) | chat EM before -> after (all) "
        "| chat EM (consolidated) | unambiguous: chat EM | prompt EM after | neighbours, other subject: locality "
        "| neighbours, other relation: locality (+ left out) | unrelated locality (answers / tokens) | job s (s/edit median) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.facts}{' consistent' if r.consistent else ''} | {r.notes} | {r.consolidated} / {r.failed} "
            f"| {_reasons(r.not_consolidated)} "
            f"| {r.chat_em_before:.3f} -> {r.chat_em_after:.3f} "
            f"| {r.chat_em_after_consolidated:.3f} | {r.unambiguous}: {r.chat_em_after_unambiguous:.3f} "
            f"| {r.prompt_em_after:.3f} | {r.other_subject}: {r.other_subject_locality:.3f} "
            f"| {r.other_relation}: {r.other_relation_locality:.3f} (+{len(r.same_relation)}) "
            f"| {r.unrelated_locality:.3f} / {r.unrelated_token_locality:.3f} "
            f"| {r.job_seconds:.0f} ({r.edit_seconds_median:.2f}) |"
        )
    return "\n".join(lines)


def _unchanged(before: Sequence[str], after: Sequence[str]) -> float:
    return statistics.fmean(a == b for a, b in zip(before, after)) if before else 1.0


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in sorted(counts.items())) or "-"


def _answers(lm: LanguageModel, pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Greedy continuations as long as each target, one at a time (batch of one, as the job verifies)."""
    return [lm.generate(p, max_new_tokens=len(lm.encode_pair(p, t)[1])) for p, t in pairs]


def markdown(rows: Sequence[ConsolidationScores], command: str, model: str, editor: str) -> str:
    """The BENCHMARKS.md section for one run."""
    lines = [
        f"## Consolidation: ZsRE facts from notes into {model} ({editor})",
        "",
        f"Measured {report.machine_line()}; torch threads: {torch.get_num_threads()}.",
        "",
        f"`{command}`",
        "",
        "Each fact is a note (`src` -> `alt`) recalled 3 times, then one job with the default policy",
        "(budget N). Closed-book greedy exact match with retrieval off, before -> after the job, over all",
        "N records and over the facts the job consolidated (the ledger's; it rolls back edits that fail",
        "verification; a record whose note was merged into a near-duplicate with another target has no edit).",
        "The job keeps an edit only when greedy generation gives its target, the same test as this EM, so the",
        "consolidated facts' EM is 1.000 by construction unless a later edit broke an earlier one: the all-records",
        "EM is the measurement;",
        "Loc: share of `loc_ans` token predictions unchanged; every tenth consolidated note is then",
        "forgotten and must give its pre-edit answer again while the rest keep theirs. Job s per consolidated",
        "fact: the job's wall time over the facts it landed (`budget`: facts a batching editor's job left for a",
        "later one once its probe budget was spent; they cost nothing and land nothing), the figure to compare",
        "editors by (s/edit median: a batch's time shared among its facts).",
        "",
        "| N | notes | consolidated / known / failed | not consolidated (policy's reason) | EM before -> after (all) "
        "| EM after (consolidated) | rephrase EM before -> after | Loc | forgotten: reverted | EM of the rest after forgetting "
        "| job s (s/edit median) | job s per consolidated fact |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.facts} | {r.notes} | {r.consolidated} / {r.known} / {r.failed} "
            f"| {_reasons(r.not_consolidated)} "
            f"| {r.em_before:.3f} -> {r.em_after:.3f} "
            f"| {r.em_after_consolidated:.3f} | {r.rephrase_em_before:.3f} -> {r.rephrase_em_after:.3f} | {r.locality:.3f} "
            f"| {r.forgotten}: {r.reverted} | {r.kept_after_forgetting:.3f} | {r.job_seconds:.0f} ({r.edit_seconds_median:.2f}) "
            f"| {r.seconds_per_consolidated:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[ConsolidationScores] | list[ChatScores]:
    parser = argparse.ArgumentParser(prog="python -m agentmem.eval.consolidation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_EDIT_FILE, help="ZsRE edit file")
    parser.add_argument("--n", type=int, nargs="+", default=[100, 500], help="numbers of facts")
    parser.add_argument("--editor", default="grace", help="editor kind")
    parser.add_argument("--chat", action="store_true", help="after the job, ask each fact as a reworded question in a chat, closed book"
                             " (retrieval off), with its neighbour and unrelated questions")
    parser.add_argument("--consistent", action="store_true",
                        help="take only records that do not contradict each other (ZsRE repeats a subject with other"
                             " targets)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="write the scores here as JSON")
    report.add_benchmarks_option(parser)
    args = parser.parse_args(argv)
    command = report.command_line(parser, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    every = load_zsre(args.data)
    if args.consistent:
        records = consistent(every)
        largest = len(records) - 1 if args.chat else len(records)   # with --chat, at least one record gives neighbours
    else:
        records = every[: max(args.n) * (2 if args.chat else 1)]
        largest = len(records) // (2 if args.chat else 1)
    if any(not 0 < n <= largest for n in args.n):
        parser.error(f"each N must be between 1 and {largest}, for the {len(records)} records available"
                     + (" (with --chat, the records after the N give the swapped subjects)" if args.chat else ""))
    relations = Relations(every)   # every record's wordings, the restating ones included
    lm = load_model()
    rows: list = []
    for n in args.n:
        with tempfile.TemporaryDirectory(prefix="agentmem-consolidation-") as folder:
            if args.chat:
                others = [records[n + i % (len(records) - n)] for i in range(n)]
                scores = run_chat(lm, records[:n], others, relations, Path(folder) / "mem", args.editor)
                rows.append(scores.model_copy(update={"consistent": args.consistent}))
            else:
                rows.append(run(lm, records[:n], Path(folder) / "mem", args.editor))
        print(rows[-1].model_dump_json(), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"command": command, "machine": report.machine_line(),
                                        "rows": [r.model_dump() for r in rows]}, indent=1))
    if args.benchmarks:
        if args.chat:
            report.write_section(f"consolidation-chat-{args.editor}", chat_markdown(rows, command, lm.name, args.editor),
                                 args.benchmarks)
        else:
            report.write_section("consolidation", markdown(rows, command, lm.name, args.editor), args.benchmarks)
    return rows


if __name__ == "__main__":
    main()

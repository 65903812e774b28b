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
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

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
from .zsre import DEFAULT_EDIT_FILE, ZsreRecord, load_zsre

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


def run(lm: LanguageModel, records: Sequence[ZsreRecord], folder: Path, editor: str | EditorConfig) -> ConsolidationScores:
    """One store, one job, the scores above."""
    policy = ConsolidationPolicy(max_edits=len(records))
    facts = [(r.src, r.alt) for r in records]
    rephrases = [(r.rephrase, r.alt) for r in records]
    locals_ = [(r.loc, r.loc_ans) for r in records]
    with Memory(folder, model=lm, editor=editor, policy=policy, fact_extractor=None, embedder=load_embedder()) as mem:
        notes = mem.remember_many(
            [MemoryItem(text=f"{r.src} {r.alt}", fact=Fact(prompt=r.src, target=r.alt, rephrases=(r.rephrase,)))
             for r in records],
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
        "verification; a record whose note was merged into a near-duplicate with another target has no edit);",
        "Loc: share of `loc_ans` token predictions unchanged; every tenth consolidated note is then",
        "forgotten and must give its pre-edit answer again while the rest keep theirs.",
        "",
        "| N | notes | consolidated / known / failed | not consolidated (policy's reason) | EM before -> after (all) "
        "| EM after (consolidated) | rephrase EM before -> after | Loc | forgotten: reverted | EM of the rest after forgetting "
        "| job s (s/edit median) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.facts} | {r.notes} | {r.consolidated} / {r.known} / {r.failed} "
            f"| {', '.join(f'{reason} {count}' for reason, count in sorted(r.not_consolidated.items())) or '-'} "
            f"| {r.em_before:.3f} -> {r.em_after:.3f} "
            f"| {r.em_after_consolidated:.3f} | {r.rephrase_em_before:.3f} -> {r.rephrase_em_after:.3f} | {r.locality:.3f} "
            f"| {r.forgotten}: {r.reverted} | {r.kept_after_forgetting:.3f} | {r.job_seconds:.0f} ({r.edit_seconds_median:.2f}) |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[ConsolidationScores]:
    parser = argparse.ArgumentParser(prog="python -m agentmem.eval.consolidation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_EDIT_FILE, help="ZsRE edit file")
    parser.add_argument("--n", type=int, nargs="+", default=[100, 500], help="numbers of facts")
    parser.add_argument("--editor", default="grace", help="editor kind")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="write the scores here as JSON")
    parser.add_argument("--benchmarks", default=str(report.DEFAULT_PATH), help="BENCHMARKS.md to update ('' for none)")
    args = parser.parse_args(argv)
    command = "python -m agentmem.eval.consolidation " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    records = load_zsre(args.data, limit=max(args.n))
    if any(not 0 < n <= len(records) for n in args.n):
        parser.error(f"each N must be between 1 and the {len(records)} records available")
    lm = load_model()
    rows = []
    for n in args.n:
        with tempfile.TemporaryDirectory(prefix="agentmem-consolidation-") as folder:
            rows.append(run(lm, records[:n], Path(folder) / "mem", args.editor))
        print(rows[-1].model_dump_json(), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"command": command, "machine": report.machine_line(),
                                        "rows": [r.model_dump() for r in rows]}, indent=1))
    if args.benchmarks:
        report.write_section("consolidation", markdown(rows, command, lm.name, args.editor), args.benchmarks)
    return rows


if __name__ == "__main__":
    main()

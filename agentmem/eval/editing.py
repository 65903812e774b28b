"""The sequential editing benchmark on ZsRE: apply T edits, then score all T.

    python -m agentmem.eval.editing --editor grace --data ../shared/data/zsre/zsre_mend_edit.json \
        --n 1 10 100 1000 --out results.json

For each T the records are cut into consecutive groups of T; each group is edited into a
fresh editor (`src` -> `alt`, one edit after another) and only then scored, as in the GRACE
and WISE papers:

- reliability / generalization: teacher-forced token accuracy of `alt` after `src` / after
  `rephrase` (the argmax at each target position, the prompt fed first as in generation);
- locality: share of `loc_ans` positions whose argmax after `loc` is the unedited model's;
- exact match: greedy generation of as many tokens as the target has, compared stripped
  (teacher forcing flatters editors); for rephrases also over the unambiguous records only
  (no other record of the group asks about the same subject with another target);
- seconds per edit, and greedy generation latency with the T edits live vs without;
- natural-stopping exact match (`eval.natural`, the "WILD" protocol): on `src`, on `rephrase`, and
  on `rephrase` asked as a chat message;
- on a CounterFact file (`--data`, see `eval.counterfact`): the Neighbourhood Score, edited and unedited;
  with `--paraphrases template` the rephrases are the edited relation in another of the file's templates
  instead of the file's own `rephrase_prompt`s (EasyEdit's are often another relation).

`--defaults` builds editors as a user would, with no `unrelated=` prompts (the package's default set).
`--consistent` edits only records that do not contradict each other (`zsre.consistent`: ZsRE restates one
fact with several made-up targets, and no editor can answer a question about it with all of them); several
`--data` files (FILE:START from record START on) give it records enough for T=1000.
"""
from __future__ import annotations

import argparse
import functools
import inspect
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import get_args

import torch
from pydantic import BaseModel

from ..consolidation.parametric import agreement
from ..editors import Editor, EditorConfig, EditRequest
from ..models import LanguageModel, load_model
from . import report
from .counterfact import CounterFactRecord, Paraphrases, is_counterfact, load_counterfact, neighbourhood_score
from .natural import natural_exact_match
from .zsre import DEFAULT_EDIT_FILE, DEFAULT_TRAIN_FILE, ZsreRecord, ambiguous, consistent, load_zsre, unrelated_prompts

LATENCY_PROMPTS = 8  # of each kind (edited `src`, unrelated `loc`), from the last group
LATENCY_TOKENS = 16
PUBLISHED = {  # per dataset, then editor: the rows each report ends with
    "ZsRE": {  # LLaMA-2-7B, as reported in the WISE paper (Wang et al., 2024), and the AlphaEdit paper's LLaMA3-8B
        "grace": [("GRACE, LLaMA-2-7B (published)", 1000, 0.93, 0.08, 1.00)],
        "wise": [("WISE, LLaMA-2-7B (published)", 1000, 0.77, 0.72, 1.00)],
        "memit": [("MEMIT-MASS, LLaMA-2-7B (published, WISE paper)", 1000, 0.69, 0.65, 0.62)],
        # efficacy / generalization / specificity (accuracy on neighbourhood prompts, not agreement), 2000 edits in batches of 100
        "alphaedit": [("AlphaEdit, LLaMA3-8B, 2000 edits (published; Loc is specificity)", 2000, 0.945, 0.911, 0.326)],
    },
    "CounterFact": {  # the AlphaEdit paper, LLaMA3-8B, 2000 edits in batches of 100: efficacy / generalization / specificity
        "alphaedit": [("AlphaEdit, LLaMA3-8B, 2000 edits (published; Loc is specificity)", 2000, 0.989, 0.942, 0.679)],
    },
}


class EditingScores(BaseModel):
    """Mean scores over all edited records for one number of sequential edits T."""

    edits: int
    records: int
    reliability: float
    generalization: float
    locality: float
    reliability_em: float
    generalization_em: float
    unambiguous: int
    generalization_em_unambiguous: float
    edit_success: float
    edit_seconds_median: float
    edit_seconds_p95: float
    generation_seconds_base: float | None  # None: not timed (`--latency-prompts 0`)
    generation_seconds_edited: float | None
    reliability_natural: float | None = None
    generalization_natural: float | None = None
    generalization_natural_chat: float | None = None
    generalization_natural_unambiguous: float | None = None
    generalization_natural_chat_unambiguous: float | None = None
    neighbourhood_score: float | None = None
    neighbourhood_score_unedited: float | None = None


def token_accuracy(lm: LanguageModel, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """Per pair: the share of target tokens that are the argmax when teacher-forced."""
    predicted = lm.target_argmax(pairs)
    expected = [lm.encode_pair(prompt, target)[1] for prompt, target in pairs]
    return [agreement([e], [p]) for p, e in zip(predicted, expected)]


def exact_match(lm: LanguageModel, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> list[float]:
    """Per pair: 1.0 when greedy generation of len(target tokens) tokens gives the target."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, (prompt, target) in enumerate(pairs):
        by_length[len(lm.encode_pair(prompt, target)[1])].append(index)
    matches = [0.0] * len(pairs)
    for length, indices in by_length.items():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            outputs = lm.generate_batch([pairs[i][0] for i in chunk], max_new_tokens=length)
            for i, output in zip(chunk, outputs):
                matches[i] = float(output.strip() == pairs[i][1].strip())
    return matches


def generation_seconds(lm: LanguageModel, prompts: Sequence[str], repeats: int = 2) -> float | None:
    """Median wall time of one greedy generation of LATENCY_TOKENS tokens (batch of one); None with no prompts."""
    if not prompts:
        return None
    times = []
    for _ in range(repeats):
        for prompt in prompts:
            start = time.perf_counter()
            lm.generate(prompt, max_new_tokens=LATENCY_TOKENS, min_new_tokens=LATENCY_TOKENS)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def sequential_scores(
    lm: LanguageModel,
    make_editor: Callable[[], Editor],
    records: Sequence[ZsreRecord],
    edits: int,
    latency_prompts: int = LATENCY_PROMPTS,
    batch_size: int | None = None,
) -> EditingScores:
    """Edit the records in groups of `edits`, each group into a fresh editor, and score each group after all its edits.

    Each `edit()` call gets `batch_size` requests (default: the whole group); the locate-and-edit
    editors solve each call's requests as one batch. Generation latency is timed on
    `latency_prompts` edited and as many unrelated prompts of the last group (0: not timed).
    """
    groups = [records[i : i + edits] for i in range(0, len(records) - edits + 1, edits)]
    unedited_loc = lm.target_argmax([(r.loc, r.loc_ans) for r in records[: len(groups) * edits]])
    counterfact = [r for r in records[: len(groups) * edits] if isinstance(r, CounterFactRecord)]
    unedited_ns = neighbourhood_score(lm, counterfact) if counterfact else []
    scores: dict[str, list[float]] = defaultdict(list)
    unambiguous: dict[str, list[float]] = defaultdict(list)  # rephrase scores of the records `zsre.ambiguous` clears
    results = []
    for number, group in enumerate(groups):
        last = number == len(groups) - 1
        timed = [r.src for r in group[:latency_prompts]] + [r.loc for r in group[:latency_prompts]]
        if last:
            base_seconds = generation_seconds(lm, timed)
        editor = make_editor()
        requests = [EditRequest(prompt=r.src, target=r.alt, subject=r.subject or None) for r in group]
        step = batch_size or len(requests)
        for start in range(0, len(requests), step):
            results += editor.edit(requests[start : start + step])
        reliability_pairs = [(r.src, r.alt) for r in group]
        generalization_pairs = [(r.rephrase, r.alt) for r in group]
        scores["reliability"] += token_accuracy(lm, reliability_pairs)
        scores["generalization"] += token_accuracy(lm, generalization_pairs)
        scores["reliability_em"] += exact_match(lm, reliability_pairs)
        scores["reliability_natural"] += natural_exact_match(lm, reliability_pairs)
        unclear = ambiguous(group)
        for name, per_record in (
            ("generalization_em", exact_match(lm, generalization_pairs)),
            ("generalization_natural", natural_exact_match(lm, generalization_pairs)),
            ("generalization_natural_chat", natural_exact_match(lm, generalization_pairs, chat=True)),
        ):
            scores[name] += per_record
            unambiguous[name] += [score for score, doubt in zip(per_record, unclear) if not doubt]
        if counterfact:
            scores["neighbourhood_score"] += neighbourhood_score(lm, group)
        loc_now = lm.target_argmax([(r.loc, r.loc_ans) for r in group])
        scores["locality"] += [agreement([before], [now]) for now, before in zip(loc_now, unedited_loc[number * edits :])]
        if last:
            edited_seconds = generation_seconds(lm, timed)
        editor.remove()
    seconds = sorted(r.seconds for r in results)
    return EditingScores(
        edits=edits,
        records=len(results),
        **{name: statistics.fmean(values) for name, values in scores.items()},
        unambiguous=len(unambiguous["generalization_em"]),
        generalization_em_unambiguous=_mean(unambiguous["generalization_em"]),
        generalization_natural_unambiguous=_mean(unambiguous["generalization_natural"]),
        generalization_natural_chat_unambiguous=_mean(unambiguous["generalization_natural_chat"]),
        edit_success=statistics.fmean(r.success for r in results),
        neighbourhood_score_unedited=statistics.fmean(unedited_ns) if unedited_ns else None,
        edit_seconds_median=statistics.median(seconds),
        edit_seconds_p95=seconds[min(len(seconds) - 1, int(0.95 * len(seconds)))],
        generation_seconds_base=base_seconds,
        generation_seconds_edited=edited_seconds,
    )


def markdown(
    editor: str, config: EditorConfig, rows: Sequence[EditingScores], command: str, model: str, dataset: str = "ZsRE",
) -> str:
    """The BENCHMARKS.md section for one run on `dataset` ("ZsRE" or "CounterFact"), with that dataset's published rows."""
    lines = [
        f"## Knowledge editing: {editor} on {dataset} ({model})",
        "",
        f"Measured {report.machine_line()}; torch threads: {torch.get_num_threads()}.",
        "",
        f"`{command}`",
        "",
        f"Editor config: `{config.model_dump_json()}`",
        "",
        "Sequential protocol: T edits applied one after another, then all T scored. Rel / Gen / Loc are",
        "teacher-forced token accuracies (Loc: agreement with the unedited model); EM is greedy",
        "exact match; \"unambiguous\" counts the records no other edit of the group asks about with another",
        "target (ZsRE repeats subjects), and its Gen EM and natural Gen EM are over those. Edit seconds include verifying the edit through the live model; generation",
        f"latency is the median of one greedy {LATENCY_TOKENS}-token generation with no edits vs with the T edits.",
        "",
        "Natural EM: greedy until the first sentence ends or 2x the target's tokens, the target is the answer",
        "(`eval.natural`), on `src` / `rephrase` / `rephrase` as a chat message. NS: CounterFact's Neighbourhood",
        "Score (true object beats the new one on neighbourhood prompts), edited (unedited model).",
        "",
        "| T | records | Rel | Gen | Loc | Rel EM | Gen EM | unambiguous: Gen EM / natural Gen / Gen chat | natural EM: Rel / Gen / Gen chat "
        "| NS (unedited) | edit s median / p95 | generation s: base / edited (x) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.edits} | {r.records} | {r.reliability:.3f} | {r.generalization:.3f} | {r.locality:.3f} "
            f"| {r.reliability_em:.3f} | {r.generalization_em:.3f} | {r.unambiguous}: {r.generalization_em_unambiguous:.3f} "
            f"/ {_score(r.generalization_natural_unambiguous)} / {_score(r.generalization_natural_chat_unambiguous)} "
            f"| {_score(r.reliability_natural)} / {_score(r.generalization_natural)} / {_score(r.generalization_natural_chat)} "
            f"| {_score(r.neighbourhood_score)} ({_score(r.neighbourhood_score_unedited)}) "
            f"| {r.edit_seconds_median:.2f} / {r.edit_seconds_p95:.2f} "
            f"| {_slowdown(r.generation_seconds_base, r.generation_seconds_edited)} |"
        )
    for name, edits, rel, gen, loc in PUBLISHED[dataset].get(editor, []):
        lines.append(f"| {edits} ({name}) | | {rel:.2f} | {gen:.2f} | {loc:.2f} | | | | | | | |")
    return "\n".join(lines)


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _slowdown(base: float | None, edited: float | None) -> str:
    if base is None or edited is None:
        return "- (not timed)"
    return f"{base:.3f} / {edited:.3f} ({edited / base:.2f}x)"


def data_source(text: str) -> tuple[Path, int]:
    """A `--data` argument: FILE, or FILE:START for the file's records from START on."""
    path, _, start = text.rpartition(":")
    return (Path(path), int(start)) if path and start.isdigit() else (Path(text), 0)


def read_records(
    load: Callable[[Path], list[ZsreRecord]], sources: Sequence[tuple[Path, int]], wanted: int, only_consistent: bool,
) -> list[ZsreRecord]:
    """The first `wanted` records of the sources read one after another (each from its start), with
    `only_consistent` those that do not restate an earlier record's fact with another target. A record
    without a target (ZsRE's train file has two) is no edit and is left out."""
    records = [record for path, start in sources for record in load(path)[start:] if record.alt.strip()]
    return (consistent(records) if only_consistent else records)[:wanted]


def main(argv: Sequence[str] | None = None) -> list[EditingScores]:
    parser = argparse.ArgumentParser(prog="python -m agentmem.eval.editing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--editor", choices=sorted(Editor.kinds), default="grace")
    parser.add_argument(
        "--data", type=data_source, nargs="+", default=[(DEFAULT_EDIT_FILE, 0)],
        help="ZsRE edit file, or a CounterFact file; several are read one after another, and FILE:START reads a "
        "file from its record START on",
    )
    parser.add_argument("--consistent", action="store_true",
                        help="leave out records that restate an earlier one's fact with another target (`zsre.consistent`)")
    parser.add_argument("--defaults", action="store_true", help="build editors with no unrelated prompts (their defaults)")
    parser.add_argument(
        "--paraphrases", choices=get_args(Paraphrases), default="file",
        help="CounterFact only: the file's paraphrase prompts, or each record's relation asked in its neighbourhood "
        "prompt's template (`eval.counterfact`)",
    )
    parser.add_argument("--n", type=int, nargs="+", default=[1, 10, 100, 1000], help="numbers of sequential edits T")
    parser.add_argument("--records", type=int, default=100, help="records scored per T (at least T)")
    parser.add_argument("--config", default="{}", help="editor config overrides, as JSON")
    parser.add_argument(
        "--unrelated", type=Path, default=DEFAULT_TRAIN_FILE,
        help="ZsRE file whose `loc` questions are the unrelated prompts, for editors that take them",
    )
    parser.add_argument(
        "--batch-size", type=int, help="requests per edit() call, one solve each for the locate-and-edit editors "
        "(default: all T at once; those editors still cut it into their config's batch_size)",
    )
    parser.add_argument("--latency-prompts", type=report.count, default=LATENCY_PROMPTS,
                        help="timed prompts of each kind (0: no timing)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="write the scores here as JSON")
    report.add_benchmarks_option(parser)
    args = parser.parse_args(argv)
    command = report.command_line(parser, argv)

    counterfact = is_counterfact(args.data[0][0])
    if args.paraphrases != "file" and not counterfact:
        parser.error("--paraphrases template applies to CounterFact files only")
    if not args.defaults and any(path.resolve() == args.unrelated.resolve() for path, _ in args.data):
        parser.error(f"{args.unrelated} gives the editors their unrelated prompts and would also be scored (its `loc` "
                     "questions are its records' locality prompts): pass --defaults, or another --unrelated file")
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model()
    load = functools.partial(load_counterfact, paraphrases=args.paraphrases) if counterfact else load_zsre
    records = read_records(load, args.data, max(max(args.n), args.records), args.consistent)
    if any(not 0 < edits <= len(records) for edits in args.n):
        parser.error(f"each T must be between 1 and the {len(records)} records available")
    kind = Editor.kinds[args.editor]
    config = kind.config_class(**json.loads(args.config))
    editor_class: Callable[..., Editor] = kind
    if "unrelated" in inspect.signature(editor_class).parameters and not args.defaults:
        editor_class = functools.partial(editor_class, unrelated=unrelated_prompts(args.unrelated))
    rows = []
    for edits in args.n:
        def make_editor() -> Editor:
            nonlocal config
            editor = editor_class(lm, config)
            config = editor.config  # calibrated once, reused by every later editor
            return editor

        count = max(edits, args.records) // edits * edits
        rows.append(sequential_scores(lm, make_editor, records[:count], edits, args.latency_prompts, args.batch_size))
        print(rows[-1].model_dump_json(), flush=True)
    if args.out:
        args.out.write_text(json.dumps({
            "command": command,
            "machine": report.machine_line(),
            "editor": args.editor,
            "config": config.model_dump(),
            "rows": [r.model_dump() for r in rows],
        }, indent=1))
    if args.benchmarks:
        dataset = "CounterFact" if counterfact else "ZsRE"
        text = markdown(args.editor, config, rows, command, lm.name, dataset)
        if args.paraphrases == "template":
            text = text.replace(f" on {dataset} (", f" on {dataset}, template paraphrases (", 1)
        if args.defaults:
            text = text.replace(f" on {dataset}", f" on {dataset}, built with defaults (no unrelated=)", 1)
        if args.consistent:
            text = text.replace(f" on {dataset}", f" on {dataset} records that do not contradict each other", 1)
        variant = ("-counterfact" if counterfact else "") + ("-templates" if args.paraphrases == "template" else "") + (
            "-consistent" if args.consistent else "") + ("-defaults" if args.defaults else "")
        report.write_section(f"editing-{args.editor}{variant}", text, args.benchmarks)
    return rows


if __name__ == "__main__":
    main()

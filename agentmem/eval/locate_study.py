"""A tuning study of the locate-and-edit editors at T sequential edits in batches (issue 15).

    python -m agentmem.eval.locate_study --records 1000 --batch-size 100 --threads 1 \
        --configs study.json --cache /tmp/h15 --out /tmp/h15/study.md

`study.json` lists the configurations: [{"name": "...", "editor": "alphaedit", "config": {...}, "ablate": false}, ...].
Each is an editor built with those overrides that edits the records in sequential batches, then
is scored as `eval.editing` scores it: Rel / Gen teacher-forced token accuracy of `alt` after
`src` / `rephrase` (`editing.token_accuracy`), Loc the share of `loc_ans` tokens whose argmax is
the unedited model's. Each row also gives the share verified right after its own batch, Rel of
the first and of the last batch (how much later batches erode earlier ones), and the update
norm per layer; `"ablate": true` adds Rel and Loc with each layer's update taken out, one at a time.

Why a study and not the benchmark: the target-state search costs 1.4-2.5 s per fact, nearly all
of a run, while the closed forms under study cost a fraction of that. The target states depend on
the model above the band, the band's top and the search settings, not on the closed form, so they
are searched once per (top, search settings) on the unedited model, cached in `--cache`, and
handed to each editor with `WeightEditor.shelve`. The benchmark searches each batch's states after
the earlier batches are written (the band's edits change the prompt's other tokens), so a study
row approximates the benchmark's; confirm a winner with `eval.editing`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from safetensors.torch import load_file, save_file

from ..consolidation.parametric import agreement
from ..editors import Editor, EditRequest
from ..editors.inplace import WeightEditor
from ..models import LanguageModel, load_model
from . import report
from .editing import token_accuracy
from .zsre import ZsreRecord, load_zsre


class StudyConfig(BaseModel):
    """One row of the study: a name, an editor kind of the locate-and-edit family, and its config overrides."""

    name: str
    editor: str = "alphaedit"
    config: dict[str, Any] = {}
    ablate: bool = False  # also score with each layer's update taken out, one layer at a time


class StudyRow(BaseModel):
    """What one configuration scored after every batch was written."""

    name: str
    editor: str
    config: dict[str, Any]
    reliability: float
    generalization: float
    locality: float
    verified: float
    reliability_first_batch: float
    reliability_last_batch: float
    update_norms: dict[int, float]
    solve_seconds: float
    load: float  # the 1-minute load average when the row was scored
    ablation: dict[int, tuple[float, float]] = {}  # layer -> (Rel, Loc) with that layer's update taken out


def requests_of(records: Sequence[ZsreRecord]) -> list[EditRequest]:
    """The records' edits, with stable ids (their index), so that cached target states find them again."""
    return [
        EditRequest(prompt=r.src, target=r.alt, subject=r.subject or None, id=f"record-{index}")
        for index, r in enumerate(records)
    ]


def cached_targets(
    editor: WeightEditor, requests: Sequence[EditRequest], cache: Path, batch_size: int
) -> dict[str, torch.Tensor]:
    """Each request's target state on the unedited model, searched by `editor` in batches of `batch_size`,
    kept in `cache` (a file per band top and search settings; saved after every batch, so a stopped run resumes)."""
    settings = {
        "model": editor.lm.name, "top": editor.layer_index,
        "search": {k: editor.config.model_dump()[k] for k in ("value_steps", "value_lr", "margin", "clamp", "weight_decay", "value_prefixes")},
        "requests": [[r.prompt, r.target, r.subject] for r in requests],
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"targets-top{editor.layer_index}-{digest}.safetensors"
    states = load_file(path) if path.is_file() else {}
    for start in range(0, len(requests), batch_size):
        chunk = [r for r in requests[start : start + batch_size] if r.id not in states]
        if not chunk:
            continue
        began = time.perf_counter()
        found, steps = editor.search_targets(chunk)
        states.update({r.id: state.contiguous() for r, state in zip(chunk, found)})
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(states, path.with_name(path.name + ".partial"))
        path.with_name(path.name + ".partial").replace(path)
        print(f"targets {start + len(chunk)}/{len(requests)}: {time.perf_counter() - began:.0f} s, "
              f"{sum(s == editor.config.value_steps for s in steps)} out of steps", flush=True)
    return states


def run_configuration(
    lm: LanguageModel, study: StudyConfig, records: Sequence[ZsreRecord], batch_size: int,
    unedited_loc: Sequence[Sequence[int]], cache: Path,
) -> StudyRow:
    """Edit every record in sequential batches with the cached target states, then score."""
    kind = Editor.kinds[study.editor]
    editor = kind(lm, kind.config_class(**study.config))
    if not isinstance(editor, WeightEditor):
        editor.remove()
        raise ValueError(f"{study.editor} is not a locate-and-edit editor")
    try:
        requests = requests_of(records)
        targets = cached_targets(editor, requests, cache, batch_size)
        verified, solve_seconds = [], 0.0
        for start in range(0, len(requests), batch_size):
            chunk = requests[start : start + batch_size]
            for request in chunk:
                editor.shelve(request, targets[request.id])
            began = time.perf_counter()
            verified += [result.success for result in editor.edit(chunk)]
            solve_seconds += time.perf_counter() - began
        reliability, locality = _rel_and_loc(lm, records, unedited_loc)
        generalization = token_accuracy(lm, [(r.rephrase, r.alt) for r in records])
        ablation = {}
        if study.ablate:
            for layer in editor.config.layers:
                with editor.layers_restored([layer]):
                    rel, loc = _rel_and_loc(lm, records, unedited_loc)
                ablation[layer] = (statistics.fmean(rel), statistics.fmean(loc))
        return StudyRow(
            name=study.name, editor=study.editor, config=study.config,
            reliability=statistics.fmean(reliability), generalization=statistics.fmean(generalization),
            locality=statistics.fmean(locality), verified=statistics.fmean(verified),
            reliability_first_batch=statistics.fmean(reliability[:batch_size]),
            reliability_last_batch=statistics.fmean(reliability[-batch_size:]),
            update_norms={layer: float(editor.delta(layer).norm()) for layer in editor.config.layers},
            solve_seconds=solve_seconds, load=os.getloadavg()[0], ablation=ablation,
        )
    finally:
        editor.remove()


def _rel_and_loc(
    lm: LanguageModel, records: Sequence[ZsreRecord], unedited_loc: Sequence[Sequence[int]]
) -> tuple[list[float], list[float]]:
    reliability = token_accuracy(lm, [(r.src, r.alt) for r in records])
    now = lm.target_argmax([(r.loc, r.loc_ans) for r in records])
    return reliability, [agreement([before], [after]) for before, after in zip(unedited_loc, now)]


def markdown_row(row: StudyRow) -> str:
    norms = " / ".join(f"{row.update_norms[layer]:.0f}" for layer in sorted(row.update_norms))
    ablation = "; ".join(f"{layer}: {rel:.3f} / {loc:.3f}" for layer, (rel, loc) in sorted(row.ablation.items()))
    return (
        f"| {row.name} | {row.editor} `{json.dumps(row.config, separators=(',', ':'))}` | {row.reliability:.3f} | "
        f"{row.generalization:.3f} | {row.locality:.3f} | {row.verified:.3f} | {row.reliability_first_batch:.3f} / "
        f"{row.reliability_last_batch:.3f} | {norms} | {row.solve_seconds:.0f} | {row.load:.1f} | {ablation or '-'} |"
    )


HEADER = (
    "| name | editor, overrides | Rel | Gen | Loc | verified after its batch | Rel first / last batch "
    "| update norm per layer | solve s | load | without layer L: Rel / Loc |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def main(argv: Sequence[str] | None = None) -> list[StudyRow]:
    parser = argparse.ArgumentParser(prog="python -m agentmem.eval.locate_study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/zsre/zsre_mend_edit.json"))
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--configs", required=True, help="a JSON file, or JSON text: a list of {name, editor, config}")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/h15"), help="where the target states are kept")
    parser.add_argument("--out", type=Path, required=True, help="markdown table, a row appended per configuration")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    text = Path(args.configs).read_text() if Path(args.configs).is_file() else args.configs
    studies = [StudyConfig(**entry) for entry in json.loads(text)]
    lm = load_model()
    records = load_zsre(args.data, limit=args.records)
    unedited_loc = lm.target_argmax([(r.loc, r.loc_ans) for r in records])
    if not args.out.is_file():
        args.out.write_text(f"{report.machine_line()}\n\n{HEADER}\n")
    with args.out.open("a") as table:
        table.write(f"\n<!-- {report.command_line(parser, argv)} -->\n")
    rows = []
    for study in studies:
        rows.append(run_configuration(lm, study, records, args.batch_size, unedited_loc, args.cache))
        with args.out.open("a") as table:
            table.write(markdown_row(rows[-1]) + "\n")
        with args.out.with_suffix(".jsonl").open("a") as log:
            log.write(rows[-1].model_dump_json() + "\n")
        print(markdown_row(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()

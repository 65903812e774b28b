"""Evidence retrieval on LoCoMo: does `recall` find the dialog turns a question needs?

    python -m agentmem.eval.locomo --data ../shared/data/locomo/locomo_dev.json [--out locomo.json]
        [--store sqlite postgres] [--conversations N] [--no-ablations]

Each conversation is ingested through the public API: one note per dialog turn ("Speaker:
text", with a shared photo's caption), one `remember_many` batch per session (same notes,
links and duplicate checks as one `remember` per turn, with batched embedding), at the
session's date plus a minute per turn, the conversation as `user_id`, the session as
`session_id`, the speaker as a tag and in metadata.
Every question of categories 1-4 is then asked through `recall`, after the last session,
without reinforcement (so the order of questions does not matter). Evidence recall@k is
the share of a question's evidence turns in the top k; hit@k the share of questions with
any evidence in the top k. The plain dense baseline (MiniLM, cosine top-k over the same
turn texts) runs beside it on the same data, and ablations switch one part of the
ranking off at a time.

Conversations are split in two halves: the first three were looked at while choosing the
ranking's defaults; the last three were not. Both halves are reported.

`--store postgres` keeps the notes in a PostgreSQL 15 server started for the run (a database
per ingested store, the vector index embedded in the run's folder); with more than one store
the rankings run on each and the section `locomo-stores` compares them (issue 16's target:
PostgreSQL within 0.01 recall@10 of SQLite).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from ..config import MemoryConfig
from ..memory import Memory
from ..notes import MemoryItem
from ..models import load_embedder
from .postgres_server import TemporaryPostgres
from .report import add_benchmarks_option, command_line, machine_line, write_section

KS = (1, 5, 10, 25)
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
TUNING_CONVERSATIONS = 3


@dataclass
class Turn:
    dia_id: str
    speaker: str
    text: str
    session: int
    at: datetime


@dataclass
class Question:
    text: str
    category: int
    evidence: set[str]


@dataclass
class Conversation:
    sample_id: str
    turns: list[Turn]
    questions: list[Question]


def parse_date(value: str) -> datetime:
    """LoCoMo writes session dates as '1:56 pm on 8 May, 2023'."""
    return datetime.strptime(value.strip(), "%I:%M %p on %d %B, %Y").replace(tzinfo=timezone.utc)


def evidence_ids(raw: list[str]) -> set[str]:
    """Evidence as dialog ids; tolerates the data set's slips ('D8:6; D9:17', 'D:11:26')."""
    found = set()
    for entry in raw:
        found |= {f"D{s}:{t}" for s, t in re.findall(r"D:?(\d+):(\d+)", entry)}
    return found


def load(path: Path) -> list[Conversation]:
    conversations = []
    for record in json.loads(path.read_text()):
        convo = record["conversation"]
        turns = []
        for key, value in convo.items():
            match = re.fullmatch(r"session_(\d+)", key)
            if not match or not isinstance(value, list):
                continue
            session = int(match.group(1))
            start = parse_date(convo[f"session_{session}_date_time"])
            for position, turn in enumerate(value):
                text = f"{turn['speaker']}: {turn['text']}"
                if turn.get("blip_caption"):
                    text += f" [shares {turn['blip_caption']}]"
                # turns of one session are a minute apart, so their order survives in time
                turns.append(Turn(turn["dia_id"], turn["speaker"], text, session, start + timedelta(minutes=position)))
        questions = [
            Question(qa["question"], qa["category"], evidence_ids(qa.get("evidence", [])))
            for qa in record["qa"]
            if qa["category"] in CATEGORIES
        ]
        conversations.append(Conversation(record["sample_id"], turns, [q for q in questions if q.evidence]))
    return conversations


Retriever = Callable[[Conversation], list[list[str]]]  # the ranked dia_ids for each question


def dense_baseline(conversation: Conversation) -> list[list[str]]:
    """MiniLM embeddings of the turn texts ("Speaker: text"), cosine top-k."""
    encoder = load_embedder()
    turns = encoder.encode([t.text for t in conversation.turns], normalize_embeddings=True, show_progress_bar=False)
    questions = encoder.encode([q.text for q in conversation.questions], normalize_embeddings=True, show_progress_bar=False)
    order = np.argsort(-(questions @ turns.T), axis=1, kind="stable")[:, : max(KS)]
    return [[conversation.turns[i].dia_id for i in row] for row in order]


TURN_FORMATS: dict[str, Callable[[Turn, Turn | None], str]] = {
    "turn": lambda turn, previous: turn.text,
    "dated turn": lambda turn, previous: f"[{turn.at:%d %B %Y}] {turn.text}",
    "turn with previous": lambda turn, previous: (
        f"(after {previous.text}) {turn.text}" if previous and previous.session == turn.session else turn.text
    ),
}


def ingest(conversation: Conversation, folder: Path | str, config: MemoryConfig, turn_format: str) -> dict[str, list[str]]:
    """Store the conversation, one note per turn, a session per `remember_many` batch;
    returns the dialog ids each note holds (a repeated turn reinforces an earlier note)."""
    dia_of_note: dict[str, list[str]] = defaultdict(list)
    sessions: dict[int, list[tuple[Turn, str]]] = defaultdict(list)
    for previous, turn in zip([None, *conversation.turns], conversation.turns):
        sessions[turn.session].append((turn, TURN_FORMATS[turn_format](turn, previous)))
    with Memory(folder, config=config) as mem:
        for session, turns in sorted(sessions.items()):
            notes = mem.remember_many(
                [
                    MemoryItem(text=text, at=turn.at, tags=(turn.speaker,),
                               metadata={"speaker": turn.speaker, "dia_id": turn.dia_id})
                    for turn, text in turns
                ],
                user_id=conversation.sample_id, session_id=f"session_{session}",
            )
            for (turn, _), note in zip(turns, notes):
                dia_of_note[note.id].append(turn.dia_id)
    return dia_of_note


def ask(conversation: Conversation, folder: Path | str, config: MemoryConfig, dia_of_note: dict[str, list[str]]) -> list[list[str]]:
    """Every question through `recall`, a day after the last session, without reinforcement."""
    asked_at = max(t.at for t in conversation.turns) + timedelta(days=1)
    ranked = []
    with Memory(folder, config=config) as mem:
        for question in conversation.questions:
            hits = mem.recall(question.text, k=max(KS), user_id=conversation.sample_id, at=asked_at, reinforce=False)
            ranked.append([dia for hit in hits for dia in dia_of_note[hit.note.id]][: max(KS)])
    return ranked


class IngestedStores:
    """Each conversation ingested once per ingestion setting, then asked with many rankings.
    `server`: keep each store in a database of this PostgreSQL server instead of a folder."""

    def __init__(self, root: Path, server: TemporaryPostgres | None = None):
        self.root, self.server = root, server
        self._stores: dict[tuple[str, str], dict[str, list[str]]] = {}
        self._locations: dict[tuple[str, str], Path | str] = {}

    def retriever(self, config: MemoryConfig, turn_format: str = "turn") -> Retriever:
        settings = {k: v for k, v in config.model_dump().items() if k in INGESTION_SETTINGS}
        ingest_key = json.dumps([settings, turn_format], sort_keys=True)

        def retrieve(conversation: Conversation) -> list[list[str]]:
            key = (ingest_key, conversation.sample_id)
            if key not in self._stores:
                folder = self.root / f"store{len(self._stores)}"
                self._locations[key] = self.server.create_database() if self.server else folder
                self._stores[key] = ingest(conversation, self._locations[key], config, turn_format)
            return ask(conversation, self._locations[key], config, self._stores[key])

        return retrieve


# settings that change what is stored; every other setting only changes ranking
INGESTION_SETTINGS = {"link_threshold", "max_links", "duplicate_threshold", "max_keywords", "context_weight"}


def score(conversations: list[Conversation], ranked: list[list[list[str]]]) -> dict:
    """Evidence recall@k and hit@k, overall and per category."""
    per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for conversation, rankings in zip(conversations, ranked):
        for question, ranking in zip(conversation.questions, rankings):
            for k in KS:
                found = len(question.evidence & set(ranking[:k]))
                for group in ("all", CATEGORIES[question.category]):
                    per[group][f"recall@{k}"].append(found / len(question.evidence))
                    per[group][f"hit@{k}"].append(float(found > 0))
    return {
        group: {metric: float(np.mean(values)) for metric, values in metrics.items()} | {"questions": len(metrics["hit@1"])}
        for group, metrics in per.items()
    }


def evaluate(conversations: list[Conversation], retriever: Retriever) -> dict:
    ranked = [retriever(c) for c in conversations]
    return {
        "all conversations": score(conversations, ranked),
        "tuning half": score(conversations[:TUNING_CONVERSATIONS], ranked[:TUNING_CONVERSATIONS]),
        "held-out half": score(conversations[TUNING_CONVERSATIONS:], ranked[TUNING_CONVERSATIONS:]),
    }


def ablations() -> dict[str, tuple[MemoryConfig, str]]:
    """The default ranking, the default with one part switched off, and two ways of putting
    context into what is stored and embedded: (config, turn format)."""
    full = MemoryConfig()
    return {
        "agentmem (default)": (full, "turn"),
        "- lexical (BM25)": (full.model_copy(update={"lexical_weight": 0.0}), "turn"),
        "- link activation": (full.model_copy(update={"link_spread": 0.0}), "turn"),
        "- time-aware matching": (full.model_copy(update={"time_weight": 0.0}), "turn"),
        "- retention prior": (full.model_copy(update={"retention_floor": 1.0}), "turn"),
        "retention prior at floor 0.7": (full.model_copy(update={"retention_floor": 0.7}), "turn"),
        "- conversation context in the vector": (full.model_copy(update={"context_weight": 0.0}), "turn"),
        "conversation context weight 0.3": (full.model_copy(update={"context_weight": 0.3}), "turn"),
        "+ session date in the note": (full, "dated turn"),
        "+ previous turn in the note": (full, "turn with previous"),
    }


def markdown(results: dict, command: str) -> str:
    default = results["agentmem (default)"]["all conversations"]
    lines = [
        "## Retrieval: LoCoMo evidence recall",
        "",
        f"Measured {machine_line()}.",
        f"Command: `{command}`",
        "",
        f"{default['all']['questions']} questions (categories 1-4) over the dev conversations; one note per dialog"
        " turn. recall@k: share of a question's evidence turns in the top k; hit@k: share of questions with any.",
        "",
        "| retriever | recall@1 | recall@5 | recall@10 | recall@25 | hit@10 | recall@10 tuning half | recall@10 held-out half |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        a = result["all conversations"]["all"]
        lines.append(
            f"| {name} | {a['recall@1']:.3f} | {a['recall@5']:.3f} | {a['recall@10']:.3f} | {a['recall@25']:.3f}"
            f" | {a['hit@10']:.3f} | {half_recall(result, 'tuning half')} | {half_recall(result, 'held-out half')} |"
        )
    lines += ["", "Per category, recall@10 (questions):", "", "| retriever | " + " | ".join(CATEGORIES.values()) + " |",
              "|---|" + "---|" * len(CATEGORIES)]
    for name, result in results.items():
        cats = result["all conversations"]
        lines.append(
            f"| {name} | "
            + " | ".join(f"{cats[c]['recall@10']:.3f} ({cats[c]['questions']})" for c in CATEGORIES.values() if c in cats)
            + " |"
        )
    return "\n".join(lines)


def stores_markdown(results: dict[str, dict], conversations: int, command: str) -> str:
    """The default ranking on each note store, side by side."""
    lines = [
        "## Retrieval on each note store: LoCoMo evidence recall, SQLite and PostgreSQL",
        "",
        f"Measured {machine_line()}.",
        f"Command: `{command}`",
        "",
        f"The default ranking on the first {conversations} dev conversation(s); only the note store differs"
        " (PostgreSQL's lexical score is BM25-shaped: per query lexeme, IDF x ts_rank; SQLite's is FTS5's BM25).",
        "",
        "| store | questions | recall@1 | recall@5 | recall@10 | recall@25 | hit@10 | recall@10 tuning half"
        " | recall@10 held-out half |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for store, result in results.items():
        default = result["agentmem (default)"]
        a = default["all conversations"]["all"]
        lines.append(
            f"| {store} | {a['questions']} | {a['recall@1']:.3f} | {a['recall@5']:.3f} | {a['recall@10']:.3f}"
            f" | {a['recall@25']:.3f} | {a['hit@10']:.3f} | {half_recall(default, 'tuning half')}"
            f" | {half_recall(default, 'held-out half')} |"
        )
    return "\n".join(lines)


def half_recall(result: dict, half: str) -> str:
    """recall@10 on one half of the conversations, or a dash when the run left that half out."""
    scores = result[half].get("all")
    return f"{scores['recall@10']:.3f}" if scores else "-"


def run_on(store: str, conversations: list[Conversation], configs: dict[str, tuple[MemoryConfig, str]], root: Path) -> dict:
    """Every ranking in `configs` with the notes on the store named."""
    server = TemporaryPostgres() if store == "postgres" else None
    try:
        stores = IngestedStores(root / store, server)
        results = {}
        for name, (config, turn_format) in configs.items():
            results[name] = evaluate(conversations, stores.retriever(config, turn_format))
            print(store, name, json.dumps(results[name]["all conversations"]["all"]), flush=True)
        return results
    finally:
        if server is not None:
            server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agentmem.eval.locomo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/locomo/locomo_dev.json"))
    parser.add_argument("--out", type=Path, default=None, help="also write the raw figures as JSON here")
    add_benchmarks_option(parser)
    parser.add_argument("--no-ablations", action="store_true", help="only the default ranking and the baseline")
    parser.add_argument("--store", nargs="+", choices=["sqlite", "postgres"], default=["sqlite"],
                        help="the note stores to run on (other than SQLite alone: compared in the section locomo-stores)")
    parser.add_argument("--conversations", type=int, default=None, help="only the first N conversations")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not args.data.exists():
        sys.exit(f"LoCoMo data not found at {args.data} (give --data)")
    conversations = load(args.data)[: args.conversations]
    configs = ablations()
    if args.no_ablations:
        configs = {"agentmem (default)": configs["agentmem (default)"]}
    by_store = {}
    with tempfile.TemporaryDirectory(prefix="agentmem-locomo-") as root:
        os.environ.setdefault("AGENTMEM_HOME", str(Path(root) / "home"))  # a PostgreSQL store's embedded index
        for store in args.store:
            by_store[store] = run_on(store, conversations, configs, Path(root))
    command = command_line(parser, argv)
    if args.store != ["sqlite"]:
        write_section("locomo-stores", stores_markdown(by_store, len(conversations), command.strip()), args.benchmarks)
    else:
        results = {"dense baseline (MiniLM cosine)": evaluate(conversations, dense_baseline), **by_store[args.store[0]]}
        write_section("locomo", markdown(results, command.strip()), args.benchmarks)
    if args.out:
        args.out.write_text(json.dumps(by_store, indent=2))


if __name__ == "__main__":
    main()

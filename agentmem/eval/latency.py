"""Latency of remember / recall at 1k and 10k notes, next to a plain baseline.

The baseline is what a user would write without agentmem: MiniLM `encode` plus a raw
Chroma collection (`add` to store, `query` to search). Both run in the same process on
the same texts, so the ratios compare like with like.

    python -m agentmem.eval.latency [--data ../shared/data] [--sizes 1000 10000] [--store sqlite postgres]
        [--out latency.json]

`--store postgres` keeps the notes in a PostgreSQL 15 server started for the run (durable
settings, loopback TCP); its vector index is embedded Chroma, as for the baseline and SQLite.

Texts: LoCoMo dialog turns and ZsRE questions (about 12k distinct sentences), stored as
50-note sessions of one user, so linking and duplicate checks run as in real use.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..memory import Memory
from ..models import load_embedder
from ..stores.vectors import client_settings
from .postgres_server import TemporaryPostgres
from .report import machine_line, write_section

PROBES = 100  # single remembers and recalls timed at each size
CHUNK = 500  # remember_many batch size while filling


def corpus(data: Path) -> tuple[list[str], list[str]]:
    """(texts to store, questions to ask) from the shared data sets."""
    locomo = data / "locomo" / "locomo_dev.json"
    zsre = [data / "zsre" / "zsre_mend_edit.json", data / "zsre" / "zsre_mend_train-1k.json"]
    missing = [str(p) for p in [locomo, *zsre] if not p.exists()]
    if missing:
        sys.exit(f"data not found: {', '.join(missing)} (give --data)")
    texts, questions = [], []
    for conversation in json.loads(locomo.read_text()):
        questions += [qa["question"] for qa in conversation["qa"]]
        for key, turns in conversation["conversation"].items():
            if key.startswith("session_") and isinstance(turns, list):
                texts += [turn["text"] for turn in turns]
    for path in zsre:
        for record in json.loads(path.read_text()):
            texts += [record["src"], record["rephrase"], record["loc"], f"{record['src']} {record['alt']}"]
    texts = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
    rng = np.random.default_rng(0)
    return [texts[i] for i in rng.permutation(len(texts))], questions


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"p50_ms": statistics.median(ms), "p95_ms": ms[int(0.95 * (len(ms) - 1))]}


class Baseline:
    """MiniLM encode + a raw embedded Chroma collection."""

    def __init__(self, path: Path):
        import chromadb

        self.encoder = load_embedder()
        self.client = chromadb.PersistentClient(str(path), settings=client_settings())
        self.collection = self.client.get_or_create_collection(
            "baseline", metadata={"hnsw:space": "cosine"}, embedding_function=None
        )
        self.size = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.encoder.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)

    def add(self, texts: list[str], embeddings: np.ndarray | None = None) -> None:
        ids = [str(self.size + i) for i in range(len(texts))]
        embeddings = self.encode(texts) if embeddings is None else embeddings
        self.collection.add(ids=ids, embeddings=embeddings, documents=texts)
        self.size += len(texts)

    def query(self, text: str) -> None:
        self.collection.query(query_embeddings=self.encode([text]), n_results=10)


def open_memory(store: str, workdir: Path) -> tuple[Memory, TemporaryPostgres | None]:
    """A new memory on the note store named, and the PostgreSQL server it needs (to stop after)."""
    if store == "sqlite":
        return Memory(workdir / "memory", collection="latency"), None
    os.environ["AGENTMEM_HOME"] = str(workdir / "home")  # the embedded index goes in the work folder
    server = TemporaryPostgres()
    try:
        return Memory(server.create_database("latency"), collection="latency"), server
    except BaseException:
        server.stop()
        raise


def run(data: Path, sizes: list[int], store: str = "sqlite") -> dict:
    texts, questions = corpus(data)
    if len(texts) < max(sizes) + PROBES:
        sys.exit(f"only {len(texts)} distinct texts; the largest size needs {max(sizes) + PROBES}")
    probes, pool = texts[:PROBES], texts[PROBES:]
    asks = questions[:PROBES]
    workdir = Path(tempfile.mkdtemp(prefix="agentmem-latency-"))
    baseline = Baseline(workdir / "baseline")
    memory, server = open_memory(store, workdir)
    results: dict = {"sizes": {}}

    try:
        filled = 0
        for size in sizes:
            batch = pool[filled:size]
            items = [{"text": t, "session_id": f"s{(filled + i) // 50}"} for i, t in enumerate(batch)]
            # baseline and agentmem alternate chunk by chunk (and below, probe by probe),
            # so a load spike on this shared machine hits both alike
            encode_seconds = many_seconds = 0.0
            for start in range(0, len(batch), CHUNK):
                chunk: list = []
                encode_seconds += timed(lambda: chunk.append(baseline.encode(batch[start : start + CHUNK])))
                many_seconds += timed(lambda: memory.remember_many(items[start : start + CHUNK], user_id="bench"))
                baseline.add(batch[start : start + CHUNK], chunk[0])
            filled = size

            remember_base, remember_ours, recall_base, recall_ours, stored = [], [], [], [], []
            for text, question in zip(probes, asks):
                remember_base.append(timed(lambda: baseline.add([text])))
                remember_ours.append(timed(lambda: stored.append(memory.remember(text, user_id="bench", session_id="probe").id)))
                recall_base.append(timed(lambda: baseline.query(question)))
                recall_ours.append(timed(lambda: memory.recall(question, user_id="bench", k=10)))
            results["sizes"][size] = {
                "notes_stored": memory.stats().notes,
                "remember": {"baseline": percentiles(remember_base), "agentmem": percentiles(remember_ours)},
                "recall": {"baseline": percentiles(recall_base), "agentmem": percentiles(recall_ours)},
                "throughput_per_s": {
                    "minilm_encode": len(batch) / encode_seconds,
                    "remember_many": len(batch) / many_seconds,
                },
            }
            for note_id in set(stored):  # the next size starts from the pool alone
                memory.forget(note_id)
    finally:
        memory.close()
        if server is not None:
            server.stop()
    return results


def markdown(results: dict, command: str) -> str:
    lines = [
        "## Latency: remember / recall",
        "",
        f"Measured {machine_line()}.",
        f"Command: `{command}`",
        "",
        "| store | notes | remember p50 / p95 (ms) | baseline add p50 / p95 | ratio p50 | recall p50 / p95 (ms) |"
        " baseline query p50 / p95 | ratio p50 | remember_many / encode throughput (texts/s) | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for store, size, r in ((store, size, r) for store, by_size in results["stores"].items()
                           for size, r in by_size["sizes"].items()):
        rem, rec, tp = r["remember"], r["recall"], r["throughput_per_s"]
        lines.append(
            f"| {store} | {r['notes_stored']} "
            f"| {rem['agentmem']['p50_ms']:.1f} / {rem['agentmem']['p95_ms']:.1f} "
            f"| {rem['baseline']['p50_ms']:.1f} / {rem['baseline']['p95_ms']:.1f} "
            f"| {rem['agentmem']['p50_ms'] / rem['baseline']['p50_ms']:.2f}x "
            f"| {rec['agentmem']['p50_ms']:.1f} / {rec['agentmem']['p95_ms']:.1f} "
            f"| {rec['baseline']['p50_ms']:.1f} / {rec['baseline']['p95_ms']:.1f} "
            f"| {rec['agentmem']['p50_ms'] / rec['baseline']['p50_ms']:.2f}x "
            f"| {tp['remember_many']:.0f} / {tp['minilm_encode']:.0f} "
            f"| {tp['remember_many'] / tp['minilm_encode']:.2f}x |"
        )
    lines += [
        "",
        "Targets: remember p50 <= 1.3x baseline, recall p50 <= 1.5x baseline, remember_many throughput"
        " >= 0.8x raw MiniLM encode throughput. agentmem's remember also finds neighbours, links, checks"
        " for duplicates and writes the note graph; its recall also ranks lexically, spreads activation"
        " over links and records the recall.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--store", nargs="+", choices=["sqlite", "postgres"], default=["sqlite"],
                        help="the note stores to measure, each with its own baseline run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--out", type=Path, default=None, help="also write the raw figures as JSON here")
    parser.add_argument("--benchmarks", type=Path, default=Path("BENCHMARKS.md"))
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = {"stores": {store: run(args.data, sorted(args.sizes), store) for store in args.store}}
    command = "python -m agentmem.eval.latency " + " ".join(argv if argv is not None else sys.argv[1:])
    write_section("latency", markdown(results, command.strip()), args.benchmarks)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

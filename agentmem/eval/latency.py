"""Latency of remember / recall at 1k, 10k and 100k notes, next to a plain baseline.

The baseline is what a user would write without agentmem: MiniLM `encode` plus a raw
Chroma collection (`add` to store, `query` to search). Both run in the same process on
the same texts, so the ratios compare like with like.

    python -m agentmem.eval.latency [--data ../shared/data] [--sizes 1000 10000] [--store sqlite postgres]
        [--out latency.json]

`--store postgres` keeps the notes in a PostgreSQL 15 server started for the run (durable
settings, loopback TCP); its vector index is embedded Chroma, as for the baseline and SQLite.

Texts: LoCoMo dialog turns and ZsRE questions (about 11k distinct sentences), stored as
50-note sessions of one user, so linking and duplicate checks run as in real use. Beyond
those, splices: the first half of one corpus text's words followed by the second half of
another's (pairs drawn with a fixed seed, each splice distinct), which keeps the corpus's
vocabulary and length distribution.

Filling: every stored note goes through `remember_many` (neighbours, duplicates, links,
evolution as in use), but the filler texts' MiniLM vectors are computed once and cached
under --cache (90k texts took 18 min to embed on a shared 2-core Xeon); the embedder
looks them up instead of encoding them again. The last ROUNDS x ROUND texts of each size's
fill, the timed remembers and every recall query are encoded for real, so the throughput
column and every timed call are the normal user path.

Throughput: those last texts before each size are stored in ROUNDS batches of ROUND; each
batch is also encoded by the baseline (MiniLM's `encode` alone, with its defaults, as a user
calls it: 32 texts a forward pass; 64 before 2026-11-28, which was 17 % slower), the two
alternating which goes first, so a load spike on a shared machine hits both alike. The ratio
reported is the median of the per-batch ratios (remember_many texts/s over encode texts/s),
with the range.

With the embedded index used here, a remember's vectors are written with its note's commit
(`stores.early_index`); an index write left after the commit (a duplicate revived, an index
that refused the write) finishes in the background (`stores.index_writes`). Each timed remember
is reported twice: until the call returns, and with any index write left (the benchmark then
reads the note back, which waits for the write; the read itself costs about a millisecond).
The baseline's `add` writes its collection before it returns, and a memory's next call waits
for any write left, so the target is held to the second figure.
No timed step, ours or the baseline's, shares the machine with a write of the other. A timed
remember_many batch includes its index write.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from ..memory import Memory
from ..notes import Note
from ..models import bundled_embedder_path, load_embedder
from ..stores.vectors import client_settings
from .postgres_server import TemporaryPostgres
from .report import add_benchmarks_option, command_line, machine_line, write_section

PROBES = 100  # single remembers and recalls timed at each size
CHUNK = 500  # remember_many batch size while filling
ROUNDS, ROUND = 5, 200  # timed remember_many batches before each size, each beside an encode of the same texts
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "agentmem-latency-vectors"


def corpus(data: Path, count: int = 0) -> tuple[list[str], list[str]]:
    """(texts to store, questions to ask) from the shared data sets; splices make up the texts
    to at least `count`."""
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
    texts = [texts[i] for i in rng.permutation(len(texts))]
    return texts + splices(texts, count - len(texts)), questions


def splices(texts: list[str], count: int) -> list[str]:
    """`count` new distinct texts, each the first half of one text's words and the second half of another's."""
    rng = np.random.default_rng(1)
    seen, made = set(texts), []
    while len(made) < count:
        first, second = (texts[i].split() for i in rng.integers(len(texts), size=2))
        text = " ".join(first[: (len(first) + 1) // 2] + second[len(second) // 2 :])
        if text not in seen:
            seen.add(text)
            made.append(text)
    return made


def cached_embeddings(texts: list[str], folder: Path, part: int = 5000) -> np.ndarray:
    """MiniLM vectors of `texts`, computed once and kept in `folder` (in parts, so a stopped run resumes)."""
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    whole = folder / f"embeddings-{key}.npy"
    if whole.exists():
        return np.load(whole)
    folder.mkdir(parents=True, exist_ok=True)
    encoder, parts = load_embedder(), []
    for start in range(0, len(texts), part):
        path = folder / f"embeddings-{key}-{start}.npy"
        if not path.exists():
            vectors = encoder.encode(texts[start : start + part], batch_size=64, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
            np.save(path, vectors)
        parts.append(np.load(path))
    np.save(whole, np.concatenate(parts))
    for start in range(0, len(texts), part):
        (folder / f"embeddings-{key}-{start}.npy").unlink()
    return np.load(whole)


class PrecomputedEmbedder(SentenceTransformer):
    """MiniLM that takes a batch made only of known filler texts from their cached vectors,
    and encodes anything else. It answers in its forward pass, below `encode`, so that every
    call reaches it as agentmem makes it (`agentmem.encoding.embed`)."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        super().__init__(bundled_embedder_path(), device="cpu")
        self.vectors = vectors

    def preprocess(self, inputs, prompt=None, **kwargs):  # type: ignore[no-untyped-def, override]
        if inputs and all(isinstance(s, str) and s in self.vectors for s in inputs):
            return {"precomputed": torch.from_numpy(np.stack([self.vectors[s] for s in inputs]))}
        return super().preprocess(inputs, prompt, **kwargs)

    def forward(self, input, **kwargs):  # type: ignore[no-untyped-def, override]
        if "precomputed" in input:
            return {"sentence_embedding": input["precomputed"]}
        return super().forward(input, **kwargs)


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
        return self.encoder.encode(texts, normalize_embeddings=True, show_progress_bar=False)  # its default batch

    def add(self, texts: list[str], embeddings: np.ndarray | None = None) -> None:
        ids = [str(self.size + i) for i in range(len(texts))]
        embeddings = self.encode(texts) if embeddings is None else embeddings
        self.collection.add(ids=ids, embeddings=embeddings, documents=texts)
        self.size += len(texts)

    def query(self, text: str) -> None:
        self.collection.query(query_embeddings=self.encode([text]), n_results=10)


def throughput_rounds(
    batches: list[list[str]], encode: Callable[[list[str]], object], store: Callable[[int], object],
    clock: Callable[[Callable[[], object]], float] | None = None,
) -> dict:
    """Time `store(i)` (remember_many of batch i) and `encode(batch i)` for each batch, alternating
    which runs first; texts/s of each, and the median and range of the per-batch ratios."""
    clock = clock or timed
    encode_rates, many_rates, ratios = [], [], []
    for i, batch in enumerate(batches):
        steps = [lambda: encode(batch), lambda: store(i)]
        seconds = [clock(step) for step in (steps if i % 2 == 0 else steps[::-1])]
        encode_s, many_s = seconds if i % 2 == 0 else seconds[::-1]
        encode_rates.append(len(batch) / encode_s)
        many_rates.append(len(batch) / many_s)
        ratios.append(many_rates[-1] / encode_rates[-1])
    return {
        "minilm_encode": statistics.median(encode_rates),
        "remember_many": statistics.median(many_rates),
        "ratio_p50": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "batches": len(batches),
        "batch_size": max(len(b) for b in batches),
    }


def settled(memory: Memory, notes: list[Note]) -> None:
    """Once the memory's index writes in flight are done: every call waits for them, `get` costs least."""
    if notes:
        memory.get(notes[-1].id)


@contextlib.contextmanager
def home_folder(folder: Path) -> Iterator[None]:
    """AGENTMEM_HOME set to `folder` for the block, and as it was after."""
    before = os.environ.get("AGENTMEM_HOME")
    os.environ["AGENTMEM_HOME"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("AGENTMEM_HOME", None)
        else:
            os.environ["AGENTMEM_HOME"] = before


@contextlib.contextmanager
def work_stores(
    store: str, embedder: SentenceTransformer, scratch: Path | None = None
) -> Iterator[tuple[Baseline, Memory]]:
    """The baseline's collection and a new memory on the note store named (with the PostgreSQL server it
    needs), in a work folder (in `scratch`, by default the system's temporary folder) that is removed after,
    whatever fails: both stores held about 0.5 GB at 100k notes."""
    if store not in ("sqlite", "postgres"):
        raise ValueError(f"no note store called {store!r}: sqlite or postgres")
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agentmem-latency-", dir=scratch,
                                                                        ignore_cleanup_errors=True)))
        baseline = Baseline(workdir / "baseline")
        stack.callback(baseline.client.close)
        location: str | Path = workdir / "memory"
        if store == "postgres":
            stack.enter_context(home_folder(workdir / "home"))  # the embedded index goes in the work folder
            server = TemporaryPostgres()
            stack.callback(server.stop)
            location = server.create_database("latency")
        memory = stack.enter_context(Memory(location, collection="latency", embedder=embedder))
        yield baseline, memory


def run(
    data: Path, sizes: list[int], store: str = "sqlite", cache: Path = DEFAULT_CACHE,
    report: Callable[[dict], None] = lambda results: None, scratch: Path | None = None,
) -> dict:
    """The figures at each size, passed to `report` as each size is done (a long run keeps what it measured);
    `scratch`: where the work folder goes (`work_stores`)."""
    sizes = sorted(set(sizes))
    texts, questions = corpus(data, max(sizes) + PROBES)
    probes, pool = texts[:PROBES], texts[PROBES : max(sizes) + PROBES]
    asks = questions[:PROBES]
    vectors = cached_embeddings(pool, cache)
    timed_span = ROUNDS * ROUND
    encoded_for_real = {t for size in sizes for t in pool[max(0, size - timed_span) : size]}
    embedder = PrecomputedEmbedder({t: v for t, v in zip(pool, vectors) if t not in encoded_for_real})
    results: dict = {"sizes": {}}
    with work_stores(store, embedder, scratch) as (baseline, memory):
        filled = 0
        for size in sizes:
            items = [{"text": t, "session_id": f"s{i // 50}"} for i, t in enumerate(pool[:size])]
            last = max(filled, size - timed_span)  # the batches timed for the throughput end the fill
            for start in range(filled, last, CHUNK):
                end = min(start + CHUNK, last)
                memory.remember_many(items[start:end], user_id="bench")
                baseline.add(pool[start:end], vectors[start:end])
            starts = list(range(last, size, ROUND))
            batches = [pool[start : min(start + ROUND, size)] for start in starts]
            throughput = throughput_rounds(
                batches, baseline.encode,
                lambda i: settled(memory, memory.remember_many(items[starts[i] : starts[i] + len(batches[i])], user_id="bench")),
            )
            for start, batch in zip(starts, batches):
                baseline.add(batch, vectors[start : start + len(batch)])
            filled = size

            remember_base, remember_ours, remember_written, recall_base, recall_ours, stored = [], [], [], [], [], []
            for text, question in zip(probes, asks):
                remember_base.append(timed(lambda: baseline.add([text])))
                remember_ours.append(timed(lambda: stored.append(memory.remember(text, user_id="bench", session_id="probe").id)))
                remember_written.append(remember_ours[-1] + timed(lambda: memory.get(stored[-1])))  # waits for the write
                recall_base.append(timed(lambda: baseline.query(question)))
                recall_ours.append(timed(lambda: memory.recall(question, user_id="bench", k=10)))
            results["sizes"][size] = {
                "notes_stored": memory.stats().notes,
                "remember": {"baseline": percentiles(remember_base), "agentmem": percentiles(remember_ours),
                             "agentmem_with_index_write": percentiles(remember_written)},
                "recall": {"baseline": percentiles(recall_base), "agentmem": percentiles(recall_ours)},
                "throughput_per_s": throughput,
            }
            report(results)
            if size != sizes[-1]:  # the next size starts from the pool alone
                for note_id in set(stored):
                    memory.forget(note_id)
    return results


def markdown(results: dict, command: str) -> str:
    lines = [
        "## Latency: remember / recall",
        "",
        f"Measured {machine_line()}.",
        f"Command: `{command}`",
        "",
        "| store | notes | remember p50 / p95 (ms): returns | with its index write | baseline add p50 / p95"
        " | ratio p50, with the write | recall p50 / p95 (ms) |"
        " baseline query p50 / p95 | ratio p50 | remember_many / encode throughput, median (texts/s) |"
        " ratio: median of batches (range) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for store, size, r in ((store, size, r) for store, by_size in results["stores"].items()
                           for size, r in by_size["sizes"].items()):
        rem, rec, tp = r["remember"], r["recall"], r["throughput_per_s"]
        written = rem["agentmem_with_index_write"]
        lines.append(
            f"| {store} | {r['notes_stored']} "
            f"| {rem['agentmem']['p50_ms']:.1f} / {rem['agentmem']['p95_ms']:.1f} "
            f"| {written['p50_ms']:.1f} / {written['p95_ms']:.1f} "
            f"| {rem['baseline']['p50_ms']:.1f} / {rem['baseline']['p95_ms']:.1f} "
            f"| {written['p50_ms'] / rem['baseline']['p50_ms']:.2f}x "
            f"| {rec['agentmem']['p50_ms']:.1f} / {rec['agentmem']['p95_ms']:.1f} "
            f"| {rec['baseline']['p50_ms']:.1f} / {rec['baseline']['p95_ms']:.1f} "
            f"| {rec['agentmem']['p50_ms'] / rec['baseline']['p50_ms']:.2f}x "
            f"| {tp['remember_many']:.0f} / {tp['minilm_encode']:.0f} "
            f"| {tp['ratio_p50']:.2f}x ({tp['ratio_min']:.2f}-{tp['ratio_max']:.2f}, {tp['batches']} x {tp['batch_size']}) |"
        )
    lines += [
        "",
        "Targets: remember p50 (with its index write, as the baseline's add has its own) <= 1.3x baseline,"
        " recall p50 <= 1.5x baseline, remember_many throughput"
        " >= 0.8x raw MiniLM encode throughput. The throughput batches are the last texts stored before each"
        " size, each also encoded alone, the two alternating which goes first. agentmem's remember also finds neighbours, links, checks"
        " for duplicates and writes the note graph; its recall also ranks lexically, spreads activation"
        " over links and records the recall.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agentmem.eval.latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--store", nargs="+", choices=["sqlite", "postgres"], default=["sqlite"],
                        help="the note stores to measure, each with its own baseline run")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the filler texts' vectors are kept")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--out", type=Path, default=None, help="also write the raw figures as JSON here")
    add_benchmarks_option(parser)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    command = command_line(parser, argv)
    results: dict = {"stores": {}}

    def report(store: str, figures: dict) -> None:
        results["stores"][store] = figures
        write_section("latency" if args.store == ["sqlite"] else "latency-stores", markdown(results, command.strip()),
                      args.benchmarks)
        if args.out:
            args.out.write_text(json.dumps(results, indent=2))

    for store in args.store:
        run(args.data, sorted(args.sizes), store, args.cache, lambda figures, store=store: report(store, figures))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Texts to unit vectors: one text (a query, a single remember) the short way, and many texts
a batch at a time in a worker thread, so that the caller can use each batch while the next one
is encoded (the encoder's kernels release the GIL, and a search of a Chroma index does too)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import batch_to_device

# Texts per forward pass of the embedder. A batch is padded to its longest text, and a small one's
# activations stay in the CPU's caches: MiniLM on an AMD EPYC, 1,000 LoCoMo turns, one torch thread:
# 181 texts/s at 16, 170 at 32 (SentenceTransformer's default), 142 at 64; two threads: 300 / 296 /
# 254; 200 texts of 145 tokens: 7.5 / 8.1 / 8.9 s (BENCHMARKS.md, latency-stores, 2026-11-28 19:20 UTC).
ENCODE_BATCH = 16
COUNTED_AT_ONCE = 1024  # texts whose tokens are counted in one call (`token_counts`)

Encode = Callable[[list[str]], np.ndarray]


def embed(embedder: SentenceTransformer, texts: list[str]) -> np.ndarray:
    """The texts' unit-length float32 embeddings, as `encode` gives them (to float rounding: a
    batch's padding differs).

    `encode` checks on every call where each parameter lives and puts every module in eval
    mode: about 1 ms of a 14 ms MiniLM encode of one query on this machine, 0.7 ms of a 24 ms
    recall at 100k notes (BENCHMARKS.md, *latency-stores*). For one text, when `encode` of it is
    exactly tokenize, forward and normalize, that is what runs instead. Many texts are encoded a
    batch of `length_batches` at a time.
    """
    if len(texts) == 1 and encodes_plainly(embedder):
        features = batch_to_device(embedder.preprocess(texts), embedder.device)
        with torch.inference_mode():
            vectors = embedder(features)["sentence_embedding"]
            return torch.nn.functional.normalize(vectors, dim=1).cpu().numpy().astype(np.float32)
    if len(texts) <= ENCODE_BATCH or not encodes_plainly(embedder):
        return encoded(embedder, texts)
    vectors: dict[int, np.ndarray] = {}
    for positions in length_batches(embedder, texts):
        vectors.update(zip(positions, encoded(embedder, [texts[i] for i in positions])))
    return np.stack([vectors[i] for i in range(len(texts))])


def encoded(embedder: SentenceTransformer, texts: list[str]) -> np.ndarray:
    return embedder.encode(
        texts, batch_size=ENCODE_BATCH, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    ).astype(np.float32)


def encodes_plainly(embedder: SentenceTransformer) -> bool:
    """Whether `encode` of one text is its forward pass, normalized: `encode` is still
    SentenceTransformer's own (neither a subclass nor the instance replaced it), no prompt is
    prepended, no dimension cut, and no training-mode dropout is on."""
    return (
        getattr(embedder.encode, "__func__", None) is SentenceTransformer.encode
        and embedder.default_prompt_name is None
        and embedder.truncate_dim is None
        and not embedder.training
    )


def length_batches(embedder: SentenceTransformer, texts: Sequence[str], size: int = ENCODE_BATCH) -> list[list[int]]:
    """The texts' positions in encoder batches, longest first. A batch is padded to its longest
    text, so texts of like length go together: by their tokens, as the embedder counts them
    (SentenceTransformer's own `encode` sorts by characters, which pads more: 200 texts of the
    latency benchmark on an AMD EPYC, one torch thread, 189 texts/s against 175); by characters
    where the embedder's `encode` is its own, or its preprocessing gives no attention mask."""
    lengths = token_counts(embedder, texts) if encodes_plainly(embedder) and len(texts) > size else None
    if lengths is None:
        lengths = [len(text) for text in texts]
    order = np.argsort([-length for length in lengths], kind="stable")
    return [order[start : start + size].tolist() for start in range(0, len(order), size)]


def token_counts(embedder: SentenceTransformer, texts: Sequence[str]) -> list[int] | None:
    """Each text's tokens as the embedder's preprocessing counts them (its attention mask), or None
    where it gives no mask. In parts: 50k texts preprocessed at once held 1.9 GB (the tokenizer's
    objects for every text)."""
    counts: list[int] = []
    for start in range(0, len(texts), COUNTED_AT_ONCE):
        features = embedder.preprocess(list(texts[start : start + COUNTED_AT_ONCE]))
        if "attention_mask" not in features:
            return None
        counts += features["attention_mask"].sum(dim=1).tolist()
    return counts


def encode_overlapped(
    encode: Encode, texts: Sequence[str], batches: list[list[int]], executor: Executor,
    each: Callable[[list[int], np.ndarray], None],
) -> np.ndarray:
    """The texts' embeddings, in order, encoded a batch (of positions, `length_batches`) at a
    time; `each(positions, vectors)` runs in the caller's thread on every batch as it arrives,
    while the worker encodes the next one."""
    vectors: dict[int, np.ndarray] = {}
    pending = executor.submit(encode, [texts[i] for i in batches[0]])
    for number, positions in enumerate(batches):
        batch_vectors = pending.result()
        if number + 1 < len(batches):
            pending = executor.submit(encode, [texts[i] for i in batches[number + 1]])
        each(positions, batch_vectors)
        vectors.update(zip(positions, batch_vectors))
    return np.stack([vectors[i] for i in range(len(texts))])

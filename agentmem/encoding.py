"""Encoding many texts a batch at a time in a worker thread, so that the caller can use each
batch while the next one is encoded (the encoder's kernels release the GIL, and a search of a
Chroma index does too)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor

import numpy as np

ENCODE_BATCH = 64  # texts per forward pass of the embedder

Encode = Callable[[list[str]], np.ndarray]


def length_batches(texts: Sequence[str], size: int = ENCODE_BATCH) -> list[list[int]]:
    """The texts' positions in the batches `SentenceTransformer.encode` forms (longest first), so
    that encoding them one batch at a time pads them as a single call would."""
    order = np.argsort([-len(text) for text in texts])
    return [order[start : start + size].tolist() for start in range(0, len(order), size)]


def encode_overlapped(
    encode: Encode, texts: Sequence[str], executor: Executor, each: Callable[[list[int], np.ndarray], None]
) -> np.ndarray:
    """The texts' embeddings, in order; `each(positions, vectors)` runs in the caller's thread on
    every batch as it arrives, while the worker encodes the next one."""
    batches = length_batches(texts)
    vectors: dict[int, np.ndarray] = {}
    pending = executor.submit(encode, [texts[i] for i in batches[0]])
    for number, positions in enumerate(batches):
        encoded = pending.result()
        if number + 1 < len(batches):
            pending = executor.submit(encode, [texts[i] for i in batches[number + 1]])
        each(positions, encoded)
        vectors.update(zip(positions, encoded))
    return np.stack([vectors[i] for i in range(len(texts))])

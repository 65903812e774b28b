"""Encoding a batch at a time in a worker, on the real MiniLM."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from agentmem.encoding import ENCODE_BATCH, encode_overlapped, length_batches


def test_batches_take_the_longest_texts_first_as_sentence_transformers_does():
    texts = ["a" * (i % 7 + 1) for i in range(150)]
    batches = length_batches(texts)
    assert [len(b) for b in batches] == [ENCODE_BATCH, ENCODE_BATCH, 150 - 2 * ENCODE_BATCH]
    assert sorted(i for b in batches for i in b) == list(range(150))
    lengths = [len(texts[i]) for b in batches for i in b]
    assert lengths == sorted(lengths, reverse=True)


def test_overlapped_encoding_gives_one_call_s_embeddings_and_hands_over_every_batch(embedder):
    texts = [f"Note {i} is about {'a long story of ' * (i % 5)}topic {i % 13}" for i in range(140)]

    def encode(batch: list[str]) -> np.ndarray:
        return embedder.encode(batch, batch_size=ENCODE_BATCH, normalize_embeddings=True, convert_to_numpy=True)

    seen: list[tuple[list[int], np.ndarray]] = []
    with ThreadPoolExecutor(max_workers=1) as worker:
        vectors = encode_overlapped(encode, texts, worker, lambda positions, batch: seen.append((positions, batch)))
    np.testing.assert_allclose(vectors, encode(texts), atol=1e-5)
    assert [positions for positions, _ in seen] == length_batches(texts)
    for positions, batch in seen:
        np.testing.assert_array_equal(batch, vectors[positions])

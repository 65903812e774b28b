"""Encoding one text the short way, and a batch at a time in a worker, on the real MiniLM."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from agentmem.encoding import (
    COUNTED_AT_ONCE, ENCODE_BATCH, embed, encode_overlapped, encodes_plainly, length_batches, token_counts,
)
from agentmem.models import bundled_embedder_path

QUESTION = "When did Caroline go to the LGBTQ support group?"


def encoded(embedder: SentenceTransformer, texts: list[str]) -> np.ndarray:
    return embedder.encode(texts, normalize_embeddings=True, convert_to_numpy=True)


@pytest.mark.parametrize("texts", [[QUESTION], [QUESTION, "Melanie paints sunsets by the lake."]])
def test_embed_gives_what_encode_gives(embedder, texts):
    vectors = embed(embedder, texts)
    assert vectors.dtype == np.float32 and vectors.shape == (len(texts), 384)
    np.testing.assert_allclose(vectors, encoded(embedder, texts), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


@pytest.fixture
def own_embedder() -> SentenceTransformer:
    """A MiniLM of the test's own, free to change (the session's `embedder` is shared)."""
    return SentenceTransformer(bundled_embedder_path(), device="cpu", local_files_only=True)


def test_a_default_prompt_is_prepended_to_one_text_too(own_embedder, embedder):
    own_embedder.prompts = {"query": "query: "}
    own_embedder.default_prompt_name = "query"
    assert not encodes_plainly(own_embedder)
    prompted = embed(own_embedder, [QUESTION])
    np.testing.assert_allclose(prompted, encoded(own_embedder, [QUESTION]), atol=1e-6)
    assert np.abs(prompted - embed(embedder, [QUESTION])).max() > 1e-3


def test_a_class_with_its_own_encode_is_asked_for_one_text_too():
    class Echo(SentenceTransformer):
        def encode(self, sentences, *args, **kwargs):  # type: ignore[no-untyped-def, override]
            return np.full((len(sentences), 384), 0.5)

    echo = Echo(bundled_embedder_path(), device="cpu", local_files_only=True)
    assert not encodes_plainly(echo)
    assert (embed(echo, [QUESTION]) == np.float32(0.5)).all()


def test_an_encode_replaced_on_the_instance_is_asked_for_one_text_too(own_embedder):
    asked: list[list[str]] = []
    plain_encode = own_embedder.encode
    own_embedder.encode = lambda texts, **kwargs: asked.append(texts) or plain_encode(texts, **kwargs)
    assert not encodes_plainly(own_embedder)
    embed(own_embedder, [QUESTION])
    assert asked == [[QUESTION]]


def test_an_embedder_in_training_mode_is_left_to_encode(own_embedder):
    own_embedder.train()
    assert not encodes_plainly(own_embedder)
    own_embedder.eval()
    assert encodes_plainly(own_embedder)


def mixed_lengths() -> list[str]:
    """Texts whose order by characters is not their order by tokens: spaced letters are a token
    each, a long word a few."""
    return [("x " * (i % 9 + 2)).strip() if i % 2 else "internationalization" * (i % 3 + 1) for i in range(40)]


def test_batches_take_the_texts_with_the_most_tokens_first(embedder):
    texts = mixed_lengths()
    batches = length_batches(embedder, texts)
    assert [len(b) for b in batches] == [ENCODE_BATCH, ENCODE_BATCH, 40 - 2 * ENCODE_BATCH]
    assert sorted(i for b in batches for i in b) == list(range(40))
    tokens = [len(embedder.tokenizer(texts[i])["input_ids"]) for b in batches for i in b]
    assert tokens == sorted(tokens, reverse=True)
    characters = [len(texts[i]) for b in batches for i in b]
    assert characters != sorted(characters, reverse=True)  # what SentenceTransformer's own order would be


def test_an_embedder_with_its_own_encode_is_batched_by_characters():
    class Echo(SentenceTransformer):
        def encode(self, sentences, *args, **kwargs):  # type: ignore[no-untyped-def, override]
            return np.full((len(sentences), 384), 0.5)

    echo = Echo(bundled_embedder_path(), device="cpu", local_files_only=True)
    texts = mixed_lengths()
    characters = [len(texts[i]) for b in length_batches(echo, texts) for i in b]
    assert characters == sorted(characters, reverse=True)


def test_an_embedder_whose_preprocessing_counts_no_tokens_is_batched_by_characters(own_embedder):
    own_embedder.eval()
    own_embedder.preprocess = lambda texts, *args, **kwargs: {"pixel_values": None}  # e.g. an image model's
    assert encodes_plainly(own_embedder)
    texts = mixed_lengths()
    characters = [len(texts[i]) for b in length_batches(own_embedder, texts) for i in b]
    assert characters == sorted(characters, reverse=True)


def test_tokens_are_counted_a_part_at_a_time(own_embedder):
    """An import of 50k texts preprocessed at once held 1.9 GB."""
    texts = [("word " * (i % 11 + 1)).strip() for i in range(2 * COUNTED_AT_ONCE + 5)]
    asked: list[int] = []
    preprocess = own_embedder.preprocess
    own_embedder.preprocess = lambda part, *args, **kwargs: asked.append(len(part)) or preprocess(part, *args, **kwargs)
    assert token_counts(own_embedder, texts) == [i % 11 + 3 for i in range(len(texts))]  # with [CLS] and [SEP]
    assert asked == [COUNTED_AT_ONCE, COUNTED_AT_ONCE, 5]


def test_many_texts_are_embedded_as_encode_embeds_them(embedder):
    texts = [*mixed_lengths(), QUESTION]
    np.testing.assert_allclose(embed(embedder, texts), encoded(embedder, texts), atol=1e-5)


def test_overlapped_encoding_gives_one_call_s_embeddings_and_hands_over_every_batch(embedder):
    texts = [f"Note {i} is about {'a long story of ' * (i % 5)}topic {i % 13}" for i in range(140)]

    def encode(batch: list[str]) -> np.ndarray:
        return embedder.encode(batch, batch_size=ENCODE_BATCH, normalize_embeddings=True, convert_to_numpy=True)

    seen: list[tuple[list[int], np.ndarray]] = []
    with ThreadPoolExecutor(max_workers=1) as worker:
        batches = length_batches(embedder, texts)
        vectors = encode_overlapped(encode, texts, batches, worker, lambda positions, batch: seen.append((positions, batch)))
    np.testing.assert_allclose(vectors, encode(texts), atol=1e-5)
    assert [positions for positions, _ in seen] == batches
    for positions, batch in seen:
        np.testing.assert_array_equal(batch, vectors[positions])

"""Fixtures for the editors: a tiny random LLaMA (fast mechanics) and the real SmolLM2 (loaded once)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from agentmem.editors import GraceConfig, GraceEditor
from agentmem.editors.grace import CALIBRATION_PROMPTS
from agentmem.models import LanguageModel, load_model

# Repeated so that the BPE merges these words into single tokens: tiny tests use one-token targets.
TINY_WORDS = " Lisbon Oslo blue green"
TINY_CORPUS = CALIBRATION_PROMPTS + (TINY_WORDS * 50, "Alice lives in Lisbon. Bob lives in Oslo. The sky is blue.")


def logits(lm: LanguageModel, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        return lm.model(**lm.tokenizer(prompt, return_tensors="pt")).logits


def answer(lm: LanguageModel, prompt: str, target: str) -> str:
    """Greedy generation of as many tokens as `target` has, stripped."""
    return lm.generate(prompt, max_new_tokens=len(lm.encode_pair(prompt, target)[1])).strip()


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Editor tests run on one torch thread: two threads thrash when other processes share the 2 cores
    (a 30-step edit of the tiny model took 14 s instead of 0.4 s), and the models here are small."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of 400 tokens: any text encodes, as with the real one."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<eos>"]
    )
    tokenizer.train_from_iterator(TINY_CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<eos>")


@pytest.fixture
def tiny_lm(tiny_tokenizer) -> LanguageModel:
    """A randomly initialised 4-layer LLaMA (hidden 64), new for each test since editors change it in place."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tiny_tokenizer.pad_token_id,
    )
    return LanguageModel(LlamaForCausalLM(config), tiny_tokenizer, name="tiny-llama")


@pytest.fixture(scope="session")
def tiny_config(tiny_tokenizer) -> GraceConfig:
    """GRACE on the tiny model's layer 2, its radius calibrated once for the session.

    No logit margin: a random model's logits are too flat to lead by one, a bare argmax will do.
    """
    with one_torch_thread():
        editor = GraceEditor(tiny_lm.__wrapped__(tiny_tokenizer), GraceConfig(layer=2, margin=0.0))
    return editor.config


@pytest.fixture(scope="session")
def smollm() -> LanguageModel:
    """The bundled SmolLM2-135M-Instruct, loaded once per session (tests must remove their editors)."""
    return load_model()


@pytest.fixture(scope="session")
def smollm_grace_config(smollm) -> GraceConfig:
    """GRACE's default config with the radius calibrated once, so each test skips the calibration."""
    with one_torch_thread():
        editor = GraceEditor(smollm)
    editor.remove()
    return editor.config


@pytest.fixture
def smollm_grace(smollm, smollm_grace_config):
    """A GRACE editor on the real model, removed after the test whatever happens."""
    editor = GraceEditor(smollm, smollm_grace_config)
    yield editor
    if not editor._removed:
        editor.remove()

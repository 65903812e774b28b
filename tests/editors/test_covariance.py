"""Key statistics: the second moment of the real keys, from a sampled or given corpus, cached per model and settings."""
from __future__ import annotations

import pytest
import torch

from agentmem.editors.covariance import key_moments
from agentmem.errors import InvalidInputError

from .conftest import TINY_CORPUS


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "home"))


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(TINY_CORPUS))
    return path


def test_the_moment_is_the_mean_of_k_k_transposed_over_the_corpus_tokens(tiny_lm, corpus):
    projection = tiny_lm.model.base_model.layers[1].mlp.down_proj
    moments = key_moments(tiny_lm, {1: projection}, sampled_tokens=0, corpus_path=str(corpus), corpus_tokens=100, window=50)
    ids = tiny_lm.tokenizer(corpus.read_text(), add_special_tokens=False).input_ids[:100]
    keys = []
    hook = projection.register_forward_pre_hook(lambda module, args: keys.append(args[0][0]))
    with torch.no_grad():
        for start in (0, 50):
            tiny_lm.model(input_ids=torch.tensor([ids[start : start + 50]]))
    hook.remove()
    keys = torch.cat(keys).double()
    assert torch.allclose(moments[1].double(), keys.T @ keys / 100, rtol=1e-4, atol=1e-7)


def test_statistics_are_cached_per_settings_and_sampled_text_is_reproducible(tiny_lm, tmp_path):
    projection = {2: tiny_lm.model.base_model.layers[2].mlp.down_proj}
    first = key_moments(tiny_lm, projection, sampled_tokens=64, window=32)
    cached = list((tmp_path / "home" / "statistics").iterdir())
    assert len(cached) == 2  # the sampled windows and the moments
    again = key_moments(tiny_lm, projection, sampled_tokens=64, window=32)
    assert torch.equal(first[2], again[2])
    other_seed = key_moments(tiny_lm, projection, sampled_tokens=64, window=32, seed=1)
    assert not torch.equal(first[2], other_seed[2])
    values = torch.linalg.eigvalsh(first[2].double())
    assert torch.allclose(first[2], first[2].T) and values.min() > -1e-6


def test_no_corpus_is_refused(tiny_lm, tmp_path):
    projection = {1: tiny_lm.model.base_model.layers[1].mlp.down_proj}
    with pytest.raises(InvalidInputError):
        key_moments(tiny_lm, projection, sampled_tokens=0)
    with pytest.raises(InvalidInputError):
        key_moments(tiny_lm, projection, sampled_tokens=0, corpus_path=str(tmp_path / "missing.txt"), corpus_tokens=10)

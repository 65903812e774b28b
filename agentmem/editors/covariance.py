"""Second moments C = E[k kᵀ] of the keys at the edited layers, from a corpus that exists offline.

A key is the input of a block's MLP down-projection at one token. The locate-and-edit editors
keep the projection's output unchanged on the keys the model usually sees, and C summarises
those keys. They are read off a corpus of token windows: text sampled from the local model
itself (its own distribution; no data needed), a UTF-8 text file the user gives, or both.

Sampling the corpus costs minutes on a CPU and C a forward over it, so both are cached under
`AGENTMEM_HOME/statistics/`, keyed by the model (its name and a fingerprint of its embedding
and edited weights, read before any edit) and by the corpus settings.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import InvalidInputError
from ..models import LanguageModel, agentmem_home

SAMPLE_BATCH = 16


def key_moments(
    lm: LanguageModel,
    projections: Mapping[int, nn.Linear],
    sampled_tokens: int,
    corpus_path: str | None = None,
    corpus_tokens: int = 0,
    window: int = 128,
    seed: int = 0,
) -> dict[int, torch.Tensor]:
    """E[k kᵀ] per layer of `projections` (float32, key size squared), over `sampled_tokens` tokens of text sampled
    from the model and the first `corpus_tokens` tokens of `corpus_path`, in windows of `window`.
    Cached per layer: the same model, layer and settings are computed once."""
    if sampled_tokens + (corpus_tokens if corpus_path else 0) <= 0:
        raise InvalidInputError("the key statistics need a corpus: sampled tokens or a corpus file")
    corpus = {
        "model": lm.name, "sampled": sampled_tokens, "corpus": str(Path(corpus_path).resolve()) if corpus_path else None,
        "corpus_tokens": corpus_tokens if corpus_path else 0, "window": window, "seed": seed,
    }
    caches = {}
    for layer, projection in projections.items():
        settings = {**corpus, "layer": layer, "fingerprint": fingerprint(lm, {layer: projection})}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
        caches[layer] = agentmem_home() / "statistics" / f"moments-{digest}.safetensors"
    moments = {layer: load_file(path, device=str(lm.device))["moments"] for layer, path in caches.items() if path.is_file()}
    missing = {layer: projection for layer, projection in projections.items() if layer not in moments}
    if missing:
        windows = cached_samples(lm, sampled_tokens, window, seed)
        if corpus_path:
            windows += file_windows(lm, corpus_path, corpus_tokens, window)
        for layer, moment in accumulate(lm, missing, windows).items():
            moments[layer] = moment
            caches[layer].parent.mkdir(parents=True, exist_ok=True)
            partial = caches[layer].with_name(caches[layer].name + ".partial")
            save_file({"moments": moment.contiguous()}, partial, metadata={"settings": json.dumps({**corpus, "layer": layer})})
            partial.replace(caches[layer])
    return {layer: moments[layer] for layer in projections}


def fingerprint(lm: LanguageModel, projections: Mapping[int, nn.Linear]) -> str:
    """A hash of the embedding and of the edited projections: another checkpoint gets other statistics."""
    tensors = [lm.model.get_input_embeddings().weight] + [projections[i].weight for i in sorted(projections)]
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def cached_samples(lm: LanguageModel, tokens: int, window: int, seed: int) -> list[list[int]]:
    """`sampled_windows`, kept under AGENTMEM_HOME: sampling costs minutes on a CPU, a band change need not redo it."""
    if tokens <= 0:
        return []
    settings = {"model": lm.name, "fingerprint": fingerprint(lm, {}), "tokens": tokens, "window": window, "seed": seed}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
    cache = agentmem_home() / "statistics" / f"samples-{digest}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    windows = sampled_windows(lm, tokens, window, seed)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(cache.name + ".partial")
    partial.write_text(json.dumps(windows))
    partial.replace(cache)
    return windows


def sampled_windows(lm: LanguageModel, tokens: int, window: int, seed: int) -> list[list[int]]:
    """Text the model writes itself, from its start-of-text token, sampled at temperature 1."""
    if tokens <= 0:
        return []
    start = lm.tokenizer.bos_token_id if lm.tokenizer.bos_token_id is not None else lm.tokenizer.eos_token_id
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    windows: list[list[int]] = []
    try:
        while len(windows) * window < tokens:
            rows = min(SAMPLE_BATCH, -(-(tokens - len(windows) * window) // window))
            with torch.no_grad():
                out = lm.model.generate(
                    input_ids=torch.full((rows, 1), start, device=lm.device), attention_mask=torch.ones(rows, 1, dtype=torch.long, device=lm.device),
                    do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=window - 1, min_new_tokens=window - 1,
                    pad_token_id=lm.tokenizer.pad_token_id,
                )
            windows += out.tolist()
    finally:
        torch.random.set_rng_state(generator_state)
    return windows


def file_windows(lm: LanguageModel, path: str, tokens: int, window: int) -> list[list[int]]:
    """The first `tokens` tokens of a UTF-8 text file, cut into windows."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read the corpus {path}: {exc}") from exc
    ids = lm.tokenizer(text[: tokens * 20], add_special_tokens=False).input_ids[:tokens]
    if not ids:
        raise InvalidInputError(f"the corpus {path} holds no text")
    return [ids[i : i + window] for i in range(0, len(ids), window)]


def accumulate(
    lm: LanguageModel, projections: Mapping[int, nn.Linear], windows: Sequence[Sequence[int]]
) -> dict[int, torch.Tensor]:
    """The mean of k kᵀ over every token of every window, per layer (float64 sums, float32 result)."""
    sums: dict[int, torch.Tensor] = {}
    count = 0

    def hook(layer: int):
        def grab(module: torch.nn.Module, args: tuple) -> None:
            keys = args[0].reshape(-1, args[0].shape[-1]).double()
            sums[layer] = sums.get(layer, 0) + keys.T @ keys
        return grab

    handles = [module.register_forward_pre_hook(hook(layer)) for layer, module in projections.items()]
    try:
        with torch.no_grad():
            for window in windows:
                lm.model(input_ids=torch.tensor([list(window)], device=lm.device), use_cache=False, logits_to_keep=1)
                count += len(window)
    finally:
        for handle in handles:
            handle.remove()
    return {layer: (sums[layer] / count).float() for layer in projections}

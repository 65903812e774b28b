"""agentmem: memory for LLM agents that stores, recalls, fades, and consolidates into weights.

Public names load on first use (PEP 562), so `import agentmem.errors` and the `agentmem` command's
`--help` do not pay for torch, transformers and Chroma.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import (
    AgentMemError, InvalidInputError, ModelUnavailableError, NoteNotFoundError, StoreClosedError, StoreCorruptedError,
    StoreUnavailableError,
)

_LAZY = {
    "MemoryConfig": ".config",
    "ConsolidationPolicy": ".consolidation",
    "Memory": ".memory",
    **{name: ".notes" for name in (
        "Answer", "ConsolidationReport", "DecayReport", "Decision", "Enrichment", "Fact", "Hit", "ImportReport",
        "LedgerEntry", "Link", "MemoryItem", "MemoryStats", "Note", "Verification", "Why",
    )},
}

if TYPE_CHECKING:
    from .config import MemoryConfig
    from .consolidation import ConsolidationPolicy
    from .memory import Memory
    from .notes import (
        Answer, ConsolidationReport, DecayReport, Decision, Enrichment, Fact, Hit, ImportReport, LedgerEntry, Link,
        MemoryItem, MemoryStats, Note, Verification, Why,
    )


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'agentmem' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AgentMemError", "Answer", "ConsolidationPolicy", "ConsolidationReport", "DecayReport", "Decision", "Enrichment",
    "Fact", "Hit", "ImportReport", "InvalidInputError", "LedgerEntry", "Link", "Memory", "MemoryConfig", "MemoryItem",
    "MemoryStats", "ModelUnavailableError", "Note", "NoteNotFoundError", "StoreClosedError", "StoreCorruptedError",
    "StoreUnavailableError", "Verification", "Why",
]

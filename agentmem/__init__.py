"""agentmem: memory for LLM agents that stores, recalls, fades, and consolidates into weights."""
from .config import MemoryConfig
from .consolidation import ConsolidationPolicy
from .errors import (
    AgentMemError, InvalidInputError, ModelUnavailableError, NoteNotFoundError, StoreClosedError, StoreUnavailableError,
)
from .memory import Memory
from .notes import (
    Answer, ConsolidationReport, DecayReport, Decision, Enrichment, Fact, Hit, ImportReport, LedgerEntry, Link, MemoryItem,
    MemoryStats, Note, Verification, Why,
)

__all__ = [
    "AgentMemError", "Answer", "ConsolidationPolicy", "ConsolidationReport", "DecayReport", "Decision", "Enrichment",
    "Fact", "Hit", "ImportReport", "InvalidInputError", "LedgerEntry", "Link", "Memory", "MemoryConfig", "MemoryItem",
    "MemoryStats", "ModelUnavailableError", "Note", "NoteNotFoundError", "StoreClosedError", "StoreUnavailableError",
    "Verification", "Why",
]

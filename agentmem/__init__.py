"""agentmem: memory for LLM agents that stores, recalls, fades, and consolidates into weights."""
from .config import MemoryConfig
from .errors import (
    AgentMemError, InvalidInputError, ModelUnavailableError, NoteNotFoundError, StoreClosedError, StoreUnavailableError,
)
from .memory import Memory
from .notes import DecayReport, Enrichment, Fact, Hit, ImportReport, Link, MemoryItem, MemoryStats, Note, Why

__all__ = [
    "AgentMemError", "DecayReport", "Enrichment", "Fact", "Hit", "ImportReport", "InvalidInputError", "Link",
    "Memory", "MemoryConfig", "MemoryItem", "MemoryStats", "ModelUnavailableError", "Note", "NoteNotFoundError",
    "StoreClosedError", "StoreUnavailableError", "Why",
]

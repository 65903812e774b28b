"""Memory wrapped around agents: a chat function with recall, remembering and consolidation."""
from .chat import ChatReply, MemoryChat

__all__ = ["ChatReply", "MemoryChat"]

"""The two stores behind a Memory: the note graph (source of truth) and the vector index."""
from .graph import NoteGraph
from .vectors import VectorIndex

__all__ = ["NoteGraph", "VectorIndex"]

"""Consolidation: moving the facts an agent keeps recalling from its notes into the model's weights."""
from .job import Consolidator, NoteAccess
from .ledger import Ledger
from .parametric import PROBES, ParametricMemory
from .policy import ConsolidationPolicy, decide

__all__ = ["PROBES", "ConsolidationPolicy", "Consolidator", "Ledger", "NoteAccess", "ParametricMemory", "decide"]

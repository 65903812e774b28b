"""Consolidation: moving the facts an agent keeps recalling from its notes into the model's weights."""
from .answering import answer_question
from .job import Consolidator, NoteAccess
from .ledger import Ledger
from .parametric import PROBES, ParametricMemory
from .policy import ConsolidationPolicy, decide, edit_scopes, owner_scope, reader_scopes

__all__ = [
    "PROBES", "ConsolidationPolicy", "Consolidator", "Ledger", "NoteAccess", "ParametricMemory", "answer_question",
    "decide", "edit_scopes", "owner_scope", "reader_scopes",
]

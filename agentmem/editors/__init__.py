"""Lifelong knowledge editors that change a local model's answers without touching its weights."""
from .base import Editor, EditorConfig, EditorLayer, EditRequest, EditResult
from .codebook import CodebookConfig, CodebookEditor
from .grace import GraceConfig, GraceEditor
from .semantic import SemanticConfig, SemanticEditor
from .wise import WiseConfig, WiseEditor

__all__ = [
    "CodebookConfig", "CodebookEditor", "EditRequest", "EditResult", "Editor", "EditorConfig", "EditorLayer",
    "GraceConfig", "GraceEditor", "SemanticConfig", "SemanticEditor", "WiseConfig",
    "WiseEditor",
]

"""Knowledge editors: side memories that leave the weights alone (GRACE, WISE, the semantic codebook)
and the locate-and-edit family that writes facts into MLP weights in closed form (ROME, MEMIT, EMMET, AlphaEdit)."""
from .alphaedit import AlphaEditConfig, AlphaEditEditor
from .base import Editor, EditorConfig, EditorLayer, EditRequest, EditResult
from .codebook import CodebookConfig, CodebookEditor
from .emmet import EmmetConfig, EmmetEditor
from .grace import GraceConfig, GraceEditor
from .inplace import LocateConfig, WeightEditor
from .memit import MemitConfig, MemitEditor
from .rome import RomeConfig, RomeEditor
from .semantic import SemanticConfig, SemanticEditor
from .wise import WiseConfig, WiseEditor

__all__ = [
    "AlphaEditConfig", "AlphaEditEditor", "EmmetConfig", "EmmetEditor", "LocateConfig", "MemitConfig", "MemitEditor",
    "RomeConfig", "RomeEditor", "WeightEditor", "CodebookConfig", "CodebookEditor", "EditRequest", "EditResult", "Editor", "EditorConfig", "EditorLayer",
    "GraceConfig", "GraceEditor", "SemanticConfig", "SemanticEditor", "WiseConfig",
    "WiseEditor",
]

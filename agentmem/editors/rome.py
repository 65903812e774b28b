"""ROME: one fact at a time, a rank-one update of one MLP down-projection (Meng et al., 2022).

The update makes the fact's key k map to Wk + r exactly while changing the projection as
little as possible on the keys the model usually sees (second moment C):

    Δ = r (C⁻¹k)ᵀ / (kᵀ C⁻¹ k)

which is EMMET's closed form for a batch of one, with no ridge: ROME is EMMET with one layer
and batches of one (Gupta et al., 2024), so it is written as that. Each edit is its own batch,
so its rollback subtracts exactly its rank-one term.
"""
from __future__ import annotations

from pydantic import Field

from .emmet import EmmetConfig, EmmetEditor


class RomeConfig(EmmetConfig):
    """One layer (the middle of the batch editors' band; not compared with others), one fact per solve,
    no ridge on the (1 x 1) constraint."""

    layers: tuple[int, ...] = (5,)
    batch_size: int = Field(default=1, ge=1, le=1)
    ridge: float = Field(default=0.0, ge=0)


class RomeEditor(EmmetEditor):
    """ROME (see the module docstring)."""

    kind = "rome"
    config_class = RomeConfig
    config: RomeConfig

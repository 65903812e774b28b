"""EMMET: a batch of facts under equality constraints, in closed form (Gupta et al., 2024).

At each layer of the band, the update Δ minimises ‖Δ C^½‖ (the change on the keys the model
usually sees, their second moment C from `covariance`) subject to (W + Δ)k_i = Wk_i + r_i for
every fact of the batch, r_i its share of the gap at this layer (`inplace`):

    Δ = Rᵀ (K C⁻¹ Kᵀ)⁻¹ K C⁻¹

ROME is this with one fact. A batch whose keys are nearly parallel (facts about one subject, or
large batches) makes K C⁻¹ Kᵀ ill-conditioned, and the exact solution explodes; as the paper does,
a ridge μ is added to it: (K C⁻¹ Kᵀ + μ I)⁻¹, here μ = `ridge` x its mean diagonal, so the
setting does not depend on the key scale.
"""
from __future__ import annotations

import torch
from pydantic import Field

from .inplace import LocateConfig, WeightEditor


class EmmetConfig(LocateConfig):
    """EMMET's band and batch, and the constraint ridge."""

    ridge: float = Field(default=0.1, ge=0)


class EmmetEditor(WeightEditor):
    """Equality-constrained batches spread over the band (see the module docstring)."""

    kind = "emmet"
    config_class = EmmetConfig
    config: EmmetConfig

    def _solve(self, layer: int, keys: torch.Tensor, residuals: torch.Tensor, batch: int) -> torch.Tensor:
        keys = keys.double()
        whitened = torch.linalg.solve(self.moments[layer].double(), keys.T)  # C⁻¹ Kᵀ
        gram = keys @ whitened
        gram = gram + self.config.ridge * gram.diagonal().mean() * torch.eye(len(keys), dtype=gram.dtype, device=gram.device)
        return torch.linalg.solve(gram, whitened.T)

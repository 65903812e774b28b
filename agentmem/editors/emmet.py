"""EMMET: a batch of facts under equality constraints, in closed form (Gupta et al., 2024).

At each layer of the band, the update Δ minimises ‖Δ C^½‖ (the change on the keys the model
usually sees, their second moment C from `covariance`) subject to (W + Δ)k_i = Wk_i + r_i for
every fact of the batch, r_i its share of the gap at this layer (`inplace`):

    Δ = Rᵀ (K C⁻¹ Kᵀ)⁻¹ K C⁻¹

ROME is this with one fact. A batch whose keys are nearly parallel (facts about one subject, or
large batches) makes K C⁻¹ Kᵀ ill-conditioned, and the exact solution explodes; as the paper does,
a ridge μ is added to it: (K C⁻¹ Kᵀ + μ I)⁻¹, here μ = `ridge` x its mean diagonal, so the
setting does not depend on the key scale. C gets a ridge of `covariance_ridge` x its mean
diagonal before inversion, since sampled statistics of a 1,536-wide key can be rank-deficient.
"""
from __future__ import annotations

import torch
from pydantic import Field

from .inplace import LocateConfig, WeightEditor


class EmmetConfig(LocateConfig):
    """EMMET's band and batch, the constraint ridge, and the statistics' ridge."""

    ridge: float = Field(default=0.1, ge=0)
    covariance_ridge: float = Field(default=1e-3, ge=0)


class EmmetEditor(WeightEditor):
    """Equality-constrained batches spread over the band (see the module docstring)."""

    kind = "emmet"
    config_class = EmmetConfig
    config: EmmetConfig

    def _solve(self, layer: int, keys: torch.Tensor, residuals: torch.Tensor, batch: int) -> torch.Tensor:
        keys = keys.double()
        moments = self.moments[layer].double()
        eye = torch.eye(moments.shape[0], dtype=moments.dtype, device=moments.device)
        moments = moments + self.config.covariance_ridge * moments.diagonal().mean() * eye
        whitened = torch.linalg.solve(moments, keys.T)  # C⁻¹ Kᵀ
        gram = keys @ whitened
        gram = gram + self.config.ridge * gram.diagonal().mean() * torch.eye(len(keys), dtype=gram.dtype, device=gram.device)
        return torch.linalg.solve(gram, whitened.T)

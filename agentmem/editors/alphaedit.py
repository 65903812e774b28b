"""AlphaEdit: each batch's update kept off the preserved keys (Fang et al., 2025).

The preserved keys are the ones the model usually sees (second moment C, `covariance`) and the
keys of every earlier batch. P projects onto the eigenvectors of C whose eigenvalues are at most
`null_threshold` x the largest: for any preserved key k₀ in C's span, ΔP k₀ = 0, so what the model
knew stays. The update minimises ‖(W + ΔP)K − (WK + R)‖² + λ‖ΔP‖² + w‖ΔP K_p‖² + μ‖ΔP C^½‖²
(K_p: the earlier batches' keys, so sequential batches do not erode each other; w = `earlier_weight`,
1 in the paper), at each layer:

    ΔP = Rᵀ [(P (w K_pᵀK_p + KᵀK + μC) + λ I)⁻¹ P Kᵀ]ᵀ

λ (`ridge`) keeps the update small (the paper: 10 on LLaMA3-8B). μ (`covariance_weight`) is not in
the paper: where C has a true null space, P C P = 0 and the term vanishes; SmolLM2's C has none.
Each row of the factor lies in P's range, so the update is orthogonal to C's kept eigenvectors.

Why the defaults are not the paper's (measured on SmolLM2, 20k sampled tokens, layers 3-7,
BENCHMARKS.md): its keys have no real null space. The eigenvalues of C fall only from 1 to about
0.002-0.009 of the largest, and 90% of the key energy takes about 1,000 of the 1,536 dimensions.
The paper's threshold (1e-2, there absolute) here means 1% of the largest: 33 (layer 3) to 923
(layer 7) "null" dimensions, which carry little of a subject key's energy but a sizeable share of
unrelated keys'. To land 100 facts through them the update grows to norms of 50-120 per layer and
moves unrelated answers (one batch of 100 ZsRE facts: Rel 0.84 / Gen 0.50 / Loc 0.71; at 0.3%
layers 3-6 have no null space, layer 7 takes a norm-350 update: 0.32 / 0.25 / 0.63). A C term
inside the projection trades Rel for Loc (μ 1000: 0.70 / 0.47 / 0.85). Without the projection
(threshold 1, P = I, MEMIT's objective plus the earlier batches' keys) the same 100 facts score
0.90 / 0.59 / 0.82 at μ 500 and 0.78 / 0.55 / 0.86 at μ 1500: better on every score at equal
locality, so P = I is the default; the paper's form is `null_threshold=0.01, covariance_weight=0, earlier_weight=1`.

For 1,000 facts in sequential batches of 100 (`eval.locate_study`, the same cached target states for
every row, BENCHMARKS.md): μ 500, w 1 (the defaults) scored Rel 0.45 / Gen 0.28 / Loc 0.49; μ 2,000,
w 10 0.49 / 0.34 / 0.65; μ 5,000, w 10 0.41 / 0.33 / 0.75; MEMIT (μ 1,500, no earlier keys) 0.34 /
0.26 / 0.60. A heavier μ makes each batch's update smaller and a heavier w keeps earlier batches'
facts, but on one batch alone μ 500 lands more facts (above), and a consolidation job edits one
batch at a time: the defaults stay until the editing benchmark and the job confirm μ 2,000, w 10
(`covariance_weight=2000, earlier_weight=10` set them).
"""
from __future__ import annotations

import torch
from pydantic import Field

from ..models import LanguageModel
from .inplace import LocateConfig, WeightEditor


class AlphaEditConfig(LocateConfig):
    """AlphaEdit's band and batch, the null-space threshold (relative to C's largest eigenvalue; 1 keeps every
    direction), λ, μ, the weight of C inside the projection, and the weight of the earlier batches' keys K_p."""

    null_threshold: float = Field(default=1.0, gt=0, le=1)
    ridge: float = Field(default=1.0, gt=0)
    covariance_weight: float = Field(default=500.0, ge=0)
    earlier_weight: float = Field(default=1.0, ge=0)


class AlphaEditEditor(WeightEditor):
    """Projected batches spread over the band, earlier batches' keys preserved (see the module docstring)."""

    kind = "alphaedit"
    config_class = AlphaEditConfig
    config: AlphaEditConfig

    def __init__(self, lm: LanguageModel, config: AlphaEditConfig | None = None) -> None:
        super().__init__(lm, config)
        self.projectors = {layer: self.null_projector(layer) for layer in self.config.layers}

    def null_projector(self, layer: int) -> torch.Tensor | None:
        """P = U Uᵀ over the eigenvectors U of C with eigenvalues at most the threshold x the largest (float64);
        None when the threshold keeps every direction (P = I): the solve then skips a product of key size cubed,
        about half of a solve's time on one core (0.22 of 0.45 s at 1,536)."""
        if self.config.null_threshold >= 1:
            return None
        values, vectors = torch.linalg.eigh(self.moments[layer].double())
        null = vectors[:, values <= self.config.null_threshold * values.max()]
        return null @ null.T

    def _solve(self, layer: int, keys: torch.Tensor, residuals: torch.Tensor, batch: int) -> torch.Tensor:
        keys, projector = keys.double(), self.projectors[layer]
        system = self.config.earlier_weight * self.preserved_keys(layer, batch) + keys.T @ keys
        if self.config.covariance_weight:
            system += self.config.covariance_weight * self.moments[layer].double()
        right = keys.T
        if projector is not None:
            system, right = projector @ system, projector @ right
        system += self.config.ridge * torch.eye(system.shape[0], dtype=system.dtype, device=system.device)
        return torch.linalg.solve(system, right).T

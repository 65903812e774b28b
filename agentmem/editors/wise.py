"""WISE: a side copy of one MLP down-projection, and a router that sends each sequence to it or not (Wang et al., 2024).

The wrapped linear module keeps its weights; the side memory is that weight plus a trained
delta. For an input `x` the router's score is how far the side memory's output departs from
the original's, `||x delta^T||`, averaged over the prompt's tokens. A sequence whose score
reaches the memory's threshold (`threshold_ratio` x the lowest score of its edits, measured
after its latest training) gets the side memory's output at every position, prompt and generated tokens alike;
others get the original module's, bit for bit. The decision is taken per batch row at prefill
and kept while decoding through the KV cache.

Training an edit: the LM loss on the target tokens, plus margin terms on the router's score:
unrelated prompts below `irrelevant_ceiling`, the edit's prompt above `edit_floor`, and the
edit at least `gap` above each unrelated prompt. The three are fractions of this model's
activation scale (the median per-token norm of the module's output on the unrelated prompts,
`activation_scale`, measured when the editor is created), not the paper's absolute numbers
for a 7B model. Only the edited block and those above it run while training (its input and
the module's inputs do not depend on the edit and are computed once per edit), and training
stops as soon as the target leads by `margin` logits and the router margins hold. The shard's
earlier edits are replayed with the new one (their LM loss and router margins), since training
the same entries for a second edit measurably pushed the first one's router score under the
shard's threshold (SmolLM2: 78.97 -> 62.72, threshold 63.17), and the job verifies an edit only
right after making it.

Knowledge shards: every `shard_edits` edits a new shard starts, which trains only a random
`mask_ratio` share of the delta's entries. In "merge" mode the closed shards are merged with
TIES (trim each shard to its largest `ties_density` entries, elect each entry's sign by total
mass, average the shards that agree) into one side memory, and the open shard trains on top of
it; in "retrieve" mode each shard is a side memory of its own, trained from the original
weight, and a sequence goes to the shard with the highest score, if that passes the shard's
threshold.

Calibration on SmolLM2-135M (layer 25 of 30): the activation scale measured on the ZsRE train
`loc` questions is 90.6 (the module's weight RMS is 0.20; Adam's step is `learning_rate` x that
RMS, so the same default fits models of other scales). At 10 sequential ZsRE edits, merge mode
with 20 edits per shard forgot (reliability 0.63: each edit trains the entries the previous
ones used), while retrieve mode with 5 edits per shard kept 0.80 with locality 0.99, so retrieve
is the default. Retrieve mode keeps one side delta per shard in memory (3.5 MB each here) and
scores every shard at each prefill.

Defaults: built with no `unrelated=`, the router margins train against the package's default
unrelated prompts (`editors.unrelated`, several hundred). Scopes: the side memory is shared by
every sequence, so WISE takes shared edits only (a scoped `EditRequest` is refused).

Rollback: an edit of the newest shard is rolled back by retraining that shard on its other
edits (from where the shard started; the same result as never having made the edit). Edits of
older shards cannot be taken out alone (their knowledge is mixed into the merged weights):
rollback refuses them and changes nothing; roll back the newer edits first.
"""
from __future__ import annotations

import random
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import InvalidInputError
from ..models import LanguageModel
from .base import Captured, Editor, EditorConfig, EditorLayer, EditRequest, Prepared, leads
from .unrelated import default_unrelated_prompts

# Unrelated prompts whose module inputs are kept for the router's margin terms (a random sample of those given).
UNRELATED_POOL = 128


class WiseConfig(EditorConfig):
    """WISE's shards, router margins (fractions of `activation_scale`; None: measured) and training."""

    mode: Literal["merge", "retrieve"] = "retrieve"
    shard_edits: int = Field(default=5, ge=1)
    mask_ratio: float = Field(default=0.2, gt=0, le=1)
    ties_density: float = Field(default=0.8, gt=0, le=1)
    activation_scale: float | None = Field(default=None, gt=0)
    irrelevant_ceiling: float = Field(default=0.05, ge=0)
    edit_floor: float = Field(default=0.5, gt=0)
    gap: float = Field(default=0.3, ge=0)
    threshold_ratio: float = Field(default=0.8, gt=0, le=1)
    learning_rate: float = Field(default=0.05, gt=0)  # Adam's step, in units of the weight's RMS
    max_steps: int = Field(default=40, ge=1)
    margin: float = Field(default=1.0, ge=0)
    unrelated_batch: int = Field(default=8, ge=1)
    seed: int = 0


@dataclass
class Shard:
    """A block of edits trained into one random subset of the delta's entries."""

    mask: torch.Tensor
    delta: torch.Tensor
    edit_ids: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # each edit's router score after the shard's latest training


@dataclass
class _Example:
    """An edit as training sees it: the prepared prompt and target, where the answer starts, the prompt's module
    inputs (for its router score) and the target tokens."""

    prepared: Prepared
    answer_start: int
    prompt_x: torch.Tensor
    prompt_real: torch.Tensor
    target: torch.Tensor


class WiseLayer(EditorLayer):
    """The wrapped module: its own output, plus a side memory's delta for the rows routed to it."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__(base)
        self.memories: list[torch.Tensor] = []  # deltas to the base weight
        self.thresholds: list[float] = []
        # Each row's memory (or -1), decided at prefill and kept while decoding.
        self.choice: torch.Tensor | None = None
        # Set by the editor while it trains: this delta at every position.
        self.training_delta: torch.Tensor | None = None

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, memories): each memory's departure from the base output, averaged over the real tokens."""
        real = self.real_tokens(*x.shape[:2], x.device)
        return torch.stack([router_score(x, delta, real) for delta in self.memories], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.training_delta is not None:
            return out + F.linear(x, self.training_delta)
        if self.bypass or not self.memories:
            self.choice = None
            return out
        batch = len(x)
        if not (self.continuing and self.choice is not None and len(self.choice) == batch):
            best, memory = self.scores(x.float()).max(dim=1)
            passes = best >= torch.tensor(self.thresholds, device=x.device)[memory]
            self.choice = torch.where(passes, memory, -1)
        for index, delta in enumerate(self.memories):
            rows = (self.choice == index).nonzero()[:, 0]
            if len(rows):
                out = out.index_add(0, rows, F.linear(x[rows], delta.to(x.dtype)))
        return out


def router_score(x: torch.Tensor, delta: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Per row of `x` (batch, length, in): the mean over real tokens of ||x delta^T||."""
    norms = F.linear(x, delta).norm(dim=-1)
    return (norms * real).sum(dim=1) / real.sum(dim=1).clamp(min=1)


def ties_merge(deltas: Sequence[torch.Tensor], density: float) -> torch.Tensor:
    """TIES merging (Yadav et al., 2023): trim each delta to its largest entries, elect signs, average the agreeing."""
    if len(deltas) == 1:
        return deltas[0].clone()
    trimmed = []
    for delta in deltas:
        kept = max(1, int(density * int((delta != 0).sum())))
        cutoff = delta.abs().flatten().kthvalue(delta.numel() - kept + 1).values if kept < delta.numel() else 0.0
        trimmed.append(torch.where(delta.abs() >= cutoff, delta, torch.zeros_like(delta)))
    stacked = torch.stack(trimmed)
    sign = torch.sign(stacked.sum(dim=0))
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    return (stacked * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)


_unrelated_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class WiseEditor(Editor):
    """WISE on one linear module; see the module docstring for the router, shards and what rollback allows."""

    kind = "wise"
    config_class = WiseConfig
    layer: WiseLayer
    config: WiseConfig

    def __init__(self, lm: LanguageModel, config: WiseConfig | None = None, unrelated: Sequence[str] | None = None) -> None:
        super().__init__(lm, config)
        self.unrelated = tuple(unrelated or default_unrelated_prompts())
        if not all(isinstance(p, str) and p.strip() for p in self.unrelated):
            self.remove()
            raise InvalidInputError("unrelated prompts must be non-empty strings")
        self.shards: list[Shard] = []
        self._base_delta = torch.zeros_like(self.layer.base.weight)  # merge mode: TIES of the closed shards
        self._unrelated_inputs, self._unrelated_real = self._pool_inputs()
        if self.config.activation_scale is None:
            with torch.no_grad():
                norms = self.layer.base(self._unrelated_inputs).norm(dim=-1)[self._unrelated_real.bool()]
            self.config = self.config.model_copy(update={"activation_scale": float(norms.median())})

    def covers(self, prompt: str) -> bool:
        if not prompt.strip():
            raise InvalidInputError("covers() needs a non-empty prompt")
        if not self.layer.memories:
            return False
        x = self._prepare(self.lm.tokenizer(prompt).input_ids, 0).inputs[None]
        best, memory = self.layer.scores(x).max(dim=1)
        return bool(best[0] >= self.layer.thresholds[int(memory[0])])

    # -- applying and retracting edits --------------------------------------------------------

    def _make_layer(self, original: nn.Module) -> WiseLayer:
        if not isinstance(original, nn.Linear):
            raise InvalidInputError(f"WISE wraps a linear module, not {type(original).__name__}")
        return WiseLayer(original)

    def _apply(self, request: EditRequest) -> int:
        if not self.shards or len(self.shards[-1].edit_ids) >= self.config.shard_edits:
            self._open_shard()
        shard = self.shards[-1]
        steps, shard.scores = self._train(shard, request)
        shard.edit_ids.append(request.id)
        self._publish()
        return steps

    def _retract(self, edit_id: str) -> None:
        """Retrain the newest shard without the edit; edits of older shards are refused (see the module docstring)."""
        shard = self.shards[-1]
        if edit_id not in shard.edit_ids:
            raise InvalidInputError(
                f"edit {edit_id!r} is merged into an older WISE shard; only edits of the newest shard "
                f"({len(shard.edit_ids)} edits) can be rolled back"
            )
        others = [self._edits[i] for i in shard.edit_ids if i != edit_id]
        shard.delta.zero_()
        shard.edit_ids.clear()
        shard.scores.clear()
        if not others:
            self.shards.pop()
            self._base_delta = self._merged(self.shards[:-1])
        for request in others:
            _, shard.scores = self._train(shard, request)
            shard.edit_ids.append(request.id)
        self._publish()

    def _open_shard(self) -> None:
        """Start a new shard; in merge mode the shards so far are TIES-merged into the base it trains on."""
        if self.config.mode == "merge":
            self._base_delta = self._merged(self.shards)
        weight = self.layer.base.weight
        generator = torch.Generator(device="cpu").manual_seed(self.config.seed + len(self.shards))
        mask = (torch.rand(weight.shape, generator=generator) < self.config.mask_ratio).to(weight.device, weight.dtype)
        self.shards.append(Shard(mask=mask, delta=torch.zeros_like(weight)))

    def _merged(self, shards: Sequence[Shard]) -> torch.Tensor:
        if self.config.mode == "retrieve" or not shards:
            return torch.zeros_like(self.layer.base.weight)
        return ties_merge([s.delta for s in shards], self.config.ties_density)

    def _publish(self) -> None:
        """Hand the live side memories and their thresholds to the wrapper."""
        ratio = self.config.threshold_ratio
        if self.config.mode == "merge":
            scores = [score for shard in self.shards for score in shard.scores]
            self.layer.memories = [self._base_delta + self.shards[-1].delta] if scores else []
            self.layer.thresholds = [ratio * min(scores)] if scores else []
        else:
            live = [s for s in self.shards if s.scores]
            self.layer.memories = [s.delta for s in live]
            self.layer.thresholds = [ratio * min(s.scores) for s in live]
        self.layer.choice = None

    def _train(self, shard: Shard, request: EditRequest) -> tuple[int, list[float]]:
        """Train the shard's masked entries for one edit, replaying the shard's earlier edits (their targets and
        router margins) so that it cannot push them out of the shard's reach; returns the steps taken and every
        edit's final router score, the shard's earlier edits first."""
        examples = [self._example(r) for r in (*(self._edits[i] for i in shard.edit_ids), request)]
        scale = self.config.activation_scale
        ceiling, floor, gap = (scale * self.config.irrelevant_ceiling, scale * self.config.edit_floor, scale * self.config.gap)
        picker = random.Random(hash((self.config.seed, len(self.shards), len(shard.edit_ids))))
        parameter = shard.delta.clone().requires_grad_(True)
        step_size = self.config.learning_rate * float(self.layer.base.weight.pow(2).mean().sqrt())
        optimizer = torch.optim.Adam([parameter], lr=step_size)
        steps = 0
        while True:
            delta = self._base_delta + parameter * shard.mask
            rows = picker.sample(range(len(self._unrelated_inputs)), min(self.config.unrelated_batch, len(self._unrelated_inputs)))
            unrelated = router_score(self._unrelated_inputs[rows], delta, self._unrelated_real[rows])
            router_loss = F.relu(unrelated - ceiling).mean()
            lm_loss, leading, scores = 0.0, True, []
            for example in examples:
                logits = self._delta_logits(example.prepared, delta)[example.answer_start :]
                score = router_score(example.prompt_x, delta, example.prompt_real)[0]
                router_loss = router_loss + F.relu(floor - score) + F.relu(gap - (score - unrelated)).mean()
                lm_loss = lm_loss + F.cross_entropy(logits, example.target)
                leading = leading and bool(leads(logits.detach(), example.target, self.config.margin).all())
                scores.append(float(score.detach()))
            if (leading and float(router_loss.detach()) == 0.0) or steps == self.config.max_steps:
                break
            loss = (lm_loss + router_loss / scale) / len(examples)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
        shard.delta.copy_((parameter * shard.mask).detach())
        return steps, scores

    def _example(self, request: EditRequest) -> _Example:
        """What training needs of an edit: its prompt and target through the cached lower layers."""
        prompt_ids, target_ids = self.lm.encode_pair(request.prompt, request.target)
        prepared = self._prepare(prompt_ids + target_ids[:-1], 0)
        prompt_x = prepared.inputs[None, : len(prompt_ids)]
        return _Example(prepared, len(prompt_ids) - 1, prompt_x, torch.ones(1, len(prompt_ids), device=prompt_x.device),
                        torch.tensor(target_ids, device=prompt_x.device))

    # -- running parts of the model -----------------------------------------------------------

    def _delta_logits(self, prepared: Prepared, delta: torch.Tensor) -> torch.Tensor:
        self.layer.training_delta = delta
        try:
            return self._upper_logits(prepared)
        finally:
            self.layer.training_delta = None

    def _pool_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The module's inputs on (a sample of) the unrelated prompts, padded, and their real-token mask; cached per model."""
        key = (self.layer_index, self.module_name, self.config.seed, self.unrelated)
        cache = _unrelated_cache.setdefault(self.lm.model, {})
        if key not in cache:
            prompts = random.Random(self.config.seed).sample(self.unrelated, min(UNRELATED_POOL, len(self.unrelated)))
            batch = self.lm.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="right").to(self.lm.device)
            captured: dict[str, torch.Tensor] = {}

            def grab(module: nn.Module, args: tuple) -> None:
                captured["x"] = args[0].detach().float()
                raise Captured

            hook = self.layer.register_forward_pre_hook(grab)
            self.layer.bypass = True
            try:
                with torch.no_grad():
                    self.lm.model(**batch)
            except Captured:
                pass
            finally:
                hook.remove()
                self.layer.bypass = False
            cache[key] = (captured["x"], batch["attention_mask"].float())
        return cache[key]

    # -- saving -------------------------------------------------------------------------------

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {"base_delta": self._base_delta}
        for index, shard in enumerate(self.shards):
            tensors[f"shard{index}.mask"] = shard.mask
            tensors[f"shard{index}.delta"] = shard.delta
        extra = {
            "unrelated": list(self.unrelated),
            "shards": [{"edit_ids": s.edit_ids, "scores": s.scores} for s in self.shards],
        }
        return tensors, extra

    def _restore(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        weight = self.layer.base.weight
        if tensors["base_delta"].shape != weight.shape:
            raise InvalidInputError("the side memory's shape differs from the wrapped module's")
        self._base_delta = tensors["base_delta"]
        self.shards = [
            Shard(tensors[f"shard{i}.mask"], tensors[f"shard{i}.delta"], list(s["edit_ids"]), list(s["scores"]))
            for i, s in enumerate(extra["shards"])
        ]
        if tuple(extra["unrelated"]) != self.unrelated:
            self.unrelated = tuple(extra["unrelated"])
            self._unrelated_inputs, self._unrelated_real = self._pool_inputs()
        self._publish()

"""GRACE: a codebook of key -> value replacements at one layer (Hartvigsen et al., 2023).

The wrapped module (by default the MLP down-projection of a late block) keeps its weights.
Each codebook entry holds a key (the module's input at the last prompt token of an edited
prompt), a trained value (what the module outputs instead) and a radius. When a prompt's key
falls inside an entry's ball, the module's output is replaced by that entry's value from the
last prompt token on, including every token generated after it; elsewhere the model is the
base model, bit for bit.

Keying happens once per sequence, at prefill: the wrapper remembers each batch row's decision
and applies it to the tokens decoded through the KV cache, so the key never drifts while
generating, and rows of a batch are decided independently. Padding is read from the attention
mask. A sequence is keyed at its last token, so to score a continuation feed it after the prompt
through the cache (`LanguageModel.target_argmax` does), as generation does.

Radii are absolute distances between keys, so they only mean something against this model's
own key scale: unless `epsilon` is given, it is `epsilon_scale` x the median nearest-neighbour
distance between the keys of `CALIBRATION_PROMPTS`, measured when the editor is created.
Measured on SmolLM2-135M at the default layer (25 of 30): that median is 7.3, so epsilon is
3.6; a ZsRE rephrase lies a median 5.9 from its question's key, while 99% of unrelated ZsRE
`loc` questions lie more than 12.8 from the nearest of 1000 edited questions. Half the median
keeps unrelated prompts out (locality 1.0 at 1000 edits) and lets some rephrases in; doubling
it gained almost no generalization (0.29 -> 0.30 at 100 edits), since close edits split radii.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import InvalidInputError
from ..models import LanguageModel
from .base import Editor, EditorConfig, EditorLayer, EditRequest

# Unrelated one-line questions: the spread of their keys sets the default radius.
CALIBRATION_PROMPTS = (
    "What is the capital of Australia?",
    "Who painted the Mona Lisa?",
    "How many legs does a spider have?",
    "When did the Second World War end?",
    "What language is spoken in Brazil?",
    "Which planet is closest to the Sun?",
    "Who wrote Pride and Prejudice?",
    "What is the boiling point of water?",
    "Which team won the 2010 FIFA World Cup?",
    "What is the chemical symbol for gold?",
    "Who was the first president of the United States?",
    "What is the largest ocean on Earth?",
    "In which country is the city of Kyoto?",
    "What instrument did Miles Davis play?",
    "How long is a marathon?",
    "Which company makes the iPhone?",
    "What is the main ingredient of guacamole?",
    "Who discovered penicillin?",
    "What is the tallest mountain in Africa?",
    "Which river flows through Cairo?",
    "What is the currency of Japan?",
    "Who composed the Four Seasons?",
    "What gas do plants absorb from the air?",
    "Which sport is played at Wimbledon?",
    "What is the square root of 144?",
    "Who directed the film Jaws?",
    "Which element has atomic number 1?",
    "What is the official language of Egypt?",
    "Where was Albert Einstein born?",
    "What genre of music is Metallica known for?",
    "Which animal is the largest mammal?",
    "What year did the Berlin Wall fall?",
)

# Keys closer than this (x the key's norm) are the same prompt: a new target for it supersedes the old.
_SAME_KEY = 1e-3


class GraceConfig(EditorConfig):
    """Where GRACE sits and how it trains; `epsilon=None` calibrates the initial radius to the model.

    Training stops once every target token leads the runner-up by `margin` logits: a bare
    argmax lead can flip under the float noise of another path (a padded batch, the KV cache).
    """

    epsilon: float | None = Field(default=None, gt=0)
    epsilon_scale: float = Field(default=0.5, gt=0)
    learning_rate: float = Field(default=2.0, gt=0)
    max_steps: int = Field(default=100, ge=1)
    margin: float = Field(default=1.0, ge=0)


class Codebook:
    """GRACE's entries: keys, values, radii, the target tokens each value was trained for, and the edit owning each.

    A negative radius switches an entry off (it was superseded). `uids` name entries stably
    while rows come and go.
    """

    def __init__(self, key_size: int, value_size: int, device: torch.device) -> None:
        self.keys = torch.empty(0, key_size, device=device)
        self.values = torch.empty(0, value_size, device=device)
        self.radii = torch.empty(0, device=device)
        self.labels: list[tuple[int, ...]] = []
        self.owners: list[str] = []
        self.uids: list[int] = []

    def __len__(self) -> int:
        return len(self.labels)

    def nearest(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For each key (rows of `keys`), the nearest entry that is on, and its distance (inf if none)."""
        distances = torch.cdist(keys.float(), self.keys).masked_fill(self.radii < 0, float("inf"))
        distances, rows = distances.min(dim=1)
        return rows, distances

    def lookup(self, keys: torch.Tensor) -> torch.Tensor:
        """For each key, the entry whose ball holds it (the nearest one), or -1."""
        rows, distances = self.nearest(keys)
        return torch.where(distances <= self.radii[rows], rows, -1)

    def add(self, key: torch.Tensor, value: torch.Tensor, radius: float, label: tuple[int, ...], owner: str) -> None:
        self.keys = torch.cat([self.keys, key[None].float()])
        self.values = torch.cat([self.values, value[None]])
        self.radii = torch.cat([self.radii, self.radii.new_tensor([radius])])
        self.labels.append(label)
        self.owners.append(owner)
        self.uids.append(max(self.uids, default=-1) + 1)

    def drop(self, row: int) -> None:
        keep = torch.arange(len(self), device=self.keys.device) != row
        self.keys, self.values, self.radii = self.keys[keep], self.values[keep], self.radii[keep]
        del self.labels[row], self.owners[row], self.uids[row]

    def row_of(self, edit_id: str) -> int:
        return self.owners.index(edit_id)


class GraceLayer(EditorLayer):
    """The wrapped module: its own output, replaced by a codebook value where a key hits a ball."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__(base)
        self.codebook = Codebook(base.in_features, base.out_features, base.weight.device)
        # Set by the editor before each forward of the model: is this call a continuation
        # through the KV cache, and where (per row) does the prompt end?
        self.continuing = False
        self.key_index: torch.Tensor | None = None
        # Each row's entry (or -1), decided at prefill and kept while decoding.
        self.rows: torch.Tensor | None = None
        # Set by the editor while it prepares and trains an edit: the base output alone,
        # or one value (being trained) at every position.
        self.bypass = False
        self.override: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        batch, length = x.shape[:2]
        if self.override is not None:
            return self.override.expand_as(out)
        if self.bypass or not len(self.codebook):
            self.rows = None
            return out
        if self.continuing and self.rows is not None and len(self.rows) == batch:
            hit = (self.rows >= 0)[:, None].expand(batch, length)
        else:
            start = self.key_index
            if start is None or len(start) != batch:
                start = torch.full((batch,), length - 1, device=x.device)
            self.rows = self.codebook.lookup(x[torch.arange(batch, device=x.device), start])
            positions = torch.arange(length, device=x.device)
            hit = (positions[None] >= start[:, None]) & (self.rows >= 0)[:, None]
        if not hit.any():
            return out
        values = self.codebook.values[self.rows.clamp(min=0)].to(out.dtype)
        return torch.where(hit[..., None], values[:, None], out)


class _Captured(Exception):
    """Stops a forward once the inputs an edit needs are in hand."""


@dataclass
class _Prepared:
    """What training a value needs, computed once per edit; none of it depends on the edits.

    The prompt but its last token is the prefix: its KV cache (`past`, every layer) is fixed,
    since GRACE replaces outputs only from the last prompt token on. The rest of the sequence
    (last prompt token + target but its last token) is the suffix: `hidden` is the edited
    block's input there, and `key` the wrapped module's input at the suffix's first token.
    """

    hidden: torch.Tensor
    key: torch.Tensor
    past: Any

    def fresh_past(self) -> Any:
        """A copy of the prefix cache for one forward (a forward appends to the cache it is given)."""
        return copy.deepcopy(self.past)


class GraceEditor(Editor):
    """GRACE on one linear module; see the module docstring for how keys, radii and values work."""

    kind = "grace"
    config_class = GraceConfig
    layer: GraceLayer
    config: GraceConfig

    def __init__(self, lm: LanguageModel, config: GraceConfig | None = None) -> None:
        super().__init__(lm, config)
        self._hook = lm.model.base_model.register_forward_pre_hook(self._before_forward, with_kwargs=True)
        # edit id -> (uid, radius before, radius after) of the one other entry the edit resized
        self._resized: dict[str, tuple[int, float, float]] = {}
        if self.config.epsilon is None:
            epsilon = self._calibrated_epsilon()
            self.config = self.config.model_copy(update={"epsilon": epsilon})

    def covers(self, prompt: str) -> bool:
        if not prompt.strip():
            raise InvalidInputError("covers() needs a non-empty prompt")
        if not len(self.layer.codebook):
            return False
        return bool(self.layer.codebook.lookup(self._prompt_key(prompt)[None])[0] >= 0)

    # -- applying and retracting edits --------------------------------------------------------

    def _make_layer(self, original: nn.Module) -> GraceLayer:
        if not isinstance(original, nn.Linear):
            raise InvalidInputError(f"GRACE wraps a linear module, not {type(original).__name__}")
        return GraceLayer(original)

    def _apply(self, request: EditRequest) -> int:
        """Place the edit in the codebook and train its value.

        Each edit gets its own entry, at its own key. If its ball would overlap the nearest
        entry's: when that entry's value already produces the target here, the new entry shares
        the value (GRACE's widening, kept as a ball per key so that later splits and rollbacks
        never cut another edit's key out); the same prompt with another target switches the old
        entry off; otherwise both radii are split to half the distance.
        """
        prompt_ids, target_ids = self.lm.encode_pair(request.prompt, request.target)
        prepared = self._prepare(prompt_ids + target_ids[:-1], len(prompt_ids) - 1)
        key, label, book, radius = prepared.key, tuple(target_ids), self.layer.codebook, self.config.epsilon
        if len(book):
            rows, distances = book.nearest(key[None])
            row, distance = int(rows[0]), float(distances[0])
            if distance <= float(book.radii[row]) + radius:  # the new ball would overlap the nearest one
                if book.labels[row] == label and self._predicts(prepared, book.values[row], target_ids):
                    book.add(key, book.values[row], radius, label, request.id)
                    return 0
                if distance <= _SAME_KEY * float(key.norm()):
                    self._resize(request.id, row, -1.0)
                else:
                    self._resize(request.id, row, min(float(book.radii[row]), distance / 2))
                    radius = min(radius, distance / 2)
        value, steps = self._train(prepared, target_ids)
        book.add(key, value, radius, label, request.id)
        return steps

    def _retract(self, edit_id: str) -> None:
        """Drop the edit's entry, and grow back the ball it split or switched off (as far as later splits allow)."""
        book = self.layer.codebook
        book.drop(book.row_of(edit_id))
        if edit_id in self._resized:
            uid, before, after = self._resized.pop(edit_id)
            if uid in book.uids:
                row = book.uids.index(uid)
                book.radii[row] = before if after < 0 else max(float(book.radii[row]), before)

    def _resize(self, edit_id: str, row: int, radius: float) -> None:
        book = self.layer.codebook
        self._resized[edit_id] = (book.uids[row], float(book.radii[row]), radius)
        book.radii[row] = radius

    def _train(self, prepared: _Prepared, target_ids: list[int]) -> tuple[torch.Tensor, int]:
        """A value that makes the target come out, trained with the LM loss on the target tokens only.

        It starts from the module's own output for the key and stops as soon as every target
        token comes out, by the configured margin.
        """
        target = torch.tensor(target_ids, device=prepared.hidden.device)
        with torch.no_grad():
            value = self.layer.base(prepared.key).clone()
        value.requires_grad_(True)
        optimizer = torch.optim.Adam([value], lr=self.config.learning_rate)
        steps = 0
        while True:
            logits = self._upper_logits(prepared, value)
            if self._leads(logits, target) or steps == self.config.max_steps:
                return value.detach(), steps
            loss = F.cross_entropy(logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1

    def _predicts(self, prepared: _Prepared, value: torch.Tensor, target_ids: list[int]) -> bool:
        with torch.no_grad():
            logits = self._upper_logits(prepared, value)
        return self._leads(logits, torch.tensor(target_ids, device=logits.device))

    def _leads(self, logits: torch.Tensor, target: torch.Tensor) -> bool:
        """Whether each target token's logit beats every other token's by the margin."""
        chosen = logits.gather(1, target[:, None])
        rivals = logits.scatter(1, target[:, None], float("-inf")).max(dim=1, keepdim=True).values
        return bool((chosen - rivals >= self.config.margin).all())

    # -- running parts of the model -----------------------------------------------------------

    def _prepare(self, ids: list[int], prefix: int) -> _Prepared:
        """Run `ids` once, with the codebook off, keeping what training needs (see `_Prepared`).

        The forward of the suffix stops at the wrapped module, where the key is.
        """
        captured: dict[str, torch.Tensor] = {}

        def grab_hidden(module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured["hidden"] = (args[0] if args else kwargs["hidden_states"]).detach()

        def grab_key(module: nn.Module, args: tuple) -> None:
            captured["key"] = args[0][0, 0].detach().float()
            raise _Captured

        device, past = self.lm.device, None
        self.layer.bypass = True
        try:
            with torch.no_grad():
                if prefix:
                    past = self.lm.model(
                        input_ids=torch.tensor([ids[:prefix]], device=device), use_cache=True, logits_to_keep=1
                    ).past_key_values
                hooks = [
                    self.block.register_forward_pre_hook(grab_hidden, with_kwargs=True),
                    self.layer.register_forward_pre_hook(grab_key),
                ]
                try:
                    self.lm.model(
                        input_ids=torch.tensor([ids[prefix:]], device=device),
                        past_key_values=copy.deepcopy(past),
                        use_cache=past is not None,
                    )
                except _Captured:
                    pass
                finally:
                    for hook in hooks:
                        hook.remove()
        finally:
            self.layer.bypass = False
        return _Prepared(captured["hidden"], captured["key"], past)

    def _prompt_key(self, prompt: str) -> torch.Tensor:
        ids = self.lm.tokenizer(prompt).input_ids
        return self._prepare(ids, len(ids) - 1).key

    def _upper_logits(self, prepared: _Prepared, value: torch.Tensor) -> torch.Tensor:
        """Logits of the suffix with `value` replacing the module's output there.

        Runs only the suffix, through the edited block and the blocks above it, from the
        block input and prefix cache saved by `_prepare`.
        """
        base_model = self.lm.model.base_model
        self.layer.override = value
        base_model.layers = self.blocks[self.layer_index :]
        try:
            out = self.lm.model(
                inputs_embeds=prepared.hidden,
                past_key_values=prepared.fresh_past(),
                use_cache=prepared.past is not None,
                logits_to_keep=prepared.hidden.shape[1],
            )
        finally:
            base_model.layers = self.blocks
            self.layer.override = None
        return out.logits[0]

    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Tell the wrapper whether this call continues a cached sequence, and where each row's prompt ends."""
        inputs = kwargs.get("input_ids")
        if inputs is None:
            inputs = args[0] if args else kwargs.get("inputs_embeds")
        past = kwargs.get("past_key_values")
        self.layer.continuing = past is not None and past.get_seq_length() > 0
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[1] == inputs.shape[1]:
            # the last attended position of each row, whichever side the padding is on
            self.layer.key_index = mask.shape[1] - 1 - mask.flip(1).long().argmax(1)
        else:
            self.layer.key_index = None

    def _calibrated_epsilon(self) -> float:
        keys = torch.stack([self._prompt_key(prompt) for prompt in CALIBRATION_PROMPTS])
        distances = torch.cdist(keys, keys).fill_diagonal_(float("inf"))
        median = float(distances.min(dim=1).values.median())
        if not median > 0:
            self.remove()
            raise InvalidInputError("cannot calibrate GRACE's radius on this model: pass GraceConfig(epsilon=...)")
        return self.config.epsilon_scale * median

    # -- saving -------------------------------------------------------------------------------

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        book = self.layer.codebook
        tensors = {"keys": book.keys, "values": book.values, "radii": book.radii}
        extra = {
            "labels": [list(label) for label in book.labels],
            "owners": book.owners,
            "uids": book.uids,
            "resized": self._resized,
        }
        return tensors, extra

    def _restore(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        book = self.layer.codebook
        if tensors["keys"].shape[1:] != book.keys.shape[1:] or tensors["values"].shape[1:] != book.values.shape[1:]:
            raise ValueError("codebook shapes differ from the wrapped module's")
        book.keys, book.values, book.radii = tensors["keys"], tensors["values"], tensors["radii"]
        book.labels = [tuple(label) for label in extra["labels"]]
        book.owners = list(extra["owners"])
        book.uids = list(extra["uids"])
        self._resized = {edit_id: tuple(change) for edit_id, change in extra["resized"].items()}

    def _detach(self) -> None:
        self._hook.remove()

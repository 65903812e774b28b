"""A codebook of key -> value replacements at one module, the mechanism GRACE and its variants share.

The wrapped module (by default the MLP down-projection of a late block) keeps its weights.
Each codebook entry holds a key, a trained value (what the module outputs instead) and a
radius. When a prompt's key falls inside its nearest entry's ball, the module's output is
replaced by that entry's value from the last prompt token on, for as many positions as the
entry's target has tokens: the answer comes out, then the model goes on by itself (a value
kept on past the answer would make it repeat the answer's last token). Elsewhere the model
is the base model, bit for bit.

Keying happens once per sequence, at prefill: the wrapper remembers each batch row's decision
and applies it to the tokens decoded through the KV cache, so the key never drifts while
generating, and rows of a batch are decided independently. Padding is read from the attention
mask. To score a continuation, feed it after the prompt through the cache
(`LanguageModel.target_argmax` does), as generation does. What a key is, and how balls are
placed, is each editor's own.
"""
from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..errors import InvalidInputError
from ..models import LanguageModel
from .base import Editor, EditorConfig, EditorLayer, Prepared, leads

# Keys closer than this (x the key's norm) are the same prompt: a new target for it supersedes the old.
SAME_KEY = 1e-3


class CodebookConfig(EditorConfig):
    """How values are trained: Adam at `learning_rate`, until every target token leads by `margin` logits.

    A bare argmax lead can flip under the float noise of another path (a padded batch, the KV cache).
    """

    learning_rate: float = Field(default=2.0, gt=0)
    max_steps: int = Field(default=100, ge=1)
    margin: float = Field(default=1.0, ge=0)


class Codebook:
    """The entries: keys, values, radii, the target tokens each value was trained for, how many positions the
    value replaces (`spans`), the edit owning each and its scope.

    A negative radius switches an entry off (it was superseded). `uids` name entries stably
    while rows come and go. An entry of a scope (e.g. "user:alice") is seen only by lookups
    under that scope; shared entries (scope None) by every lookup.
    """

    def __init__(self, key_size: int, value_size: int, device: torch.device) -> None:
        self.keys = torch.empty(0, key_size, device=device)
        self.values = torch.empty(0, value_size, device=device)
        self.radii = torch.empty(0, device=device)
        self.labels: list[tuple[int, ...]] = []
        self.spans: list[int] = []  # from the prompt's last token; fewer than the label's tokens when a stop ends it
        self.owners: list[str] = []
        self.uids: list[int] = []
        self.scopes: list[str | None] = []

    def __len__(self) -> int:
        return len(self.labels)

    def visible(self, scopes: frozenset[str]) -> torch.Tensor:
        """Which entries a lookup under `scopes` sees: the shared ones and those of `scopes`."""
        return torch.tensor([s is None or s in scopes for s in self.scopes], dtype=torch.bool, device=self.keys.device)

    def meeting(self, scope: str | None) -> torch.Tensor:
        """Which entries some lookup sees together with an entry of `scope` (those a new entry can collide with)."""
        return torch.tensor([scope is None or s is None or s == scope for s in self.scopes],
                            dtype=torch.bool, device=self.keys.device)

    def nearest(self, keys: torch.Tensor, among: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """For each key (rows of `keys`), the nearest entry that is on (and in `among`: per entry, or per key and
        entry), and its distance (inf if none)."""
        off = self.radii < 0 if among is None else (self.radii < 0) | ~among
        distances = torch.cdist(keys.float(), self.keys).masked_fill(off, float("inf"))
        distances, rows = distances.min(dim=1)
        return rows, distances

    def lookup(self, keys: torch.Tensor, scopes: frozenset[str] = frozenset(),
               allowed: torch.Tensor | None = None, margin: float = 0.0) -> torch.Tensor:
        """For each key, the entry under `scopes` (and `allowed`, per key and entry) whose ball holds it
        (the nearest one), or -1. With `margin`, also -1 unless the nearest entry with another target
        is at least `margin` farther than that one (an ambiguous key is left to the base model)."""
        among = self.visible(scopes)[None].expand(len(keys), -1) if allowed is None else self.visible(scopes)[None] & allowed
        rows, distances = self.nearest(keys, among)
        hits = distances <= self.radii[rows]
        if margin > 0 and len(self):
            labels = {label: i for i, label in enumerate(dict.fromkeys(self.labels))}
            label_ids = torch.tensor([labels[label] for label in self.labels], device=self.keys.device)
            _, rival = self.nearest(keys, among & (label_ids[None] != label_ids[rows][:, None]))
            hits &= rival - distances >= margin
        return torch.where(hits, rows, -1)

    def add(self, key: torch.Tensor, value: torch.Tensor, radius: float, label: tuple[int, ...], owner: str,
            scope: str | None = None, span: int | None = None) -> None:
        """A new entry; its value replaces `span` positions (default: one per label token)."""
        self.keys = torch.cat([self.keys, key[None].float()])
        self.values = torch.cat([self.values, value[None]])
        self.radii = torch.cat([self.radii, self.radii.new_tensor([radius])])
        self.labels.append(label)
        self.spans.append(len(label) if span is None else span)
        self.owners.append(owner)
        self.uids.append(max(self.uids, default=-1) + 1)
        self.scopes.append(scope)

    def drop(self, row: int) -> None:
        keep = torch.arange(len(self), device=self.keys.device) != row
        self.keys, self.values, self.radii = self.keys[keep], self.values[keep], self.radii[keep]
        del self.labels[row], self.spans[row], self.owners[row], self.uids[row], self.scopes[row]

    def same_key(self, row: int) -> list[int]:
        """The other live entries of `row`'s scope at `row`'s key (the same prompt, see `SAME_KEY`), oldest first."""
        near = torch.cdist(self.keys[row][None], self.keys)[0] <= SAME_KEY * float(self.keys[row].norm())
        return [other for other in near.nonzero()[:, 0].tolist()
                if other != row and self.radii[other] >= 0 and self.scopes[other] == self.scopes[row]]

    def rows_of(self, edit_id: str) -> list[int]:
        """The edit's entries (an edit may be reached through several keys)."""
        return [row for row, owner in enumerate(self.owners) if owner == edit_id]


class CodebookLayer(EditorLayer):
    """The wrapped module: its own output, replaced by a codebook value where a key hits a ball."""

    def __init__(self, base: nn.Linear, key_size: int) -> None:
        super().__init__(base)
        self.codebook = Codebook(key_size, base.out_features, base.weight.device)
        # Each row's entry (or -1), decided at prefill and kept while decoding; how many positions
        # the entry replaces (its target's length), and how many the row has been through since its prompt's end.
        self.rows: torch.Tensor | None = None
        self.spans: torch.Tensor | None = None
        self.passed: torch.Tensor | None = None
        # Set by the editor while it trains a value: that value at every position, or at the first `override_span`.
        self.override: torch.Tensor | None = None
        self.override_span: int | None = None
        # Set by the editor before each forward: the scopes whose entries this forward may use.
        self.scopes: frozenset[str] = frozenset()
        # How much nearer a key must be to its entry than to any entry with another target (`Codebook.lookup`).
        self.margin = 0.0

    def keys(self, x: torch.Tensor, ends: torch.Tensor) -> torch.Tensor | None:
        """Each row's key at prefill: the module's input at the row's last prompt token (None: no key)."""
        return x[torch.arange(len(x), device=x.device), ends]

    def allowed(self, batch: int) -> torch.Tensor | None:
        """Which entries each row may reach besides its scopes allowing them (None: all)."""
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        batch, length = x.shape[:2]
        if self.override is not None:
            span = length if self.override_span is None else self.override_span
            return torch.cat([self.override.expand_as(out)[:, :span], out[:, span:]], dim=1)
        if self.bypass or not len(self.codebook):
            self.rows = None
            return out
        positions = torch.arange(length, device=x.device)
        if self.continuing and self.rows is not None and len(self.rows) == batch:
            since_end = self.passed[:, None] + positions[None]
        else:
            ends = self.prompt_ends(batch, length, x.device)
            keys = self.keys(x, ends)
            self.rows = (self.codebook.lookup(keys, self.scopes, self.allowed(batch), self.margin) if keys is not None
                         else torch.full((batch,), -1, device=x.device))
            self.spans = torch.tensor([self.codebook.spans[row] if row >= 0 else 0 for row in self.rows.tolist()],
                                      device=x.device)
            since_end = positions[None] - ends[:, None]
        self.passed = since_end[:, -1] + 1
        hit = (since_end >= 0) & (since_end < self.spans[:, None])
        if not hit.any():
            return out
        values = self.codebook.values[self.rows.clamp(min=0)].to(out.dtype)
        return torch.where(hit[..., None], values[:, None], out)


class CodebookEditor(Editor):
    """An editor whose edits are codebook entries; subclasses say what a key is and where balls go."""

    config_class = CodebookConfig
    scoped = True
    layer: CodebookLayer
    config: CodebookConfig
    layer_class: type[CodebookLayer] = CodebookLayer

    def __init__(self, lm: LanguageModel, config: CodebookConfig | None = None) -> None:
        # edit id -> (uid, radius before, radius after) of each other entry the edit resized or, once the
        # edit that switched an entry off is rolled back, keeps switched off (see `_retract`)
        self._resized: dict[str, list[tuple[int, float, float]]] = {}
        super().__init__(lm, config)

    def covers(self, prompt: str) -> bool:
        """Whether an edit under the model's current scopes (`LanguageModel.scoped`) takes `prompt`."""
        return self.route(prompt) is not None

    def route(self, prompt: str) -> str | None:
        """The id of the edit that takes `prompt` under the model's current scopes (None: the base model answers)."""
        if not prompt.strip():
            raise InvalidInputError("covers() and route() need a non-empty prompt")
        book = self.layer.codebook
        if not len(book):
            return None
        row = int(self._lookup(prompt))
        return book.owners[row] if row >= 0 else None

    def _lookup(self, prompt: str) -> int:
        """The codebook row that takes `prompt` (-1: none), as the forward decides at prefill."""
        return int(self.layer.codebook.lookup(self._prompt_key(prompt)[None], self.lm.scopes, margin=self.layer.margin)[0])

    def _observe(self, input_ids: torch.Tensor | None) -> None:
        self.layer.scopes = self.lm.scopes

    @abstractmethod
    def _prompt_key(self, prompt: str) -> torch.Tensor:
        """The key a prompt is looked up with."""

    def _key_size(self, original: nn.Linear) -> int:
        return original.in_features

    def _make_layer(self, original: nn.Module) -> CodebookLayer:
        if not isinstance(original, nn.Linear):
            raise InvalidInputError(f"{type(self).__name__} wraps a linear module, not {type(original).__name__}")
        return self.layer_class(original, self._key_size(original))

    def _retract(self, edit_id: str) -> None:
        """Drop the edit's entries, and grow back the balls it split or switched off (as far as later splits allow).

        A switched-off entry comes back only if no live entry of its scope sits at its key: one that does is a
        later edit's target for the same prompt (rolling back the middle of three supersedes must not revive the
        oldest over the newest), so its edit takes over the record and revives the entry when it goes in turn.
        Newest entries first, so the nearest older target is the one revived.
        """
        book = self.layer.codebook
        for row in reversed(book.rows_of(edit_id)):
            book.drop(row)
        for uid, before, after in sorted(self._resized.pop(edit_id, []), reverse=True):
            if uid not in book.uids:
                continue
            row = book.uids.index(uid)
            if after >= 0:
                book.radii[row] = max(float(book.radii[row]), before)
            elif successors := book.same_key(row):
                self._resized.setdefault(book.owners[successors[-1]], []).append((uid, before, after))
            else:
                book.radii[row] = before

    def _resize(self, edit_id: str, row: int, radius: float) -> None:
        book = self.layer.codebook
        self._resized.setdefault(edit_id, []).append((book.uids[row], float(book.radii[row]), radius))
        book.radii[row] = radius

    def _train(self, contexts: Sequence[Prepared], target_ids: list[int], span: int | None = None
               ) -> tuple[torch.Tensor, int]:
        """A value that makes the target come out after every context, trained with the LM loss on the target only.

        It starts from the module's own output at the first context's key and stops as soon as
        every target token comes out after every context, by the configured margin. With `span`, the value
        replaces only the first `span` positions; the tokens after them come out through attention to those.
        """
        target = torch.tensor(target_ids, device=contexts[0].hidden.device)
        with torch.no_grad():
            value = self.layer.base(contexts[0].inputs[0]).clone()
        value.requires_grad_(True)
        optimizer = torch.optim.Adam([value], lr=self.config.learning_rate)
        steps = 0
        while True:
            logits = [self._value_logits(prepared, value, span) for prepared in contexts]
            if steps == self.config.max_steps or all(leads(l, target, self.config.margin).all() for l in logits):
                return value.detach(), steps
            loss = sum(F.cross_entropy(l, target) for l in logits) / len(logits)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1

    def _predicts(self, prepared: Prepared, value: torch.Tensor, target_ids: list[int]) -> bool:
        with torch.no_grad():
            logits = self._value_logits(prepared, value)
        return bool(leads(logits, torch.tensor(target_ids, device=logits.device), self.config.margin).all())

    def _value_logits(self, prepared: Prepared, value: torch.Tensor, span: int | None = None) -> torch.Tensor:
        """Logits of the suffix with `value` replacing the module's output there (at its first `span` positions)."""
        self.layer.override, self.layer.override_span = value, span
        try:
            return self._upper_logits(prepared)
        finally:
            self.layer.override = self.layer.override_span = None

    # -- saving -------------------------------------------------------------------------------

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        book = self.layer.codebook
        tensors = {"keys": book.keys, "values": book.values, "radii": book.radii}
        extra = {
            "labels": [list(label) for label in book.labels],
            "spans": book.spans,
            "owners": book.owners,
            "uids": book.uids,
            "scopes": book.scopes,
            "resized": self._resized,
        }
        return tensors, extra

    def _restore(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        book = self.layer.codebook
        if tensors["keys"].shape[1:] != book.keys.shape[1:] or tensors["values"].shape[1:] != book.values.shape[1:]:
            raise InvalidInputError("the codebook's shapes differ from the wrapped module's")
        keys, values, radii = tensors["keys"], tensors["values"], tensors["radii"]
        labels, owners, uids = extra["labels"], extra["owners"], extra["uids"]
        scopes = extra.get("scopes", [None] * len(uids))  # states saved before scopes: all shared
        spans = extra.get("spans", [len(label) for label in labels])  # states saved before spans: one per label token
        if len({len(keys), len(values), len(radii), len(labels), len(spans), len(owners), len(uids), len(scopes)}) > 1:
            raise ValueError("the codebook's entries and their records differ in number")
        book.keys, book.values, book.radii = keys, values, radii
        book.labels = [tuple(label) for label in labels]
        book.spans = list(spans)
        book.owners, book.uids, book.scopes = list(owners), list(uids), list(scopes)
        self._resized = {  # states saved before an edit could hold several records had one [uid, before, after]
            edit_id: [tuple(c) for c in (changes if all(isinstance(c, list) for c in changes) else [changes])]
            for edit_id, changes in extra["resized"].items()
        }

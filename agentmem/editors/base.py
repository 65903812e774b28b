"""The editor protocol: requests in, edits live in the model's forward, adapter state saved on its own.

Shaped like PEFT's tuners: a pydantic config says where the editor sits, a layer
wrapper (`EditorLayer`) replaces one module of the model and holds the editor's
state, and the `Editor` injects the wrapper on construction and takes it out on
`remove()`. The base weights are never modified, so removing the wrapper gives the
untouched model back, and `save()` writes only the editor's own state.
"""
from __future__ import annotations

import copy
import json
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import InvalidInputError, StoreCorruptedError
from ..models import LanguageModel
from ..validation import reasons

CONFIG_FILE = "editor.json"
STATE_FILE = "editor.safetensors"


class _Checked(BaseModel):
    """A pydantic model whose invalid input raises InvalidInputError, the library's own error."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidInputError(reasons(exc.errors())) from exc


class EditRequest(_Checked):
    """One fact to write into the model: after the edit, `prompt` continues with `target`.

    `scope` names whose fact it is (e.g. "user:alice"); generation under a scope fires only that
    scope's edits and the shared ones (`scope=None`). Editors that change shared weights accept
    shared edits only. `subject` (a substring of `prompt`) names what the fact is about: editors
    that locate facts in the weights key on its last token; when absent they derive it.
    `neighbours` are prompts near the fact that are about something else (the same subject with
    another relation, the same relation with another subject): editors that learn an edit's
    reach keep them out of it.
    """

    prompt: str = Field(min_length=1, pattern=r"\S")
    target: str = Field(min_length=1, pattern=r"\S")
    rephrases: tuple[str, ...] = ()
    id: str | None = Field(default=None, min_length=1)
    scope: str | None = Field(default=None, min_length=1)
    subject: str | None = Field(default=None, min_length=1, pattern=r"\S")
    neighbours: tuple[str, ...] = ()


class EditResult(BaseModel):
    """What one edit cost and whether the target now comes out of the live model."""

    edit_id: str
    steps: int
    seconds: float
    success: bool


class EditorConfig(_Checked):
    """Where the editor sits: `module` (a path inside a decoder block) of block `layer`.

    A negative `layer` counts from the top of the stack, so one default fits models of any depth.
    """

    layer: int = -5
    module: str = "mlp.down_proj"


class EditorLayer(nn.Module):
    """The wrapper an editor puts in place of one module; `base` is the original module, unchanged.

    Editors decide once per sequence, at prefill, and keep the decision while tokens are decoded
    through the KV cache (the decision must not drift with the generated text). Before every
    forward of the model the editor tells its wrapper whether the call continues a cached
    sequence and which positions of each row are real tokens.
    """

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.continuing = False
        self.mask: torch.Tensor | None = None  # (batch, length) attention mask of this call, when given
        # Set while the editor prepares an edit: the base module's output alone.
        self.bypass = False

    def prompt_ends(self, batch: int, length: int, device: torch.device) -> torch.Tensor:
        """Each row's last real position in this call, whichever side the padding is on."""
        mask = self.mask
        if mask is None or mask.shape != (batch, length):
            return torch.full((batch,), length - 1, device=device)
        return length - 1 - mask.flip(1).long().argmax(1)

    def real_tokens(self, batch: int, length: int, device: torch.device) -> torch.Tensor:
        """A (batch, length) float mask of the real (not padding) positions of this call."""
        if self.mask is None or self.mask.shape != (batch, length):
            return torch.ones(batch, length, device=device)
        return self.mask.to(device=device, dtype=torch.float32)


class Captured(Exception):
    """Stops a forward once the inputs an edit needs are in hand."""


@dataclass
class Prepared:
    """What training an edit needs, computed once; none of it depends on the edits.

    The first `prefix` tokens are run once into a KV cache (`past`, every layer) that training
    reuses as is; the rest of the sequence (the suffix) is where the edit acts. `hidden` is the
    edited block's input on the suffix and `inputs` the wrapped module's input there.
    """

    hidden: torch.Tensor
    inputs: torch.Tensor
    past: Any

    def fresh_past(self) -> Any:
        """A copy of the prefix cache for one forward (a forward appends to the cache it is given)."""
        return copy.deepcopy(self.past)


class Editor(ABC):
    """Lifelong editing of one `LanguageModel`, in place: `lm.model` and `lm.generate` see the edits.

    Subclasses set `kind` and `config_class`, build their wrapper in `_make_layer`, and implement
    applying, retracting, saving and loading edits. Editors are not thread-safe: one edit or
    forward at a time.
    """

    kind: ClassVar[str]
    config_class: ClassVar[type[EditorConfig]] = EditorConfig
    kinds: ClassVar[dict[str, type[Editor]]] = {}  # every editor class by its `kind`, as its module is imported
    # Whether edits can be kept to a scope; an editor that cannot accepts shared edits (scope None) only.
    scoped: ClassVar[bool] = False
    # Whether edits fire in a chat-templated prompt (keyed on the last user message), not only after the bare prompt.
    chat_routing: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            Editor.kinds[cls.kind] = cls

    def __init__(self, lm: LanguageModel, config: EditorConfig | None = None) -> None:
        config = config or self.config_class()
        if not isinstance(config, self.config_class):
            raise InvalidInputError(f"{type(self).__name__} takes a {self.config_class.__name__}")
        self.lm = lm
        self.blocks = _decoder_blocks(lm)
        self.layer_index = _resolve_layer(config.layer, len(self.blocks))
        self.block = self.blocks[self.layer_index]
        self.module_name = config.module
        parent, attribute = _parent_of(self.block, config.module)
        original = getattr(parent, attribute)
        if isinstance(original, EditorLayer):
            raise InvalidInputError(f"{config.module} of layer {self.layer_index} already carries an editor; remove() it first")
        self._parent, self._attribute = parent, attribute
        self.layer = self._make_layer(original)
        self._edits: dict[str, EditRequest] = {}
        self._removed = False
        self.config = config
        setattr(parent, attribute, self.layer)
        self._hook = lm.model.base_model.register_forward_pre_hook(self._before_forward, with_kwargs=True)

    # -- the protocol -------------------------------------------------------------------------

    def edit(self, requests: Sequence[EditRequest]) -> list[EditResult]:
        """Apply the requests one after another; each is live as soon as it is applied."""
        self._check_live()
        requests = [self._with_id(r) for r in requests]
        if not self.scoped and any(r.scope is not None for r in requests):
            raise InvalidInputError(f"the {self.kind} editor changes what every user sees: it takes shared edits (scope=None) only")
        ids = [r.id for r in requests]
        if len(set(ids)) != len(ids) or any(i in self._edits for i in ids):
            raise InvalidInputError("edit ids must be unique and not already applied")
        results = []
        with self.lm.exclusive():  # no generation in another thread sees an edit half made
            for request in requests:
                start = time.perf_counter()
                steps = self._apply(request)
                self._edits[request.id] = request
                success = self._succeeds(request)
                results.append(EditResult(edit_id=request.id, steps=steps, seconds=time.perf_counter() - start,
                                          success=success))
        return results

    def rollback(self, edit_id: str) -> None:
        """Take one edit back out; the others stay."""
        self._check_live()
        if edit_id not in self._edits:
            raise InvalidInputError(f"no edit with id {edit_id!r}")
        with self.lm.exclusive():
            self._retract(edit_id)
            del self._edits[edit_id]

    def edits(self) -> list[EditRequest]:
        """The live edits, oldest first, with their ids."""
        return list(self._edits.values())

    @abstractmethod
    def covers(self, prompt: str) -> bool:
        """Whether the edits decide what the model says after `prompt` (it falls inside an edit's reach)."""

    def remove(self) -> None:
        """Put the original module back: the model is the untouched base model again."""
        self._check_live()
        setattr(self._parent, self._attribute, self.layer.base)
        self._hook.remove()
        self._removed = True

    def save(self, directory: str | Path) -> None:
        """Write this editor's config, edits and state (not the model) to `directory`."""
        self._check_live()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors, extra = self._state()
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, directory / STATE_FILE)
        meta = {
            "kind": self.kind,
            "model": self.lm.name,
            "config": self.config.model_dump(),
            "edits": [r.model_dump(mode="json") for r in self._edits.values()],
            "state": extra,
        }
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=1))

    @staticmethod
    def saved_kind(directory: str | Path) -> type[Editor] | None:
        """The editor class whose save `directory` holds, from its config file alone; None if that cannot
        be read or names no known kind (loading the save says why)."""
        try:
            name = json.loads((Path(directory) / CONFIG_FILE).read_text())["kind"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return Editor.kinds.get(name) if isinstance(name, str) else None

    @classmethod
    def load(cls, lm: LanguageModel, directory: str | Path) -> Editor:
        """An editor on `lm` with the edits saved in `directory` live again (of the saved kind).

        The saved kind, config and edits are all read before the editor goes into the model, and a state that
        fails to restore takes it out again: a damaged save never leaves the model half edited.
        """
        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file():
            if directory.is_dir() and any(directory.iterdir()):  # a save that lost its config, not a new folder
                raise _damaged(directory, FileNotFoundError(f"no {CONFIG_FILE}"))
            raise InvalidInputError(f"no saved editor in {directory}")
        kind, config, edits, extra = _read_saved(directory)
        if not issubclass(kind, cls):
            raise InvalidInputError(f"{directory} holds a {kind.kind!r} editor, not a {cls.__name__}")
        try:
            tensors = load_file(directory / STATE_FILE, device=str(lm.device))
        except (OSError, SafetensorError) as exc:
            raise _damaged(directory, exc) from exc
        try:
            editor = kind(lm, config)
        except InvalidInputError as exc:  # e.g. a layer this model does not have
            raise _unfit(directory, exc) from exc
        try:
            editor._restore(tensors, extra)
        except Exception as exc:
            editor.remove()
            if isinstance(exc, InvalidInputError):  # the state is whole but was saved on another model
                raise _unfit(directory, exc) from exc
            raise _damaged(directory, exc) from exc
        editor._edits = edits
        return editor

    # -- for subclasses -----------------------------------------------------------------------

    @abstractmethod
    def _make_layer(self, original: nn.Module) -> EditorLayer:
        """The wrapper that will stand in for `original`."""

    @abstractmethod
    def _apply(self, request: EditRequest) -> int:
        """Make `request` live; returns the number of optimisation steps it took."""

    @abstractmethod
    def _retract(self, edit_id: str) -> None:
        """Undo the live edit `edit_id`."""

    @abstractmethod
    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and JSON-able metadata that `_restore` turns back into the same live edits."""

    @abstractmethod
    def _restore(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        """The inverse of `_state`, on a fresh editor: InvalidInputError where the state does not fit this model
        (its shapes); any other error is taken for a damaged state."""

    def _observe(self, input_ids: torch.Tensor | None) -> None:
        """Called before each forward of the model, after the wrapper was told about the call."""

    # -- running parts of the model -----------------------------------------------------------

    def _prepare(self, ids: list[int], prefix: int) -> Prepared:
        """Run `ids` once with the editor off, keeping what training needs (see `Prepared`).

        The forward of the suffix stops at the wrapped module: nothing above it is needed.
        """
        captured: dict[str, torch.Tensor] = {}

        def grab_hidden(module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured["hidden"] = (args[0] if args else kwargs["hidden_states"]).detach()

        def grab_inputs(module: nn.Module, args: tuple) -> None:
            captured["inputs"] = args[0][0].detach().float()
            raise Captured

        device, past = self.lm.device, None
        self.layer.bypass = True
        try:
            with torch.no_grad():
                if prefix:
                    past = self.lm.model(
                        input_ids=torch.tensor([ids[:prefix]], device=device), use_cache=True, logits_to_keep=1
                    ).cache
                hooks = [
                    self.block.register_forward_pre_hook(grab_hidden, with_kwargs=True),
                    self.layer.register_forward_pre_hook(grab_inputs),
                ]
                try:
                    self.lm.model(
                        input_ids=torch.tensor([ids[prefix:]], device=device),
                        cache=copy.deepcopy(past),
                        use_cache=past is not None,
                    )
                except Captured:
                    pass
                finally:
                    for hook in hooks:
                        hook.remove()
        finally:
            self.layer.bypass = False
        return Prepared(captured["hidden"], captured["inputs"], past)

    def _upper_logits(self, prepared: Prepared) -> torch.Tensor:
        """Logits of the suffix, running only the edited block and those above it.

        Starts from the block input and prefix cache saved by `_prepare`; the caller sets its
        wrapper up to act as the edit being trained would.
        """
        base_model = self.lm.model.base_model
        base_model.layers = self.blocks[self.layer_index :]
        try:
            out = self.lm.model(
                inputs_embeds=prepared.hidden,
                cache=prepared.fresh_past(),
                use_cache=prepared.past is not None,
                logits_to_keep=prepared.hidden.shape[1],
            )
        finally:
            base_model.layers = self.blocks
        return out.logits[0]

    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Tell the wrapper whether this call continues a cached sequence, and which positions are real."""
        input_ids = kwargs.get("input_ids")
        if input_ids is None and args:
            input_ids = args[0]
        inputs = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
        # generate passes the KV cache as `cache`; a caller of `lm.model` may still pass the deprecated name
        past = kwargs.get("cache") if kwargs.get("cache") is not None else kwargs.get("past_key_values")
        self.layer.continuing = past is not None and past.get_seq_length() > 0
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[1] == inputs.shape[1]:
            self.layer.mask = mask
        else:
            self.layer.mask = None
        self._observe(input_ids)

    def _succeeds(self, request: EditRequest) -> bool:
        """Whether the live model now predicts every target token (teacher-forced, as generation sees it)."""
        _, target_ids = self.lm.encode_pair(request.prompt, request.target)
        with self.lm.scoped(request.scope):
            return self.lm.target_argmax([(request.prompt, request.target)]) == [target_ids]

    def _with_id(self, request: EditRequest) -> EditRequest:
        if not isinstance(request, EditRequest):
            raise InvalidInputError("edit() takes a list of EditRequest")
        return request if request.id else request.model_copy(update={"id": uuid.uuid4().hex[:12]})

    def _check_live(self) -> None:
        if self._removed:
            raise InvalidInputError("this editor was removed from its model; create a new one")


def _read_saved(directory: Path) -> tuple[type[Editor], EditorConfig, dict[str, EditRequest], dict[str, Any]]:
    """The kind, config, edits (by id) and state metadata saved in `directory`, checked: StoreCorruptedError if
    any is damaged, InvalidInputError for a kind no imported module provides."""
    try:
        meta = json.loads((directory / CONFIG_FILE).read_text())
        name = meta["kind"]
        if not isinstance(name, str):
            raise TypeError(f"the kind is {name!r}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _damaged(directory, exc) from exc
    kind = Editor.kinds.get(name)
    if kind is None:
        raise InvalidInputError(f"{directory} holds a {name!r} editor, which no imported module provides")
    try:  # the requests and the config raise InvalidInputError, a ValueError, on fields a save never writes
        config = kind.config_class(**meta["config"])
        edits = [EditRequest(**record) for record in meta["edits"]]
        if any(e.id is None for e in edits) or len({e.id for e in edits}) != len(edits):
            raise ValueError("every edit needs an id of its own")
        if not isinstance(meta["state"], dict):
            raise TypeError("the state is not a mapping")
    except (ValueError, KeyError, TypeError) as exc:
        raise _damaged(directory, exc) from exc
    return kind, config, {e.id: e for e in edits}, meta["state"]


def _unfit(directory: Path, exc: InvalidInputError) -> InvalidInputError:
    return InvalidInputError(
        f"the editor in {directory} does not fit this model: {exc}; load the model its edits were made on, or move"
        f" it aside to start the editor without these edits"
    )


def _damaged(directory: Path, exc: Exception) -> StoreCorruptedError:
    return StoreCorruptedError(
        f"the editor saved in {directory} is damaged ({type(exc).__name__}: {exc}); restore a backup of it, or "
        f"remove it to start the editor without these edits"
    )


def leads(logits: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """Per position, whether the target token's logit beats every other token's by `margin`.

    A bare argmax lead can flip under the float noise of another path (a padded batch, the KV cache).
    """
    chosen = logits.gather(1, target[:, None])
    rivals = logits.scatter(1, target[:, None], float("-inf")).max(dim=1, keepdim=True).values
    return (chosen - rivals >= margin)[:, 0]


def _decoder_blocks(lm: LanguageModel) -> nn.ModuleList:
    """The stack of decoder blocks of a LLaMA-style model (`model.layers`)."""
    blocks = getattr(lm.model.base_model, "layers", None)
    if not isinstance(blocks, nn.ModuleList):
        raise InvalidInputError(f"{type(lm.model).__name__} has no `layers` stack to edit")
    return blocks


def _resolve_layer(layer: int, depth: int) -> int:
    if not -depth <= layer < depth:
        raise InvalidInputError(f"layer {layer} is outside a stack of {depth} layers")
    return layer % depth


def _parent_of(block: nn.Module, path: str) -> tuple[nn.Module, str]:
    """The module holding `path`'s last component, and that component's name."""
    *parents, attribute = path.split(".")
    try:
        parent = block.get_submodule(".".join(parents)) if parents else block
    except AttributeError as exc:
        raise InvalidInputError(f"no module {path!r} in the decoder block") from exc
    if not isinstance(getattr(parent, attribute, None), nn.Module):
        raise InvalidInputError(f"no module {path!r} in the decoder block")
    return parent, attribute

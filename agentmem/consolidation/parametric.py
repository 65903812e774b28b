"""The parametric half of a memory: the local model, its editor, and the editor's state on disk.

The state lives beside the note store in `editor/`, one numbered folder per save and a
`CURRENT` file naming the live one. A save writes a new folder and then replaces `CURRENT`
(an atomic rename), so a crash mid-save leaves the previous state in force, never half of one.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Collection, Sequence
from pathlib import Path

from ..editors import Editor, EditorConfig, EditRequest, WeightEditor
from ..errors import InvalidInputError, StoreCorruptedError, StoreUnavailableError
from ..files import sync_folder
from ..facts import neighbour_prompts, question_forms
from ..models import LanguageModel
from ..notes import Fact, Verification

CURRENT = "CURRENT"
VERSION = re.compile(r"v\d{6,}")  # a saved state's folder: `save` numbers them
DEFAULT_EDITOR = "grace"

# Unrelated sentence starts whose continuations must not move when a fact is edited in.
PROBES = (
    "The capital of France is",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
    "William Shakespeare wrote the play",
    "The chemical symbol for gold is",
    "A week has seven days, and a year has",
    "The Great Wall is located in",
    "Photosynthesis is the process by which plants",
    "The first person to walk on the Moon was",
    "The currency of Japan is the",
    "Mount Everest is the highest mountain in",
    "The Pacific Ocean is the largest",
    "Python is a programming language that",
    "The heart pumps blood through the",
    "Leonardo da Vinci painted the",
    "The speed of light is about",
)
PROBE_TOKENS = 8


def editor_kind(editor: str | EditorConfig | Editor) -> type[Editor]:
    """The editor class for a kind name ("grace", "wise", ...), a config, or an editor."""
    if isinstance(editor, Editor):
        return type(editor)
    kinds = Editor.kinds
    if isinstance(editor, EditorConfig):
        found = [k for k in kinds.values() if type(editor) is k.config_class]
    elif isinstance(editor, str):
        found = [kinds[editor]] if editor in kinds else []
    else:
        raise InvalidInputError(f"editor must be a kind name, an EditorConfig or an Editor, not {type(editor).__name__}")
    if not found:
        raise InvalidInputError(f"unknown editor {editor!r}; available: {', '.join(sorted(kinds))}")
    return found[0]


def current_version(directory: Path) -> str | None:
    """The saved state's folder named by `CURRENT`; None when nothing was saved yet. A pointer that names no
    saved state is damage, not "never saved": taken for that, the job's clean-up removed the intact states
    beside it. Another process's save may switch the pointer and remove the state it named between the two
    reads here: the pointer is then read again."""
    version = _pointer(directory)
    while version is not None and not (VERSION.fullmatch(version) and (directory / version).is_dir()):
        if (again := _pointer(directory)) == version:
            saved = sorted(p.name for p in directory.iterdir() if p.is_dir() and VERSION.fullmatch(p.name))
            raise StoreCorruptedError(
                f"{directory / CURRENT} names {version[:40]!r}, which is no saved state of the editor; write the name"
                f" of one into it ({', '.join(saved) or 'there is none'}; the highest is the latest), restore the"
                f" folder from a backup, or move it aside to start the editor without its edits (the ledger plans"
                f" them again)"
            )
        version = again
    return version


def _pointer(directory: Path) -> str | None:
    """What `CURRENT` says, if it exists."""
    try:
        return (directory / CURRENT).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise StoreUnavailableError(f"cannot read the editor's state in {directory}: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreCorruptedError(
            f"the editor's state folder {directory} cannot be read ({type(exc).__name__}: {exc}); restore it from a"
            f" backup, or move it aside to start the editor without its edits (the ledger plans them again)"
        ) from exc


def refuse_another_kind(directory: Path, editor: str | EditorConfig | Editor | None) -> None:
    """A store keeps the editor kind its edits were saved with (the edits live in that editor's
    state): asking for another kind is refused, with the ways out. A save this cannot read (damaged,
    or replaced by another process meanwhile) is left to the load, which says why or reads the new one."""
    version = current_version(directory)
    if editor is None or version is None:
        return
    saved, wanted = Editor.saved_kind(directory / version), editor_kind(editor)
    if saved is not None and not issubclass(saved, wanted):  # a subclass is that kind too (ROME is EMMET's)
        raise InvalidInputError(
            f"{directory} holds the edits of a {saved.kind!r} editor, and a store keeps the kind it was first"
            f" consolidated with: open it without editor= (or with editor={saved.kind!r}) to use its edits, or"
            f" use a new store for a {wanted.kind!r} editor"
        )


class ParametricMemory:
    """A language model with an editor whose state is saved in `directory` after every change."""

    def __init__(self, directory: Path, lm: LanguageModel, editor: str | EditorConfig | Editor | None) -> None:
        """`editor=None` reloads whatever kind of editor the saved state holds (GRACE if there is none)."""
        self.directory = directory
        self.lm = lm
        refuse_another_kind(directory, editor)
        self.version = current_version(directory)
        kind = Editor if editor is None and self.version else editor_kind(editor or DEFAULT_EDITOR)
        if isinstance(editor, Editor):
            if self.version is not None:
                raise InvalidInputError(
                    f"{directory} already holds saved edits; pass the editor's kind or config to reload them"
                )
            if editor.lm is not lm:
                raise InvalidInputError("the editor edits another model than the memory's")
            self.editor = editor
        elif self.version is not None:
            self.editor = self._load_current(kind)
        else:
            self.editor = kind(lm, editor) if isinstance(editor, EditorConfig) else kind(lm)
        self._closed = False

    @property
    def kind(self) -> str:
        return self.editor.kind

    def refresh(self) -> bool:
        """Reload the editor if another process saved a newer state; True if it did."""
        if current_version(self.directory) == self.version:
            return False
        self.reload()
        return True

    def reload(self) -> None:
        """Replace the editor in memory by the saved state (a fresh editor if nothing was saved)."""
        kind, config = type(self.editor), self.editor.config
        with self.lm.exclusive():  # no generation in another thread runs on a model between two editors
            self.editor.remove()
            self.version = current_version(self.directory)
            self.editor = self._load_current(kind) if self.version else kind(self.lm, config)

    def _load_current(self, kind: type[Editor]) -> Editor:
        """The saved state `CURRENT` names. Another process's save may replace it (and remove the folder being
        read) during the load: that is read again from the new `CURRENT`, not taken for a damaged state."""
        while True:
            try:
                return kind.load(self.lm, self.directory / self.version)
            except (StoreCorruptedError, InvalidInputError):  # damaged, or gone ("no saved editor")
                newer = current_version(self.directory)
                if newer is None or newer == self.version:
                    raise
                self.version = newer

    def save(self) -> None:
        """Write the editor's state as a new version, switch `CURRENT` to it, drop the older ones."""
        number = int(self.version[1:]) + 1 if self.version else 1
        version = f"v{number:06d}"
        self.editor.save(self.directory / version)
        sync_folder(self.directory / version)
        pointer = self.directory / (CURRENT + ".tmp")
        pointer.write_text(version)
        with open(pointer, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(pointer, self.directory / CURRENT)
        self.version = version
        self.clean()

    def clean(self) -> None:
        """Remove saved states other than the current one (left by earlier saves or crashed jobs)."""
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                if path.is_dir() and path.name != self.version:
                    shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        """Take the editor out of the model: the model is the base model again (the state stays on disk)."""
        if not self._closed:
            self._closed = True
            self.editor.remove()

    def edit_ids(self) -> set[str]:
        return {request.id for request in self.editor.edits()}

    # ---- asking the model ------------------------------------------------------------

    def knows(self, facts: Sequence[Fact]) -> list[bool]:
        """Whether greedy generation already continues each prompt with its target.

        Teacher-forced argmax (batched) equals the greedy path exactly when every target
        token is the argmax given the tokens before it, so one batched pass answers this.
        """
        if not facts:
            return []
        pairs = [(f.prompt, f.target) for f in facts]
        predicted = self.lm.target_argmax(pairs)
        return [p == self.lm.encode_pair(*pair)[1] for p, pair in zip(predicted, pairs)]

    def generates(self, prompt: str, target: str) -> bool:
        """Greedy generation of as many tokens as the target has, compared with it (stripped)."""
        length = len(self.lm.encode_pair(prompt, target)[1])
        return self.lm.generate(prompt, max_new_tokens=length).strip() == target.strip()

    def probe_pairs(self, probes: Sequence[str]) -> list[tuple[str, str]]:
        """Each probe with its current greedy continuation (probes that continue with nothing are dropped)."""
        outputs = self.lm.generate_batch(list(probes), max_new_tokens=PROBE_TOKENS)
        return [(p, o.strip()) for p, o in zip(probes, outputs) if o.strip()]

    def predictions(self, pairs: Sequence[tuple[str, str]]) -> list[list[int]]:
        return self.lm.target_argmax(pairs) if pairs else []

    # ---- editing -----------------------------------------------------------------------

    def edit(self, fact: Fact, edit_id: str, probe_pairs: Sequence[tuple[str, str]],
             probe_before: Sequence[Sequence[int]], scope: str | None = None,
             neighbours: bool = True) -> tuple[Verification, list[list[int]]]:
        """Make the edit live in `scope` and measure it there: the target, the rephrases, the probes.

        The editor gets the fact's question forms as further keys (`facts.question_forms`) and its
        neighbour prompts (`facts.neighbour_prompts`) as what the edit must not reach; with
        `neighbours`, the neighbours' answers join the probes, so an edit that moves them fails.
        `probe_before` is the probes' predictions with the shared edits so far (the job measures them once and
        carries them past each kept edit); a scoped edit's probes are measured again under its scope (the scope's
        earlier edits are part of the baseline). Returns the verification and the probes' predictions after the edit.
        """
        start = time.perf_counter()
        request = edit_request(fact, edit_id, scope, neighbours)
        near = request.neighbours
        with self.lm.scoped(scope):
            own = self.probe_pairs(near) if near else []
            # A shared edit's probes start from the job's baseline, measured once; a scoped one's scope may move them.
            probes_before = list(probe_before) if scope is None else self.predictions(probe_pairs)
            own_before = self.predictions(own)
            [result] = self.editor.edit([request])
            rephrased = [self.generates(r, fact.target) for r in fact.rephrases]
            probes_after, own_after = self.predictions(probe_pairs), self.predictions(own)
            return Verification(
                produces_target=self.generates(fact.prompt, fact.target),
                rephrase_match=sum(rephrased) / len(rephrased) if rephrased else None,
                probe_agreement=agreement([*probes_before, *own_before], [*probes_after, *own_after]),
                neighbour_agreement=agreement(own_before, own_after) if near else None,
                steps=result.steps,
                seconds=time.perf_counter() - start,
            ), probes_after

    @property
    def batch_size(self) -> int:
        """Facts the editor solves at once: its batch for the locate-and-edit family, else 1 (one by one)."""
        return self.editor.config.batch_size if isinstance(self.editor, WeightEditor) else 1

    @property
    def probe_defaults(self) -> tuple[float, float]:
        """The editor family's default (per-edit probe tolerance, job probe budget): the locate-and-edit family's
        (`WeightEditor.probe_tolerance`, `probe_budget`), else (0, 0): a side memory leaves the model bit for bit
        outside its routing, so an edit that moves an unrelated probe is wrong."""
        if isinstance(self.editor, WeightEditor):
            return self.editor.probe_tolerance, self.editor.probe_budget
        return 0.0, 0.0

    def edit_batch(self, facts: Sequence[tuple[Fact, str, str | None]], probe_pairs: Sequence[tuple[str, str]],
                   probe_before: Sequence[Sequence[int]], neighbours: bool = True) -> tuple[list[Verification], list[list[int]]]:
        """Facts (with their edit ids and scopes) into the weights in one solve, each then measured as `edit`
        measures one: its target and rephrases, greedily, and the probes plus its own neighbours' answers (the
        batch's change moves the shared probes of every fact alike). `seconds` is the fact's share of the batch's
        time. The batching editors take shared facts only: a scoped one makes the editor refuse the batch.
        Returns the verifications and the shared probes' predictions after the batch."""
        start = time.perf_counter()
        requests = [edit_request(fact, edit_id, scope, neighbours) for fact, edit_id, scope in facts]
        near = [self.probe_pairs(r.neighbours) if r.neighbours else [] for r in requests]
        all_near = [pair for pairs in near for pair in pairs]
        before = iter(self.predictions(all_near))
        results = self.editor.edit(requests)
        after = iter(self.predictions(all_near))
        probes_now = self.predictions(probe_pairs)
        produces = self.generate_targets([(f.prompt, f.target) for f, _, _ in facts])
        rephrases = iter(self.generate_targets([(r, f.target) for f, _, _ in facts for r in f.rephrases]))
        verifications = []
        for (fact, _, _), result, made, pairs in zip(facts, results, produces, near):
            matches = [next(rephrases) for _ in fact.rephrases]
            own_before, own_after = [next(before) for _ in pairs], [next(after) for _ in pairs]
            verifications.append(Verification(
                produces_target=made,
                rephrase_match=sum(matches) / len(matches) if matches else None,
                probe_agreement=agreement([*probe_before, *own_before], [*probes_now, *own_after]),
                neighbour_agreement=agreement(own_before, own_after) if pairs else None,
                steps=result.steps,
                seconds=0.0,
            ))
        share = (time.perf_counter() - start) / len(facts)
        return [v.model_copy(update={"seconds": share}) for v in verifications], probes_now

    def generate_targets(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """`generates` for many pairs, in batches of prompts whose targets have as many tokens."""
        by_length: dict[int, list[int]] = {}
        for index, (prompt, target) in enumerate(pairs):
            by_length.setdefault(len(self.lm.encode_pair(prompt, target)[1]), []).append(index)
        matches = [False] * len(pairs)
        for length, indices in by_length.items():
            outputs = self.lm.generate_batch([pairs[i][0] for i in indices], max_new_tokens=length)
            for i, output in zip(indices, outputs):
                matches[i] = output.strip() == pairs[i][1].strip()
        return matches

    def rollback(self, edit_ids: Collection[str]) -> None:
        """Take these edits out (unknown ids are ignored).

        An editor that cannot take one back (WISE refuses edits merged into an older shard) is
        rebuilt from scratch with the edits that stay, under their own ids: slower, but what the
        notes no longer say must not stay in the weights.
        """
        try:
            live = [i for i in edit_ids if i in self.edit_ids()]
            if isinstance(self.editor, WeightEditor):
                self.editor.rollback_edits(live)
            else:
                for edit_id in live:
                    self.editor.rollback(edit_id)
        except InvalidInputError:
            keep = [request for request in self.editor.edits() if request.id not in set(edit_ids)]
            kind, config = type(self.editor), self.editor.config
            with self.lm.exclusive():
                self.editor.remove()
                self.editor = kind(self.lm, config)
                self.editor.edit(keep)


def edit_request(fact: Fact, edit_id: str, scope: str | None, neighbours: bool) -> EditRequest:
    """The editor's request for a fact: its question forms as further keys, its neighbour prompts (with
    `neighbours`) as what the edit must not reach."""
    keys = tuple(dict.fromkeys(q for q in (*fact.rephrases, *question_forms(fact)) if q != fact.prompt))
    near = neighbour_prompts(fact) if neighbours else ()
    return EditRequest(prompt=fact.prompt, target=fact.target, rephrases=keys, id=edit_id, scope=scope, neighbours=near)


def agreement(before: Sequence[Sequence[int]], after: Sequence[Sequence[int]]) -> float:
    """The share of token predictions that are the same in `after` as in `before` (1.0 when there are none)."""
    total = sum(len(b) for b in before)
    same = sum(x == y for b, a in zip(before, after) for x, y in zip(b, a))
    return same / total if total else 1.0

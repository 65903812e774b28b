"""The parametric half as the `Memory` facade sees it: loaded on first use, one job at a time, shared by replicas.

The local model and its editor cost seconds to load, so nothing is loaded until a verb needs it.
A job holds the store's job lock (a file lock for a folder store, an advisory lock on
PostgreSQL), and afterwards publishes the editor state through the store's shared folders, so
replicas on other hosts fetch it before their next use (a version check per call).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..editors import Editor, EditorConfig
from ..errors import StoreClosedError, StoreUnavailableError
from ..models import LanguageModel, load_model
from ..notes import Answer, ConsolidationReport, Hit
from .answering import answer_question
from .job import Consolidator, NoteAccess
from .ledger import Ledger
from .parametric import ParametricMemory
from .policy import ConsolidationPolicy

if TYPE_CHECKING:  # psycopg is an optional dependency
    from ..stores.shared_folders import SharedFolders

EDITOR_FOLDER = "editor"

log = logging.getLogger(__name__)


class JobStore(Protocol):
    """What the bridge needs of the note store: its cross-process job lock and, on a database, its shared folders."""

    shared_folders: SharedFolders | None

    def job_lock(self, wait: bool = True) -> AbstractContextManager[bool]: ...


class ParametricBridge:
    """Loads the parametric memory lazily and runs its jobs, answers and retractions under the right locks."""

    def __init__(self, folder: Path, store: JobStore, ledger: Ledger, access: NoteAccess,
                 model: LanguageModel | str | Path | None, editor: str | EditorConfig | Editor | None) -> None:
        self._folder = folder
        self._store = store
        self._ledger = ledger
        self._access = access
        self._model, self._editor_spec = model, editor
        self._lock = threading.RLock()
        self._consolidator: Consolidator | None = None
        self._editor_version: int | None = None  # of the shared editor state this process holds
        self._closed = False
        self._retraction_due = False  # a forget found the lock taken: whoever holds it retracts on leaving

    @contextmanager
    def idle(self) -> Iterator[None]:
        """No job, answer or retraction runs in this process while the block runs (for backups and closing)."""
        with self._turn():
            yield

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """The bridge's lock, for one job, generation or backup; a forget that found it taken left its
        retraction due, and it is done here before the lock goes."""
        with self._lock:
            try:
                yield
            finally:
                if self._retraction_due and self._consolidator is not None and not self._closed:
                    self._retraction_due = False
                    self._retract(self._consolidator, datetime.now(timezone.utc))

    def consolidator(self, at: datetime) -> Consolidator:
        """The parametric memory and its job runner, loaded (and reconciled with the ledger) on first use,
        with the editor state another replica published since, if any."""
        with self._lock:
            if self._closed:
                raise StoreClosedError(f"the parametric memory at {self._folder} is closed")
            self._fetch_editor_state()
            if self._consolidator is None:
                lm = self._model if isinstance(self._model, LanguageModel) else load_model(self._model)
                parametric = ParametricMemory(self._folder / EDITOR_FOLDER, lm, self._editor_spec)
                consolidator = Consolidator(parametric, self._ledger, self._access, self._folder / "consolidation.lock")
                try:
                    consolidator.reconcile(at)
                except BaseException:
                    consolidator.close()
                    raise
                self._consolidator = consolidator
            return self._consolidator

    def run(self, policy: ConsolidationPolicy, at: datetime, dry_run: bool = False,
            only: Collection[str] | None = None, progress: bool = False) -> ConsolidationReport:
        """One consolidation job across every process sharing the store; its result published to replicas."""
        with self._turn(), self._store.job_lock():
            report = self.consolidator(at).run(policy, at, dry_run, only=only, progress=progress)
            if not dry_run:
                self._publish_editor_state()
            return report

    def retract_pending(self, at: datetime) -> None:
        """Roll back the edits of forgotten notes now, if the model is loaded and no job or generation holds
        it. A forget never waits for a job's minutes: otherwise the rows stay `retracting` in the ledger, and
        the job at its end, or the next generation in any replica with the model (`serving`), takes them out."""
        if self._consolidator is None:
            return
        if not self._lock.acquire(blocking=False):
            self._retraction_due = True
            if not self._lock.acquire(blocking=False):  # else the holder let go before it saw the flag
                return
        try:
            self._retraction_due = False
            self._retract(self._consolidator, at)
        finally:
            self._lock.release()

    @contextmanager
    def serving(self, scopes: list[str], at: datetime) -> Iterator[ParametricMemory]:
        """The parametric memory for generating under the reader's `scopes` (only their edits and shared ones
        fire), with no job of this process meanwhile. Edits whose notes were forgotten (by a process without
        the model, or while a job ran) are rolled back first; while a job elsewhere holds the lock that saving
        that needs, they are taken out of the model for this generation only."""
        with self._turn():
            consolidator = self.consolidator(at)
            waiting = consolidator.retracting()
            if waiting:
                self._retract(consolidator, at)
                waiting = consolidator.retracting()
            with consolidator.reading(hide_retracting=waiting), consolidator.parametric.lm.scoped(scopes):
                yield consolidator.parametric

    def _retract(self, consolidator: Consolidator, at: datetime) -> None:
        """`retract_pending` unless a job anywhere holds the lock. A retraction that cannot be saved (a full
        disk) stays `retracting` and is only logged: generation hides the edit meanwhile (`serving`)."""
        try:
            with self._store.job_lock(wait=False) as held:
                if held and consolidator.retract_pending(at, wait=False):
                    self._publish_editor_state()
        except StoreUnavailableError as exc:
            log.warning("edits of forgotten notes wait to be rolled back: %s", exc)

    def answer(self, question: str, scopes: list[str], recall: Callable[[], list[Hit]], max_new_tokens: int,
               at: datetime) -> Answer:
        """Answer under the reader's scopes: only their edits and shared ones can fire."""
        with self.serving(scopes, at) as parametric:
            return answer_question(parametric, question, recall, max_new_tokens)

    def close(self) -> None:
        """Take the editor out of the model (its state stays on disk)."""
        with self._lock:
            self._closed = True
            if self._consolidator is not None:
                self._consolidator.close()

    def _fetch_editor_state(self) -> None:
        """On a store shared through a database, take the editor state a job elsewhere published
        (a folder store's processes share the folder itself)."""
        shared = self._store.shared_folders
        if shared is None:
            return
        version = shared.version(EDITOR_FOLDER)
        if version is not None and version != self._editor_version:
            self._editor_version = shared.fetch(EDITOR_FOLDER, self._folder / EDITOR_FOLDER)
            if self._consolidator is not None:
                self._consolidator.parametric.refresh()

    def _publish_editor_state(self) -> None:
        shared = self._store.shared_folders
        if shared is not None and (self._folder / EDITOR_FOLDER).is_dir():
            self._editor_version = shared.publish(EDITOR_FOLDER, self._folder / EDITOR_FOLDER)

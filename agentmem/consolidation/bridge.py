"""The parametric half as the `Memory` facade sees it: loaded on first use, one job at a time, shared by replicas.

The local model and its editor cost seconds to load, so nothing is loaded until a verb needs it.
A job holds the store's job lock (a file lock for a folder store, an advisory lock on
PostgreSQL), and afterwards publishes the editor state through the store's shared folders, so
replicas on other hosts fetch it before their next use (a version check per call). Whatever
saves the state (a job, a forget's retraction, the reconciling at load) first fetches the
published state under the job lock, and publishes what it saved as the version after that one:
an older copy never replaces a newer one.
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
from ..stores.location import EDITOR_FOLDER
from .answering import answer_question
from .job import Consolidator, NoteAccess
from .ledger import Ledger
from .parametric import ParametricMemory, refuse_another_kind
from .policy import ConsolidationPolicy

if TYPE_CHECKING:  # psycopg is an optional dependency
    from ..stores.shared_folders import SharedFolders

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
        refuse_another_kind(folder / EDITOR_FOLDER, editor)  # at once, not at the first job after the caller's writes
        self._model, self._editor_spec = model, editor
        self._lock = threading.RLock()
        self._consolidator: Consolidator | None = None
        self._editor_version: int | None = None  # the published version this process's saved state was made from
        self._published_as: str | None = None  # the saved state (`ParametricMemory.version`) that version holds
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
            if self._consolidator is None:
                self._consolidator = self._load(at)
            else:
                self._fetch_editor_state(self._consolidator.parametric)
            return self._consolidator

    def _load(self, at: datetime) -> Consolidator:
        """The model with the current editor state, reconciled with the ledger under the job lock: a job
        elsewhere writes the ledger before it publishes, so reconciling meanwhile would undo its rows. While
        a job holds the lock, the state is only loaded; the job (or the next one) reconciles."""
        lm = self._model if isinstance(self._model, LanguageModel) else load_model(self._model)
        with self._store.job_lock(wait=False) as held:
            self._fetch_editor_state(None)
            parametric = ParametricMemory(self._folder / EDITOR_FOLDER, lm, self._editor_spec)
            self._published_as = parametric.version if self._editor_version is not None else None
            consolidator = Consolidator(parametric, self._ledger, self._access, self._folder / "consolidation.lock")
            try:
                if held:
                    # applied edits neither published nor here (their first job stopped before publishing, on a
                    # host since lost) are marked retracted, so the next job applies them again
                    consolidator.reconcile(at)
                    self._publish_editor_state(parametric)  # what reconciling saved, or a state never published
            except BaseException:
                consolidator.close()
                raise
        return consolidator

    def run(self, policy: ConsolidationPolicy, at: datetime, dry_run: bool = False,
            only: Collection[str] | None = None, progress: bool = False) -> ConsolidationReport:
        """One consolidation job across every process sharing the store; its result published to replicas."""
        with self._turn(), self._store.job_lock():
            consolidator = self.consolidator(at)  # the published state, fetched under the lock
            report = consolidator.run(policy, at, dry_run, only=only, progress=progress)
            self._publish_editor_state(consolidator.parametric)
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
        """`retract_pending` unless a job anywhere holds the lock, from the state published last (another
        replica's job may have published since this one fetched). A retraction that cannot be saved (a full
        disk) stays `retracting` and is only logged: generation hides the edit meanwhile (`serving`)."""
        try:
            with self._store.job_lock(wait=False) as held:
                if held:
                    self._fetch_editor_state(consolidator.parametric)
                    consolidator.retract_pending(at, wait=False)
                    self._publish_editor_state(consolidator.parametric)
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

    def _fetch_editor_state(self, parametric: ParametricMemory | None) -> None:
        """On a store shared through a database, take the editor state a job elsewhere published, and
        reload `parametric` (if loaded) from it: by the published version, since replicas name their saved
        states alike (v000002, ...). A folder store's processes share the folder itself."""
        shared = self._store.shared_folders
        if shared is None:
            return
        version = shared.version(EDITOR_FOLDER)
        if version is not None and version != self._editor_version:
            self._editor_version = shared.fetch(EDITOR_FOLDER, self._folder / EDITOR_FOLDER)
            if parametric is not None:
                parametric.reload()
                self._published_as = parametric.version

    def _publish_editor_state(self, parametric: ParametricMemory) -> None:
        """On a store shared through a database, publish the saved state unless it is the published one, as
        the version after the one it was made from (refused if another replica published since). Run under
        the job lock, after `_fetch_editor_state`; a publish that failed is tried again by the next one."""
        shared = self._store.shared_folders
        if shared is None or parametric.version in (None, self._published_as):
            return
        self._editor_version = shared.publish(EDITOR_FOLDER, parametric.directory, self._editor_version)
        self._published_as = parametric.version

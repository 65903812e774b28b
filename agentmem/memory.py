"""The facade agents use: remember, recall, update, forget, decay, and the rest.

A `Memory` owns one folder: `notes.sqlite3` (the note graph, source of truth),
`chroma/` (the vector index, unless a Chroma server is used) and `agentmem.lock`; or a
PostgreSQL database for its notes. Every write, and every read a write depends on, runs in a
section (`agentmem.sections`) that holds a thread lock and the store's lock across processes, so
many threads and several processes can share one store without losing or duplicating notes; a
read of committed rows alone holds this process's thread lock at most. Embedding happens before the locks are
taken, so threads still encode in parallel.

The contract for faults: every argument is checked before anything is written, so a call
that raises has changed nothing; a call that returns is durable (committed to the note
graph; an unreachable index catches up from the outbox). Disk full, a read-only folder and
an unreachable server raise `StoreUnavailableError`; a damaged file `StoreCorruptedError`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from sentence_transformers import SentenceTransformer

from . import transfer, validation as check
from .config import MemoryConfig
from .consolidation import ConsolidationPolicy, Ledger, NoteAccess, answering, reader_scopes
from .consolidation.bridge import ParametricBridge
from .consolidation.parametric import editor_kind
from .encoding import embed
from .editors import Editor, EditorConfig
from .errors import InvalidInputError, StoreUnavailableError
from .facts import FactExtractor, extract_fact
from .models import LanguageModel, load_embedder
from .notes import (
    Answer, ConsolidationReport, DecayReport, Decision, Fact, Hit, ImportReport, LedgerEntry, MemoryItem,
    MemoryStats, Note, STORED,
)
from .stores import VectorIndex
from .stores.filters import NoteFilter
from .stores.graph import LOCK_FILE
from .stores.location import GRAPH_FILE, is_postgres_url, local_folder, open_note_store
from .stores.store import existing, not_found
from .stores.sync import IndexSync, open_index
from .changing import ChangePath, Revision
from .reading import ReadPath
from .meanwhile import Meanwhile
from .sections import Sections
from .writing import Enricher, WritePath

_UNSET: Any = object()


class Memory:
    """Long-term memory for an agent: the facade that checks every argument, delegates to the
    write path (agentmem.writing), the changes to stored notes (agentmem.changing), the read path
    (agentmem.reading) and the stores, and reports.

    Kept in one folder on disk by default.

    >>> with Memory("memdata") as mem:
    ...     mem.remember("Alice moved to Lisbon in 2024", user_id="alice")
    ...     hits = mem.recall("Where does Alice live?", user_id="alice")
    """

    def __init__(
        self,
        path: str | Path,
        *,
        chroma_url: str | None = None,
        collection: str = "agentmem_notes",
        config: MemoryConfig | None = None,
        embedder: SentenceTransformer | str | Path | None = None,
        enricher: Enricher | None = None,
        model: LanguageModel | str | Path | None = None,
        editor: str | EditorConfig | Editor | None = None,
        policy: ConsolidationPolicy | None = None,
        fact_extractor: FactExtractor | None = extract_fact,
    ):
        """`model` and `editor` are the parametric memory, loaded at the first `consolidate`, `plan`
        or `answer` (at once if `model` or an `Editor` is given): the bundled SmolLM2 by default; the
        editor saved with the store (GRACE for a new store) by default, or an editor kind ("grace",
        "wise", ...), its config, or an `Editor` on `model` for a store with no saved edits.
        `policy` is `consolidate`'s default. `fact_extractor` gives notes remembered without a
        fact one (None: only explicit facts).
        """
        check.store_location(path)
        if editor is not None:
            editor_kind(editor)  # an unknown kind is refused now, not at the first consolidation
        if policy is not None and not isinstance(policy, ConsolidationPolicy):
            raise InvalidInputError("policy must be a ConsolidationPolicy")
        if config is not None and not isinstance(config, MemoryConfig):
            raise InvalidInputError("config must be a MemoryConfig, e.g. MemoryConfig(link_threshold=0.4)")
        if embedder is not None and not isinstance(embedder, (SentenceTransformer, str, Path)):
            raise InvalidInputError("embedder must be a SentenceTransformer or the folder of one")
        if fact_extractor is not None and not callable(fact_extractor):
            raise InvalidInputError("fact_extractor must be a callable text -> Fact | None, or None")
        if isinstance(editor, Editor) and model is None:
            model = editor.lm
        self._embedder = embedder if isinstance(embedder, SentenceTransformer) else load_embedder(embedder)
        self.location = path  # where the store is: its folder, or its PostgreSQL URL
        self.path = local_folder(path)  # what stays on this machine (the same folder for a SQLite store)
        made_folder = not self.path.exists()
        self.config = config or MemoryConfig()
        self.policy = policy or ConsolidationPolicy()
        graph_file = None if is_postgres_url(path) else self.path / GRAPH_FILE
        graph_was_there = graph_file is None or graph_file.exists()
        self._graph = open_note_store(path)  # first: a server that cannot be reached leaves no local folder behind
        self._meanwhile: Meanwhile | None = None
        self._parametric: ParametricBridge | None = None
        self._index: VectorIndex | None = None
        self._sections: Sections | None = None
        try:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailableError(f"cannot create the store folder {self.path}: {exc}") from exc
            self._ledger = Ledger(self._graph.connection)
            self._index = open_index(self.path / "chroma", collection, chroma_url, self._graph)
            self._sync = IndexSync(self._graph, self._index)
            self._writer = WritePath(self._graph, self._sync, self.config, enricher, fact_extractor)
            self._reader = ReadPath(self._graph, self._sync, self.config)
            self._changes = ChangePath(self._graph, self._sync, self._writer, self._ledger)
            self._sections = Sections(self._graph, self._index, self._sync, self.path)
            self._meanwhile = Meanwhile(self._sections, self._embedder, self._graph.concurrent_reads)
            with self._sections.exclusive():
                self._check_embedder()
                self._sync.pair()
                self._sync.reconcile(full=True)
            access = NoteAccess(
                locked=self._sections.exclusive,
                notes=lambda: [note for note, _ in self._graph.all_notes()],
                note=self._graph.get,
                retention=self._reader.retention,
                purge_freed=self._graph.purge_freed,
            )
            self._parametric = ParametricBridge(self.path, self._graph, self._ledger, access, model, editor)
            if isinstance(model, LanguageModel):
                self._parametric.consolidator(check.time(None))
        except BaseException:
            if self._meanwhile is not None:
                self._meanwhile.close()
            if self._sections is not None:  # no call ran yet; the stores are released just below
                self._sections.close()
            if self._parametric is not None:
                self._parametric.close()
            if self._index is not None:
                self._index.close()
            self._graph.close()
            if not graph_was_there:  # refused to open: leave the folder as it was found
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{graph_file}{suffix}").unlink(missing_ok=True)
            if made_folder:
                (self.path / LOCK_FILE).unlink(missing_ok=True)  # no other process knew the folder
                with contextlib.suppress(OSError):  # only if nothing else is in it
                    self.path.rmdir()
            raise

    # ---- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Release the stores, and take the editor out of the model (its state stays on disk)."""
        self._sections.wait()
        with self._parametric.idle():
            self._sections.close(self._release)

    def _release(self) -> None:
        self._meanwhile.close()
        self._parametric.close()
        self._index.close()
        self._graph.close()

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_embedder(self) -> None:
        dim = str(self._embed(["dimension probe"]).shape[1])
        stored = self._graph.get_meta("embedding_dim")
        if stored is None:
            with self._graph.transaction():
                self._graph.set_meta("embedding_dim", dim)
        elif stored != dim:
            raise InvalidInputError(f"this store holds {stored}-dimensional embeddings; the embedder gives {dim}")

    # ---- writing -------------------------------------------------------------------

    def remember(
        self,
        text: str,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
        at: datetime | None = None,
        tags: Iterable[str] = (),
        metadata: dict[str, Any] | None = None,
        fact: Fact | None = None,
        deduplicate: bool = True,
    ) -> Note:
        """Store one memory and return its note (an existing one if this is a near-duplicate,
        unless `deduplicate=False`: then a new note whatever is stored, as a key-value store needs)."""
        item = self._item(text, user_id, agent_id, session_id, at, tags, metadata, fact)
        check.flag(deduplicate, "deduplicate")
        note = self._remember([item], deduplicate)[0]
        self._replace_now([note], item.at)
        return note

    def remember_many(
        self,
        items: Iterable[str | MemoryItem | dict[str, Any]],
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
        at: datetime | None = None,
        deduplicate: bool = True,
    ) -> list[Note]:
        """Store many memories with one batched embedding and one transaction.

        Scope and time given here apply to the items that leave them unset. Either every
        item is valid and all are stored, or an error is raised and none is.
        """
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise InvalidInputError("items must be an iterable of texts, MemoryItem or dicts")
        check.flag(deduplicate, "deduplicate")
        prepared = []
        for position, raw in enumerate(items):
            try:
                item = MemoryItem(text=raw) if isinstance(raw, str) else MemoryItem.model_validate(raw)
            except ValidationError as exc:
                raise InvalidInputError(f"item {position}: {check.reasons(exc.errors())}") from None
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(f"item {position}: not a memory item: {exc}") from None
            prepared.append(
                self._item(
                    item.text, item.user_id or user_id, item.agent_id or agent_id, item.session_id or session_id,
                    item.at or at, item.tags, item.metadata, item.fact,
                )
            )
        notes = self._remember(prepared, deduplicate) if prepared else []
        self._replace_now(notes, check.time(at))
        return notes

    def _remember(self, items: list[MemoryItem], deduplicate: bool = True) -> list[Note]:
        """Store the items; an index write the commit left finishes in the background
        (`Sections.write_index_later`)."""
        drafts = [self._writer.draft(item) for item in items]
        embeddings, ahead = self._meanwhile.embed_searching_ahead(drafts, self._writer.search_ahead)
        self._writer.expect(drafts, ahead)
        with self._sections.exclusive():
            notes, index_write = self._writer.store_notes(drafts, embeddings, deduplicate, ahead)
            if index_write is not None:
                self._sections.write_index_later(index_write)
        return notes

    def update(
        self,
        note_id: str,
        *,
        text: str | None = None,
        tags: Iterable[str] | None = None,
        metadata: dict[str, Any] | None = None,
        fact: Fact | None = _UNSET,
        at: datetime | None = None,
    ) -> Note:
        """Change a note; the previous version goes to its history. New text is re-embedded. A change
        to what the note already holds writes nothing.

        New text also brings a new fact from the fact extractor, unless the note's fact was given
        explicitly (it is not what the extractor finds in the old text) or `fact` is passed. A
        changed fact of a consolidated note replaces its edit at the next consolidation (at once
        with `ConsolidationPolicy(replace="immediately")`).
        """
        check.note_id(note_id)
        if text is None and tags is None and metadata is None and fact is _UNSET:
            raise InvalidInputError("nothing to update: give text, tags, metadata or fact")
        when = check.time(at)
        new_text = self._text(text) if text is not None else None
        revision = Revision(  # every argument checked before the text is embedded
            text=new_text,
            tags=check.tags(tags) if tags is not None else None,
            metadata=check.metadata(metadata) if metadata is not None else None,
            fact_given=fact is not _UNSET,
            fact=check.fact(fact) if fact is not _UNSET else None,
            embedding=self._embed([new_text])[0] if new_text is not None else None,
            extracted=self._writer.extract_fact(new_text) if new_text is not None and fact is _UNSET else None,
        )
        with self._sections.exclusive():
            updated = self._changes.update(note_id, revision, when, self.policy)
        if not updated.changed:  # the note already says all this: no history entry, no new time, no job
            return updated.note
        if updated.unshared:
            self._parametric.retract_pending(when)
        self._replace_now([updated.note], when)
        return updated.note

    def forget(self, note_id: str) -> None:
        """Delete a note for good, leaving no trace in the store's files: its row, links, history
        and recall times; the keywords its neighbours absorbed from it and their history entries
        naming it; its full-text tokens; its vector-index entry. A note whose row could not be read
        (set aside in `quarantined`, or not yet) is forgotten too.

        An edit it was consolidated into is retracted: the model gives its pre-edit answer again
        (at once if the parametric memory is loaded and idle; else when the job or generation
        using it ends, or as soon as it loads; until then the ledger keeps the fact). A forget never
        waits for a consolidation job.
        """
        check.note_id(note_id)
        with self._sections.exclusive():
            self._changes.forget(note_id, check.time(None))
        self._parametric.retract_pending(check.time(None))

    def link(self, a: str, b: str, *, weight: float = 1.0, at: datetime | None = None) -> None:
        """Link two notes by hand (both ways)."""
        check.note_id(a)
        check.note_id(b)
        if a == b:
            raise InvalidInputError("a note cannot link to itself")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= 1:
            raise InvalidInputError("weight must be a number in (0, 1]")
        when = check.time(at)
        with self._sections.exclusive():
            self._changes.link(a, b, float(weight), when)

    # ---- reading -------------------------------------------------------------------

    def recall(
        self,
        query: str,
        *,
        k: int = 10,
        user_id: str | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
        at: datetime | None = None,
        filters: dict[str, str | int | float | bool] | None = None,
        include_archived: bool = False,
        reinforce: bool = True,
    ) -> list[Hit]:
        """The k notes that best answer `query`.

        A scope argument left at None does not narrow: `recall(q)` searches every user's notes
        (an operator's view); an agent serving one user passes its `user_id` (a server with a
        user-bound key always does). `filters` keeps notes whose metadata equal the given values.

        Each returned note counts as recalled (rehearsed) unless `reinforce=False`, which
        only looks: for evaluation, browsing, or an agent's own bookkeeping.
        """
        query = self._text(query, "query")
        check.count(k, "k")
        where = self._where(user_id, agent_id, session_id, filters, include_archived)
        when = check.time(at)
        check.flag(reinforce, "reinforce")
        searching = self._meanwhile.search(lambda: self._reader.lexical(query, k, where))
        marking = self._meanwhile.read(self._reader.search_mark, after_index_writes=True) if not where.metadata else None
        query_embedding = self._embed([query])[0]
        if not self._graph.concurrent_reads:
            searching.result()  # the helper searches under this process's lock, which the section takes
        mark = marking() if marking is not None else None
        with self._sections.reading():
            ahead = self._reader.dense_ahead(query_embedding, k, where, mark, searching)
        with self._sections.exclusive():
            hits = self._reader.search(query, query_embedding, k, where, when, searching, ahead)
            if not reinforce:
                return hits
            notes = self._reader.reinforce([hit.note for hit in hits], when)
            return [hit.model_copy(update={"note": note}) for hit, note in zip(hits, notes)]

    def reinforce(self, note_ids: list[str], *, at: datetime | None = None, strict: bool = True) -> list[Note]:
        """Count notes as recalled (rehearsal), as `recall` does with what it returns: for a caller
        that looked with `recall(reinforce=False)` and counts only what it went on to use.

        A note not stored, or made after `at`, refuses the call, and nothing is counted. With
        `strict=False` they are taken as `recall` takes what it found: a note forgotten since is
        left out of the notes returned, and one made after `at` is returned uncounted."""
        if not isinstance(note_ids, (list, tuple)):
            raise InvalidInputError(f"note_ids must be a list of note ids, got {type(note_ids).__name__}")
        ids = list(dict.fromkeys(check.note_id(note_id) for note_id in note_ids))
        when = check.time(at)
        check.flag(strict, "strict")
        if not ids:
            if self._sections.closed:
                raise self._sections.closed_error()
            return []
        with self._section_reading(ids):
            if strict:
                return self._reader.reinforce([self._existing(note_id) for note_id in ids], when, unborn="refuse")
            found = self._graph.get_many(ids)
            return self._reader.reinforce([found[note_id] for note_id in ids if note_id in found], when)

    def _where(self, user_id: Any, agent_id: Any, session_id: Any, filters: Any, include_archived: Any) -> NoteFilter:
        return NoteFilter(
            user_id=check.scope("user_id", user_id),
            agent_id=check.scope("agent_id", agent_id),
            session_id=check.scope("session_id", session_id),
            metadata=check.filters(filters),
            include_archived=check.flag(include_archived, "include_archived"),
        )

    def notes(
        self,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
        filters: dict[str, str | int | float | bool] | None = None,
        include_archived: bool = False,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Note]:
        """The notes of a scope whose metadata equal `filters`, oldest first: a listing, not a
        search (nothing is reinforced). `limit`/`offset` page through them."""
        where = self._where(user_id, agent_id, session_id, filters, include_archived)
        if limit is not None:
            check.count(limit, "limit", high=100_000)
        check.count(offset, "offset", low=0, high=2**62)
        with self._sections.exclusive():
            return self._graph.select(where, limit, offset)

    def known_ids(self, note_ids: list[str]) -> set[str]:
        """Which of these ids name a note the store holds, archived or not: for a caller that kept ids (a
        job's report, a cache) to drop those forgotten since. A read of these ids, which no write waits for;
        a listing of `notes` reads every note whole, in the write section."""
        if not isinstance(note_ids, (list, tuple, set, frozenset)):
            raise InvalidInputError(f"note_ids must be a list of note ids, got {type(note_ids).__name__}")
        ids = {check.note_id(note_id) for note_id in note_ids}
        if not ids:
            return set()
        with self._sections.reading(store_only=True):
            return self._graph.known_ids(ids)

    def get(self, note_id: str) -> Note:
        check.note_id(note_id)
        return self._current(note_id)

    def history(self, note_id: str) -> list[tuple[datetime, str, Note]]:
        """Earlier versions of a note: (when it changed, what changed, the note before)."""
        check.note_id(note_id)
        with self._section_reading([note_id]):
            self._existing(note_id)
            return self._graph.history(note_id)

    def neighbors(self, note_id: str) -> list[Note]:
        """The notes linked to this one, strongest link first."""
        check.note_id(note_id)
        with self._section_reading([note_id]):
            note = self._existing(note_id)
            others = self._graph.get_many(link.note_id for link in note.links)
            return [others[link.note_id] for link in note.links if link.note_id in others]

    def retention(self, note_id: str, at: datetime | None = None) -> float:
        check.note_id(note_id)
        when = check.time(at)
        with self._sections.reading():  # the ACT-R curve reads the note's recall times too
            return self._reader.retention(self._current(note_id), when)

    # ---- forgetting curve ----------------------------------------------------------

    def decay(self, at: datetime | None = None) -> DecayReport:
        """Archive every active note whose retention fell below `config.archive_below`."""
        when = check.time(at)
        with self._sections.exclusive():
            return self._changes.archive_faded(when, self._reader.retention, self.config.archive_below)

    def restore(self, note_id: str, at: datetime | None = None) -> Note:
        """Bring an archived note back; its forgetting clock restarts."""
        check.note_id(note_id)
        when = check.time(at)
        with self._sections.exclusive():
            return self._changes.restore(note_id, when)

    # ---- whole-store operations -----------------------------------------------------

    def stats(self) -> MemoryStats:
        with self._sections.exclusive():
            counts = self._graph.counts()
        return MemoryStats(
            path=str(self.path),
            vector_store=self._index.mode,
            notes=counts["notes"],
            active=counts["notes"] - counts["archived"],
            archived=counts["archived"],
            links=counts["links"],
            pending_sync=counts["pending_sync"],
            users=counts["users"],
            quarantined=counts["quarantined"],
        )

    def quarantined(self) -> list[dict[str, Any]]:
        """Rows that could not be read (from an older release, or edited by hand), moved aside with why."""
        with self._sections.exclusive():
            return self._graph.quarantined()

    def export(self, path: str | Path, *, user_id: str | None = None) -> int:
        """Write every note (or one user's) as one JSON object per line, with its links and the
        keywords it absorbed from linked notes; returns the count.

        An export holds the notes, not the store: their history, recall times and the consolidation
        ledger stay behind (`backup` takes the whole store). The file appears whole or not at all."""
        target = check.outside_store(check.file_path(path), self.path, "export path")
        user_id = check.scope("user_id", user_id)
        with self._sections.exclusive():
            notes = [note for note, _ in self._graph.all_notes() if user_id is None or note.user_id == user_id]
            absorbed = self._graph.absorbed_keywords()
        return transfer.write_notes(notes, absorbed, target)

    def import_(self, path: str | Path) -> ImportReport:
        """Load notes written by `export`, keeping ids, times and links; known ids are skipped.

        Every line is validated before anything is written; texts are re-embedded with
        this memory's embedder.
        """
        notes = transfer.read_notes(check.file_path(path))
        for number, note in enumerate(notes, 1):
            self._item(note.text, note.user_id, note.agent_id, note.session_id, note.created_at,
                       note.tags, note.metadata, note.fact, stored=True)
            try:
                check.enrichment(note.keywords, note.context, self.config.max_keywords, self.config.max_text_chars)
            except InvalidInputError as exc:
                raise InvalidInputError(f"{path}: note {number}: {exc}") from None
        # the texts the store does not hold are embedded before the write section, which other callers wait for
        with self._sections.reading(store_only=True):
            known = self._graph.all_ids()  # ids only, and no bound on how many a query may name
        texts = {note.id: note.text for note in notes if note.id not in known}
        embedded = dict(zip(texts, self._embed(list(texts.values())))) if texts else {}
        with self._sections.exclusive():
            new = transfer.store_new(notes, self._graph, self._sync, embedded, self._embed,
                                     lambda s: self._writer.remixed(s, {}))
        return ImportReport(imported=len(new), skipped=len(notes) - len(new))

    # ---- integrity: the index rebuilt from the graph, backups ----------------------------

    def rebuild_index(self) -> int:
        """Refill the vector index from the note graph (which holds every embedding); returns the count."""
        with self._sections.exclusive():
            return self._sync.rebuild()

    def backup(self, target: str | Path) -> Path:
        """Copy the store into the folder `target` while it is in use: the note graph through
        SQLite's online backup API, and the saved editor state (on PostgreSQL, the one its replicas
        publish). The vector index is not copied: `restore_backup` rebuilds it from the graph. A
        backup that fails leaves nothing in `target`."""
        with transfer.new_backup(target) as folder, self._parametric.idle(), self._sections.exclusive():
            self._graph.backup(folder / GRAPH_FILE)
            transfer.copy_editor_state(self.path, folder, self._graph.shared_folders)
        return folder

    @classmethod
    def restore_backup(cls, source: str | Path, path: str | Path, **options: Any) -> Memory:
        """Open a new store at `path` from a backup folder; the vector index is rebuilt.

        `path` must not hold a note graph yet (move a damaged store aside first). `options` go
        to `Memory(...)` (e.g. `chroma_url`, `embedder`); on a Chroma server the collection's
        contents are replaced by the backup's notes.
        """
        if is_postgres_url(path):
            raise InvalidInputError("a backup is restored into a folder: restore it there, then `migrate` the folder"
                                    " into PostgreSQL (agentmem migrate --from FOLDER --to URL)")
        source, path = Path(check.store_location(source)), local_folder(check.store_location(path))
        transfer.unpack_backup(source, path)
        try:
            transfer.prepare_index(path, options.get("collection", "agentmem_notes"), options.get("chroma_url"))
            return cls(path, **options)
        except BaseException:  # a damaged backup: leave `path` free for a restore from another one
            transfer.remove_restored(path)
            raise

    # ---- consolidation: what keeps being recalled moves into the weights ---------------

    @property
    def language_model(self) -> LanguageModel:
        """The local model, with this memory's edits live in it (loaded on first use)."""
        return self._loaded_parametric().consolidator(check.time(None)).parametric.lm

    @contextmanager
    def generating(self, *, user_id: str | None = None, agent_id: str | None = None) -> Iterator[LanguageModel]:
        """The local model, for generating as this user and agent: only their edits and shared ones fire
        (another user's consolidated facts stay silent), and no consolidation job of this memory runs
        meanwhile. `MemoryChat`'s local model and `answer` generate this way.

        >>> with mem.generating(user_id="alice") as lm:
        ...     lm.reply([{"role": "user", "content": "Where does Alice live?"}])
        """
        scopes = reader_scopes(check.scope("user_id", user_id), check.scope("agent_id", agent_id))
        with self._loaded_parametric().serving(scopes, check.time(None)) as parametric:
            yield parametric.lm

    @property
    def editor(self) -> Editor:
        """The editor holding this memory's edits, in `language_model` (loaded on first use)."""
        return self._loaded_parametric().consolidator(check.time(None)).parametric.editor

    def plan(self, policy: ConsolidationPolicy | dict[str, Any] | None = None, *, at: datetime | None = None) -> list[Decision]:
        """What `consolidate` would do now and why, note by note; changes nothing."""
        return self.consolidate(policy, dry_run=True, at=at).decisions

    def consolidate(
        self,
        policy: ConsolidationPolicy | dict[str, Any] | None = None,
        *,
        dry_run: bool = False,
        at: datetime | None = None,
        progress: bool = False,
    ) -> ConsolidationReport:
        """Edit the facts the policy picks into the model, verified, and record them in the ledger.

        Edits that do not produce their target or that move the probe prompts are rolled back.
        The editor's state is saved beside the store after every change, so a killed job leaves
        a consistent state and a rerun finishes the work without duplicate edits.
        """
        policy = self._policy(policy)
        when = check.time(at)
        check.flag(dry_run, "dry_run")
        check.flag(progress, "progress")
        return self._loaded_parametric().run(policy, when, dry_run, progress=progress)

    def ledger(self, note_id: str | None = None) -> list[LedgerEntry]:
        """The consolidation ledger (of one note, if given): which note became which edit, and how it verified."""
        if note_id is not None:
            check.note_id(note_id)
        with self._sections.exclusive():
            return self._ledger.entries(note_id)

    def answer(
        self,
        question: str,
        *,
        k: int = 5,
        user_id: str | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
        at: datetime | None = None,
        retrieval: bool = True,
        max_new_tokens: int = 32,
    ) -> Answer:
        """Answer from the weights when the edits cover the question, else from recalled notes as context
        (those at least `answer_min_similarity` similar to it, the only ones counted as recalled), else from
        the model alone.

        `retrieval=False` never reads the notes: what the model alone (with its edits) says.
        """
        question = self._text(question, "question")
        check.count(k, "k")
        check.count(max_new_tokens, "max_new_tokens", high=4096)
        check.flag(retrieval, "retrieval")
        scopes = reader_scopes(check.scope("user_id", user_id), check.scope("agent_id", agent_id))

        def recall() -> list[Hit]:
            if not retrieval:
                return []
            when = check.time(at)
            hits = self.recall(question, k=k, user_id=user_id, agent_id=agent_id, session_id=session_id, at=when,
                               reinforce=False)
            related = answering.fitting([h for h in hits if h.why.similarity >= self.config.answer_min_similarity])
            counted = {note.id: note for note in self.reinforce([hit.note.id for hit in related], at=when, strict=False)}
            return [hit.model_copy(update={"note": counted.get(hit.note.id, hit.note)}) for hit in related]

        return self._loaded_parametric().answer(question, scopes, recall, max_new_tokens, check.time(None))

    def _loaded_parametric(self) -> ParametricBridge:
        if self._sections.closed:
            raise self._sections.closed_error()
        return self._parametric

    def _replace_now(self, notes: list[Note], at: datetime) -> None:
        """With `replace="immediately"`, notes that change a consolidated fact are consolidated at once."""
        if self.policy.replace != "immediately" or not notes:
            return
        with self._sections.exclusive():
            due = {note.id for note in notes if self._ledger.holds(note.id, note.fact)}
        if due:
            self._loaded_parametric().run(self.policy, at, only=due)

    def _policy(self, policy: Any) -> ConsolidationPolicy:
        if policy is None or isinstance(policy, ConsolidationPolicy):
            return policy or self.policy
        if not isinstance(policy, dict):
            raise InvalidInputError(f"policy must be a ConsolidationPolicy or a dict, not {type(policy).__name__}")
        try:
            return self.policy.model_copy(update=ConsolidationPolicy.model_validate(policy).model_dump(exclude_unset=True))
        except ValidationError as exc:
            raise InvalidInputError(f"bad consolidation policy: {check.reasons(exc.errors())}") from None

    # ---- building notes --------------------------------------------------------------

    def _embed(self, texts: list[str]) -> np.ndarray:
        return embed(self._embedder, texts)

    # ---- validation: every check runs before anything is written ----------------------

    def _item(self, text, user_id, agent_id, session_id, at, tags, metadata, fact, stored=False) -> MemoryItem:
        """`stored`: an export's note, whose metadata may nest as deep as a store holds it."""
        return MemoryItem.model_validate(dict(
            text=self._text(text),
            user_id=check.scope("user_id", user_id),
            agent_id=check.scope("agent_id", agent_id),
            session_id=check.scope("session_id", session_id),
            at=check.time(at),
            tags=tuple(check.tags(tags)),
            metadata=check.metadata(metadata, stored),
            fact=check.fact(fact),
        ), context=STORED if stored else None)

    def _text(self, text: Any, name: str = "text") -> str:
        return check.text(text, self.config.max_text_chars, name)

    def _existing(self, note_id: str) -> Note:
        return existing(self._graph, note_id)

    def _current(self, note_id: str) -> Note:
        """The note as committed now: outside the write section where the store can read it so
        (`NoteStore.read_current`: on PostgreSQL one round trip, not two)."""
        with self._sections.reading():
            found = self._graph.read_current([note_id])
        if found is None:
            with self._section_reading([note_id]):
                return self._existing(note_id)
        if note_id not in found:
            raise not_found(note_id)
        return found[note_id]

    @contextmanager
    def _section_reading(self, note_ids: list[str]) -> Iterator[None]:
        """The exclusive section of a call that starts by reading these notes: a store whose reads are
        round trips reads them with its lock (`NoteStore.expect_loads`), so a `reinforce` on PostgreSQL
        is two round trips, not three."""
        self._graph.expect_loads(note_ids, ())
        with self._sections.exclusive():
            yield

"""Moving a folder store (SQLite) into a PostgreSQL database: notes, links, history, ledger and vectors.

Every table is copied from one read snapshot of the SQLite file, with the store's identity
and index key, so note tokens and the store id stay the same, and the editor's saved state
is published to the database's shared folders in the same transaction, so every replica
fetches it (see `shared_folders`). The vector index is then rebuilt from the copied
embeddings (the graph holds every one) in the Chroma server given, or in an embedded index
in the new store's local folder, which is made before anything is copied. The target must
be empty: nothing is merged, and a migration that raises before the index leaves it empty,
to be run again. (A failed rebuild of the index leaves the store in place: opening it
rebuilds the index.) Stop the writers of the source store while it runs.

The copy's transaction also records which store it copied (`COPIED_FROM`), so a migration stopped
by Ctrl-C (`MigrationInterrupted`, a KeyboardInterrupt) says whether the target is still empty (run
it again) or holds the whole copy (use it: opening it rebuilds its index), and a second migration
of the same folder into it says the copy is there and usable rather than asking for an empty database.

The copy is a new store: it gets a store id of its own, so that a second migration of the same
folder, or the folder store itself, cannot take over its Chroma collection (each would drop the
other's vectors at its next open). Rows the source cannot read are set aside in its quarantine
first, as opening it would, and travel in the quarantine table.
"""
from __future__ import annotations

import uuid
from pathlib import Path

from pydantic import BaseModel

from ..errors import AgentMemError, InvalidInputError, StoreUnavailableError
from .graph import NoteGraph
from .location import EDITOR_FOLDER, GRAPH_FILE, is_postgres_url, local_folder
from .postgres import PostgresNoteGraph
from .postgres_connection import redacted
from .postgres_copy import copied_tables
from .sync import IndexSync
from .vectors import VectorIndex


COPIED_FROM = "copied_from"   # meta: the id of the store a migration copied, written with the copy


class MigrationInterrupted(KeyboardInterrupt):
    """A migration stopped by Ctrl-C. Its message says what the target holds and what to do; `copied`:
    the target holds the whole copy (True), is still empty (False), or could not be asked (None)."""

    def __init__(self, message: str, copied: bool | None) -> None:
        super().__init__(message)
        self.copied = copied


class MigrationReport(BaseModel):
    """What a migration copied."""

    source: str
    target: str
    rows: dict[str, int]
    vectors: int
    editor_copied: bool


def migrate(source_folder: str | Path, target_url: str, chroma_url: str | None = None,
            collection: str = "agentmem_notes") -> MigrationReport:
    """Copy the store in `source_folder` into the empty PostgreSQL database at `target_url`."""
    if is_postgres_url(source_folder):
        raise InvalidInputError("the source must be a store's folder; a PostgreSQL store is copied with its backup")
    source = local_folder(source_folder)
    if not (source / GRAPH_FILE).is_file():
        raise InvalidInputError(f"{source} holds no store (no {GRAPH_FILE})")
    if not is_postgres_url(target_url):
        raise InvalidInputError("the target must be a postgresql://user@host:port/database URL")
    origin = NoteGraph(source / GRAPH_FILE)
    source_id = origin.store_id
    try:
        try:
            target = PostgresNoteGraph(target_url)
        except BaseException:
            origin.close()
            raise
        try:
            _refuse_a_store(origin, target, target_url)  # first: a copy made already is said so, not another error
            _refuse_another_stores_index(origin, chroma_url, collection)
            folder = _made_local_folder(target_url)
            with origin.lock():
                origin.quarantine_unreadable()
            rows = _copy_tables(origin, target, target_url, source / EDITOR_FOLDER)
            vectors = _rebuild_index(target_url, folder, chroma_url, collection)
        finally:
            target.close()
            origin.close()
    except KeyboardInterrupt as exc:
        if isinstance(exc, MigrationInterrupted):
            raise
        raise _interrupted(source, target_url, source_id) from None
    return MigrationReport(source=str(source), target=redacted(target_url), rows=rows, vectors=vectors,
                           editor_copied=(source / EDITOR_FOLDER).is_dir())


def _refuse_a_store(origin: NoteGraph, target: PostgresNoteGraph, target_url: str) -> None:
    """A target that holds a store is refused: as the whole copy of this one that it is (an earlier
    migration copied it), or as another store."""
    if not (target.count() or target.get_meta("store_id") is not None):
        return
    if origin.store_id is not None and target.get_meta(COPIED_FROM) == origin.store_id:
        raise InvalidInputError(
            f"{redacted(target_url)} already holds the whole copy of this store, made by an earlier migrate: it is"
            " ready to use (opening it rebuilds its vector index if that migrate stopped before finishing it)."
            " Nothing was copied again."
        )
    raise InvalidInputError(f"{redacted(target_url)} already holds a store; migrate into an empty database")


def _interrupted(source: Path, target_url: str, source_id: str | None) -> MigrationInterrupted:
    """What an interrupted migration left in the target, asked of the database (the copy is one transaction)."""
    where = redacted(target_url)
    try:
        target = PostgresNoteGraph(target_url)
        try:
            copied = source_id is not None and target.get_meta(COPIED_FROM) == source_id
            empty = not target.count() and target.get_meta("store_id") is None
        finally:
            target.close()
    except (AgentMemError, OSError) as exc:
        return MigrationInterrupted(
            f"the migration was interrupted and {where} could not be asked what it holds ({exc}); if it holds no"
            f" store, run the same migrate again; if it holds the copy of {source}, that copy is whole: use it", None)
    if copied:
        return MigrationInterrupted(
            f"the migration was interrupted while it rebuilt the vector index: {where} holds the whole copy of"
            f" {source}, ready to use (opening it rebuilds its index); do not migrate it again", True)
    if empty:
        return MigrationInterrupted(
            f"the migration was interrupted before the copy was made: {where} is still empty; run the same migrate"
            " again", False)
    return MigrationInterrupted(f"the migration was interrupted; {where} holds a store that is not this copy", None)


def _refuse_another_stores_index(origin: NoteGraph, chroma_url: str | None, collection: str) -> None:
    """Before anything is copied: a Chroma server's collection that holds another store's vectors
    is refused, since the rebuild would empty it and that store would no longer open. (An embedded
    index lives in the target database's own folder.)"""
    if chroma_url is None:
        return
    index = VectorIndex(Path("unused"), collection, chroma_url, origin.index_key)
    try:
        if index.count() and index.store_id != origin.store_id:
            raise InvalidInputError(
                f"the collection {collection!r} on {chroma_url} holds another store's vectors; migrate into"
                " another collection (--collection). Nothing was copied."
            )
    finally:
        index.close()


def _made_local_folder(target_url: str) -> Path:
    """The new store's local folder (for an embedded index), made before anything is copied. One that
    holds an editor state belongs to an earlier store of this database (dropped, made again): the new
    store would take that state for its own, so it is refused."""
    folder = local_folder(target_url)
    if (folder / EDITOR_FOLDER).exists():
        raise InvalidInputError(
            f"the local folder {folder} holds the editor state of an earlier store of {redacted(target_url)}; move"
            " it away (or remove it) and migrate again. Nothing was copied."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailableError(f"cannot create the local folder {folder}: {exc}; nothing was copied") from exc
    return folder


def _copy_tables(origin: NoteGraph, target: PostgresNoteGraph, target_url: str, editor: Path) -> dict[str, int]:
    """Every table, and the `editor` folder (if there is one) published, in one transaction of the target."""
    tables = copied_tables(origin)
    copied_tables(target)
    reader = origin.connection
    with target.lock():
        _refuse_a_store(origin, target, target_url)   # again, under the lock: another migration may have run
        with target.transaction():
            target.connection.execute("DELETE FROM meta")  # the new database's own key gives way to the store's
            reader.execute("BEGIN")  # one read snapshot of the whole file
            try:
                counts = target.bulk_load({
                    table: (columns, map(tuple, reader.execute(
                        f"SELECT {', '.join(columns)} FROM {table} ORDER BY rowid")))
                    for table, columns in tables.items()
                })
            finally:
                reader.execute("COMMIT")
            target.set_meta("store_id", uuid.uuid4().hex)  # a store of its own (see the module docstring)
            if origin.store_id is not None:
                target.set_meta(COPIED_FROM, origin.store_id)  # committed with the copy: the mark of a whole one
            if editor.is_dir():  # a failure here undoes the copy
                target.shared_folders.publish(EDITOR_FOLDER, editor, based_on=None)
    return counts


def _rebuild_index(target_url: str, folder: Path, chroma_url: str | None, collection: str) -> int:
    """The vector index of the migrated store, filled from the embeddings it holds."""
    graph = PostgresNoteGraph(target_url)  # reopened: it now carries the source's key and identity
    try:
        index = VectorIndex(folder / "chroma", collection, chroma_url, graph.index_key)
        try:
            sync = IndexSync(graph, index)
            sync.record_location()  # the source's, copied with its meta, may be another
            return sync.rebuild()
        finally:
            index.close()
    finally:
        graph.close()

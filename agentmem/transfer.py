"""Moving a store's contents in and out whole: export files of notes, and backup folders.

An export file holds one note per line as JSON (ids, times, links, facts), so it can be read
back into any store. A backup folder holds the note graph (copied while in use) and the
editor state (on a database, the published one); the vector index is left out, because it
can be rebuilt from the graph. A backup's target is checked before anything is written, and a
backup that fails leaves nothing behind (`new_backup`).
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psutil
from pydantic import Field, ValidationError, model_validator

from .errors import InvalidInputError, StoreUnavailableError
from .notes import STORED, CleanStr, Note, NoteId, clean_string
from .files import absolute_path, sync_folder, written_whole
from .stores import NoteGraph, VectorIndex
from .stores.location import EDITOR_FOLDER, GRAPH_FILE
from .stores.store import NoteStore
from .stores.sync import VECTOR_LOCATION, IndexSync
from .stores.vectors import location_of
from .validation import MAX_PATH_CHARS, reasons

if TYPE_CHECKING:  # psycopg is an optional dependency
    from .stores.shared_folders import SharedFolders

log = logging.getLogger(__name__)

NAME_MAX = 255  # bytes in one file or folder name (ext4, XFS, APFS, NTFS)
# The kernel's own file systems: what they hold are its processes, devices, control groups and settings, not files,
# so no backup can be written there (and a folder made in some of them, cgroup's, makes a control group).
KERNEL_FILE_SYSTEMS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "pstore", "bpf",
    "configfs", "fusectl", "mqueue", "binfmt_misc", "efivarfs", "selinuxfs", "nsfs", "hugetlbfs", "rpc_pipefs",
})
FILE_SYSTEM_OWN = frozenset({"lost+found"})  # at the root of a disk just made (ext2-4): the folder is empty still
# Written last into a backup folder: a backup killed before it finished (no exception, so no
# cleanup) has none, and is not restored as if it were whole.
BACKUP_COMPLETE = "backup-complete"


class ExportedNote(Note):
    """A line of an export file: a note, and which of its keywords it absorbed from which linked note
    (keyword -> that note's id), so that forgetting that note after an import still takes them back."""

    absorbed: dict[CleanStr, NoteId] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _times_in_order(self) -> ExportedNote:
        """A note is changed and recalled only after it was made: a line saying otherwise was not written by
        an export, and its times would skew the note's forgetting curve."""
        if min(self.updated_at, self.last_recalled) < self.created_at:
            raise ValueError("updated_at and last_recalled cannot be earlier than created_at")
        return self

    def as_note(self) -> Note:
        return Note.model_construct(**{field: value for field, value in self if field != "absorbed"})


def write_notes(notes: list[Note], absorbed: dict[str, dict[str, str]], target: Path) -> int:
    """Write the notes as JSON lines, each with the keywords it absorbed (`ExportedNote`); the file appears
    whole or not at all (written beside it, then renamed)."""
    try:
        with written_whole(target) as out:
            for note in notes:
                line = ExportedNote.model_construct(**dict(note), absorbed=absorbed.get(note.id, {}))
                out.write(line.model_dump_json() + "\n")
    except OSError as exc:
        raise StoreUnavailableError(f"cannot write {target}: {exc}") from exc
    return len(notes)


def read_notes(source: Path) -> list[ExportedNote]:
    """Every note of an export file, each line validated; a bad line names its number."""
    if not source.is_file():  # a folder, a device or a pipe is no export either
        raise InvalidInputError(f"{source} is not a regular file" if source.exists() else f"no such file: {source}")
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{source} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise StoreUnavailableError(f"cannot read {source}: {exc}") from exc
    return notes_in(text, str(source))


def notes_in(text: str, source: str) -> list[ExportedNote]:
    r"""The notes of an export's JSON lines (`source` names it in errors). Lines end at "\n" only:
    a note's text may hold other line breaks (U+2028, \x1e, ...), which JSON leaves unescaped and
    `str.splitlines` would split at, so that the file would read back as other lines than it holds."""
    notes = []
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                notes.append(ExportedNote.model_validate_json(line, context=STORED))  # an export re-imports whole
            except ValidationError as exc:
                raise InvalidInputError(f"{source}:{number}: not a note: {reasons(exc.errors())}") from None
    return notes


RemixSession = Callable[[tuple[str | None, str | None, str]], dict[str, np.ndarray | None]]


def store_new(lines: list[ExportedNote], store: NoteStore, sync: IndexSync, embedded: dict[str, np.ndarray],
              embed: Callable[[list[str]], np.ndarray], remixed: RemixSession) -> list[Note]:
    """Store the notes of an export file that the store does not hold yet, with their ids, times,
    links and absorbed keywords; returns them. Run in the exclusive section, with every note already
    validated. `embedded` holds the embeddings of the notes' texts made beforehand, by id; `embed` makes the
    others.

    Links to notes in neither the file nor the store are dropped; a link between two users' notes
    refuses the whole import. A keyword absorbed from a note of the same user is recorded by origin,
    as `remember` records it (so a forget of that note takes it back); one whose origin is not there
    is dropped. Notes of a session are searched by their vectors mixed in the session's order
    (`remixed`: `WritePath.remixed`), as remembered."""
    new = [n for n in {n.id: n for n in lines}.values() if not store.exists(n.id)]
    owners = {n.id: n.user_id for n in new}
    targets = store.get_many({i for n in new for i in [*(link.note_id for link in n.links), *n.absorbed.values()]}
                             - owners.keys(), links=False)
    owners |= {i: n.user_id for i, n in targets.items()}
    for line in new:
        for link in line.links:
            if link.note_id in owners and owners[link.note_id] != line.user_id:
                raise InvalidInputError(f"note {line.id} links to {link.note_id} of another user: links never cross users")
    absorbed = [(line.id, word, origin) for line in new for word, origin in line.absorbed.items()
                if word in line.keywords and origin in owners and owners[origin] == line.user_id]
    taken = {(note_id, word) for note_id, word, _ in absorbed}
    notes = [line.as_note().model_copy(update={"keywords": [w for w in line.keywords
                                                            if w not in line.absorbed or (line.id, w) in taken]})
             for line in new]
    if missing := [n for n in notes if n.id not in embedded]:
        embedded = {**embedded, **dict(zip([n.id for n in missing], embed([n.text for n in missing])))}
    embeddings = [embedded[n.id] for n in notes]
    sessions = {(n.user_id, n.agent_id, n.session_id) for n in notes if n.session_id is not None}
    with store.transaction():
        # a note of a session goes in as searched in context; `remixed` then mixes it from the notes before it
        store.insert_many([(note.model_copy(update={"links": []}), embedding,
                            embedding if note.session_id is not None else None)
                           for note, embedding in zip(notes, embeddings)])
        store.link_many([(note.id, link.note_id, link.weight, note.created_at)
                         for note in notes for link in note.links if link.note_id in owners])
        store.absorb_many(absorbed)
        mixed: dict[str, np.ndarray | None] = {}
        for session in sessions:
            mixed |= remixed(session)
        store.set_searched_vectors(mixed)
    sync.push(list(dict.fromkeys([*(n.id for n in notes), *mixed])))
    return notes


@contextmanager
def new_backup(target: object) -> Iterator[Path]:
    """The folder a backup goes into, checked (`_backup_target`) and created, for the block that writes it.
    When the block ends, what it wrote is synced to disk, and then the `BACKUP_COMPLETE` mark is written and
    synced last. If the block raises, what it wrote goes, and the folders made for it: a failed backup leaves
    nothing behind."""
    folder = _backup_target(target)
    made = _first_missing(folder)
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _unusable(folder, exc) from exc
        yield folder
        try:
            sync_folder(folder)
            with open(folder / BACKUP_COMPLETE, "w", encoding="utf-8") as mark:
                mark.write("this backup was written whole\n")
                mark.flush()
                os.fsync(mark.fileno())
        except OSError as exc:
            raise StoreUnavailableError(f"cannot finish the backup in {folder}: {exc}") from exc
    except BaseException:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        else:
            for suffix in ("", "-journal", "-wal", "-shm"):
                _discard(Path(f"{folder / GRAPH_FILE}{suffix}"))
            shutil.rmtree(folder / EDITOR_FOLDER, ignore_errors=True)
            _discard(folder / BACKUP_COMPLETE)
        raise


def _backup_target(target: object) -> Path:
    """A folder path a backup can go into: a path the file system can hold (valid Unicode, no NUL, no name
    too long; checked here, since a missing parent hides a too long name from the file system's checks),
    not on one of the kernel's file systems (/proc, /sys: `KERNEL_FILE_SYSTEMS`), and a new folder or an empty one
    (a store's files in it are named as such; a disk's own lost+found does not count). Nothing is written.

    The folder is returned absolute, its `..` resolved as the kernel reads them (`files.absolute_path`): SQLite, which copies
    the note graph, refuses a relative path with more `..` than the working folder is deep."""
    if not isinstance(target, (str, Path)) or not str(target).strip():
        raise InvalidInputError("backup target must be a folder path")
    raw = str(target)
    if len(raw) > MAX_PATH_CHARS:
        raise InvalidInputError("backup target is too long to be a path")
    try:
        clean_string(raw)
    except ValueError as exc:
        raise InvalidInputError(f"backup target {exc}") from None
    try:
        folder = absolute_path(raw)
    except OSError as exc:  # the working folder was removed
        raise StoreUnavailableError(f"cannot resolve the backup target {raw}: {exc}") from exc
    if any(len(os.fsencode(part)) > NAME_MAX for part in folder.parts):
        raise InvalidInputError(f"backup target has a name longer than {NAME_MAX} bytes, which file systems refuse")
    try:
        if (kind := _file_system_of(folder)) in KERNEL_FILE_SYSTEMS:
            raise InvalidInputError(f"backup target {folder} is on the kernel's {kind} file system, which holds the"
                                    " kernel's own entries, not files: back up into a folder on a disk")
        if folder.exists() and not folder.is_dir():
            raise InvalidInputError(f"backup target {folder} is a file, not a folder")
        for held in (GRAPH_FILE, EDITOR_FOLDER, BACKUP_COMPLETE):
            if (folder / held).exists():
                raise InvalidInputError(f"{folder} already holds {held}; back up into a new folder")
        if folder.is_dir() and (others := sorted(p.name for p in folder.iterdir() if p.name not in FILE_SYSTEM_OWN)):
            named = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            raise InvalidInputError(f"backup target {folder} already holds other files ({named}), which a backup would"
                                    " lie beside: back up into a new folder or an empty one")
    except OSError as exc:
        raise _unusable(folder, exc) from exc
    return folder


def _file_system_of(folder: Path) -> str | None:
    """The type of the file system that `folder`, or its nearest existing parent, is on (links followed); None where
    the system lists no mount holding it."""
    nearest = next(p for p in (folder.absolute(), *folder.absolute().parents) if p.exists())
    real = os.path.realpath(nearest)
    holding = [mount for mount in psutil.disk_partitions(all=True)
               if real == mount.mountpoint or real.startswith(mount.mountpoint.rstrip("/") + "/")]
    # the deepest mount point holding the path; of two on one point, the later, mounted over the other
    return max(reversed(holding), key=lambda mount: len(mount.mountpoint)).fstype if holding else None


def _first_missing(folder: Path) -> Path | None:
    """The outermost of `folder` and its parents that does not exist yet (None: the folder exists)."""
    return next((p for p in (*reversed(folder.parents), folder) if not p.exists()), None)


def _unusable(folder: Path, exc: OSError) -> InvalidInputError | StoreUnavailableError:
    """A file system's refusal of a backup target as a typed error: a name it cannot hold is the caller's."""
    if exc.errno in (errno.ENAMETOOLONG, errno.ENOTDIR):
        return InvalidInputError(f"backup target {folder} is not a usable path: {exc.strerror}")
    return StoreUnavailableError(f"cannot create the backup folder {folder}: {exc}")


def copy_editor_state(store: Path, folder: Path, shared: SharedFolders | None = None) -> None:
    """The editor state goes with a backup (the graph is copied by the store's own backup): on a store
    shared through a database (`shared`), the published state, which this host's copy may be behind;
    else (or if none was published) the one saved in the store's folder."""
    if shared is not None and shared.fetch(EDITOR_FOLDER, folder / EDITOR_FOLDER) is not None:
        return
    if (store / EDITOR_FOLDER).is_dir():
        try:
            shutil.copytree(store / EDITOR_FOLDER, folder / EDITOR_FOLDER)
        except OSError as exc:  # shutil.Error too
            shutil.rmtree(folder / EDITOR_FOLDER, ignore_errors=True)
            raise StoreUnavailableError(f"cannot copy the editor state into {folder}: {exc}") from exc


def unpack_backup(source: Path, path: Path) -> None:
    """Put a whole backup's files in place at `path`, with no vector index: the store rebuilds it when
    opened. Each part is copied beside its place and renamed into it, the note graph last, so a restore
    killed on the way leaves no store at `path`; one that fails removes what it copied."""
    if not (source / GRAPH_FILE).is_file():
        raise InvalidInputError(f"{source} is not a backup: it has no {GRAPH_FILE}")
    if not (source / BACKUP_COMPLETE).is_file():
        raise InvalidInputError(
            f"{source} is not a whole backup: it has no {BACKUP_COMPLETE} mark, so the backup was stopped before it"
            f" finished (or was made by agentmem before 2026-11-26: if you know that one finished, create an empty"
            f" {BACKUP_COMPLETE} file in it)"
        )
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"{path} is a file, not a folder; restore into a new folder")
    for held in (GRAPH_FILE, EDITOR_FOLDER):
        if (path / held).exists():
            raise InvalidInputError(f"{path} already holds {held}; restore into an empty folder (move it aside)")
    graph, editor = path / f".{GRAPH_FILE}.restoring", path / f".{EDITOR_FOLDER}.restoring"
    try:
        path.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(editor, ignore_errors=True)  # left by a restore killed on the way
        shutil.copyfile(source / GRAPH_FILE, graph)
        if (source / EDITOR_FOLDER).is_dir():
            shutil.copytree(source / EDITOR_FOLDER, editor)
        shutil.rmtree(path / "chroma", ignore_errors=True)  # another store's index: it is rebuilt from the graph
        if editor.is_dir():
            editor.rename(path / EDITOR_FOLDER)
        graph.replace(path / GRAPH_FILE)
    except BaseException as exc:
        remove_restored(path)
        _discard(graph)
        shutil.rmtree(editor, ignore_errors=True)
        if isinstance(exc, OSError):
            raise StoreUnavailableError(f"cannot restore into {path}: {exc}") from exc
        raise


def remove_restored(path: Path) -> None:
    """Take back what `unpack_backup` put at `path` (it refuses a `path` holding a note graph or an editor
    state, so both are its own), when the store it restored cannot be opened: a restore can follow. It runs while an
    error is on its way, so it raises nothing itself (`_discard`)."""
    for suffix in ("", "-wal", "-shm"):
        _discard(Path(f"{path / GRAPH_FILE}{suffix}"))
    shutil.rmtree(path / EDITOR_FOLDER, ignore_errors=True)
    shutil.rmtree(path / "chroma", ignore_errors=True)


def _discard(file: Path) -> None:
    """Remove a file a failed backup or restore may have written, raising nothing: it runs while the error that
    stopped the work is on its way, which it must not mask. On a read-only file system even a missing file's
    unlink fails (EROFS, which `missing_ok` does not cover), and nothing was written there; any other failure
    leaves the file behind, which is logged."""
    try:
        file.unlink()
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EROFS):
            log.warning("could not remove %s after a failed backup or restore: %s", file, exc)


def prepare_index(path: Path, collection: str, chroma_url: str | None) -> None:
    """Record where a restored store's vectors will live (the backed-up store may have kept them elsewhere); on a
    Chroma server, empty the collection, claimed for the note graph, so that opening the store rebuilds it from
    the graph."""
    graph = NoteGraph(path / GRAPH_FILE)
    try:
        if graph.store_id is None:  # a backup of a release-0.1 store
            graph.claim(uuid.uuid4().hex)
        with graph.transaction():
            graph.set_meta(VECTOR_LOCATION, location_of(chroma_url))
        if chroma_url is not None:
            index = VectorIndex(path / "chroma", collection, chroma_url, graph.index_key)
            index.reset(graph.store_id)
            index.close()
    finally:
        graph.close()

"""Moving a store's contents in and out whole: export files of notes, and backup folders.

An export file holds one note per line as JSON (ids, times, links, facts), so it can be read
back into any store. A backup folder holds the note graph (copied while in use) and the
editor state; the vector index is left out, because it can be rebuilt from the graph.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import ValidationError

from .consolidation.bridge import EDITOR_FOLDER
from .errors import InvalidInputError, StoreUnavailableError
from .notes import Note
from .stores.location import GRAPH_FILE


def write_notes(notes: list[Note], target: Path) -> int:
    """Write the notes as JSON lines; the file appears whole or not at all (written beside it, then renamed)."""
    partial = target.with_name(f".{target.name}.partial")
    try:
        with partial.open("w", encoding="utf-8") as out:
            for note in notes:
                out.write(note.model_dump_json() + "\n")
        partial.replace(target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise StoreUnavailableError(f"cannot write {target}: {exc}") from exc
    return len(notes)


def read_notes(source: Path) -> list[Note]:
    """Every note of an export file, each line validated; a bad line names its number."""
    if not source.is_file():
        raise InvalidInputError(f"no such file: {source}")
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{source} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise StoreUnavailableError(f"cannot read {source}: {exc}") from exc
    notes = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                notes.append(Note.model_validate_json(line))
            except ValidationError as exc:
                raise InvalidInputError(f"{source}:{number}: not a note: {exc}") from None
    return notes


def backup_folder(target: object) -> Path:
    """The new, empty-of-stores folder a backup goes into (created)."""
    folder = Path(target) if isinstance(target, (str, Path)) and str(target).strip() else None
    if folder is None:
        raise InvalidInputError("backup target must be a folder path")
    if (folder / GRAPH_FILE).exists():
        raise InvalidInputError(f"{folder} already holds a store; back up into a new folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailableError(f"cannot create {folder}: {exc}") from exc
    return folder


def copy_editor_state(store: Path, folder: Path) -> None:
    """The saved editor state goes with a backup (the graph is copied by the store's own backup)."""
    if (store / EDITOR_FOLDER).is_dir():
        shutil.copytree(store / EDITOR_FOLDER, folder / EDITOR_FOLDER)


def unpack_backup(source: Path, path: Path) -> None:
    """Put a backup's files in place at `path`, with no vector index: the store rebuilds it when opened."""
    if not (source / GRAPH_FILE).is_file():
        raise InvalidInputError(f"{source} is not a backup: it has no {GRAPH_FILE}")
    if (path / GRAPH_FILE).exists():
        raise InvalidInputError(f"{path} already holds a note graph; restore into an empty folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / GRAPH_FILE, path / GRAPH_FILE)
        shutil.rmtree(path / "chroma", ignore_errors=True)
        if (source / EDITOR_FOLDER).is_dir():
            shutil.copytree(source / EDITOR_FOLDER, path / EDITOR_FOLDER, dirs_exist_ok=True)
    except OSError as exc:
        raise StoreUnavailableError(f"cannot restore into {path}: {exc}") from exc

"""Where a memory lives: a folder (SQLite note store) or a `postgresql://` URL (PostgreSQL note store).

Every memory also has a local folder, for what stays on one machine: the embedded Chroma
index when no Chroma server is given, and the editor's saved state. For a folder store it
is the folder itself; for a PostgreSQL store it is `<home>/postgres/<host>-<port>-<database>`,
home being $AGENTMEM_HOME or ~/.cache/agentmem. Several processes (or hosts) on one
PostgreSQL store need a Chroma server (`chroma_url`): an embedded index is one process's.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import InvalidInputError, StoreUnavailableError
from ..files import absolute_path
from .graph import NoteGraph
from .postgres import PostgresNoteGraph
from .postgres_connection import url_parameters
from .store import NoteStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
GRAPH_FILE = "notes.sqlite3"
EDITOR_FOLDER = "editor"  # the editor's saved state beside the graph, and its name among the shared folders


def is_postgres_url(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


def check_location(location: str | Path) -> None:
    """Refuse what looks meant as a PostgreSQL URL but is not one (a `Path` folds `//` into `/`),
    and a URL that libpq would misread (`postgres_connection.url_parameters`), naming none of it."""
    if str(location).startswith(("postgresql:", "postgres:")) and not is_postgres_url(location):
        raise InvalidInputError(
            "a PostgreSQL store is named by a URL string postgresql://user@host:port/database"
            " (pass it as a str, not a Path)"
        )
    if is_postgres_url(location):
        url_parameters(str(location))


def local_folder(location: str | Path, home: Path | None = None) -> Path:
    """The memory's folder on this machine (see the module doc); not created here."""
    check_location(location)
    if not is_postgres_url(location):
        try:
            return absolute_path(location)
        except OSError as exc:  # the working folder was removed: a relative path names nothing
            raise StoreUnavailableError(f"cannot find the store folder {location}: {exc}") from exc
    parts = urlsplit(str(location))
    try:
        port = parts.port
    except ValueError:  # several hosts, some with a port: urllib reads one
        raise InvalidInputError(
            "a PostgreSQL URL of several hosts names them in its query (?host=h1,h2&port=5432,5433),"
            " not before the database"
        ) from None
    database = parts.path.lstrip("/") or parts.username or "postgres"
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{parts.hostname or 'local'}-{port or 5432}-{database}")
    home = home or Path(os.environ.get("AGENTMEM_HOME") or Path.home() / ".cache" / "agentmem")
    return home / "postgres" / name


def open_note_store(location: str | Path) -> NoteStore:
    """The note store at `location`: PostgreSQL for a `postgresql://` URL, else `notes.sqlite3`
    in the folder (created if missing)."""
    check_location(location)
    if is_postgres_url(location):
        return PostgresNoteGraph(str(location))
    folder = local_folder(location)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # the caller's mistake, not the disk's
        raise InvalidInputError(f"the store folder {folder} is, or is inside, a file: a store is a folder") from None
    except OSError as exc:
        raise StoreUnavailableError(f"cannot create the store folder {folder}: {exc}") from exc
    return NoteGraph(folder / GRAPH_FILE)

"""Folders kept in the PostgreSQL store, versioned, so every host loads the current copy (the editor's state).

A folder is published as one gzip'd tar in the `shared_folders` table with a version that
goes up by one per publish. A replica compares `version(name)` with the version it last
fetched (a cheap read, done before it uses the folder) and, when it is behind, `fetch`
unpacks the current copy beside its local folder and swaps it in with a rename, so a reader
never sees half a folder. A publish names the version its folder was made from and is refused
when another replica published since: a replica that worked from an old copy would otherwise
erase what the newer one holds.
"""
from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import psycopg

from ..errors import StoreUnavailableError

SCHEMA = """
CREATE TABLE IF NOT EXISTS shared_folders (name TEXT PRIMARY KEY, version BIGINT NOT NULL, archive BYTEA NOT NULL)
"""


class SharedFolders:
    """Publish and fetch whole folders through the store's connections."""

    def __init__(self, session: Callable[[], AbstractContextManager[psycopg.Connection[Any]]]) -> None:
        """`session` gives the store's connections; the store creates the table (`SCHEMA`) with its own."""
        self._session = session

    def version(self, name: str) -> int | None:
        """The published version of a folder, None if it was never published."""
        with self._session() as conn:
            row = conn.execute("SELECT version FROM shared_folders WHERE name = %s", (name,)).fetchone()
        return None if row is None else row[0]

    def publish(self, name: str, folder: Path, based_on: int | None) -> int:
        """Store the folder's current contents as the version after `based_on` (None: the first version);
        returns it. Refused (StoreUnavailableError, nothing stored) when the published version is not
        `based_on` any more: the folder was made from an older copy, and the newer one must be fetched."""
        buffer = io.BytesIO()
        try:
            with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
                archive.add(folder, arcname=".")
        except OSError as exc:
            raise StoreUnavailableError(f"cannot read {folder} to publish it: {exc}") from exc
        with self._session() as conn:
            if based_on is None:
                row = conn.execute(
                    "INSERT INTO shared_folders(name, version, archive) VALUES (%s, 1, %s)"
                    " ON CONFLICT (name) DO NOTHING RETURNING version",
                    (name, buffer.getvalue()),
                ).fetchone()
            else:
                row = conn.execute(
                    "UPDATE shared_folders SET version = version + 1, archive = %s"
                    " WHERE name = %s AND version = %s RETURNING version",
                    (buffer.getvalue(), name, based_on),
                ).fetchone()
        if row is None:
            made_from = "no published copy" if based_on is None else f"version {based_on}"
            raise StoreUnavailableError(
                f"another replica published the shared {name} after the one this copy was made from ({made_from});"
                " nothing was published (what this copy changed must be made again from the current version)"
            )
        return row[0]

    def fetch(self, name: str, folder: Path) -> int | None:
        """Replace the local folder with the published copy; returns its version (None: nothing published,
        the folder is left alone)."""
        with self._session() as conn:
            row = conn.execute("SELECT version, archive FROM shared_folders WHERE name = %s", (name,)).fetchone()
        if row is None:
            return None
        version, data = row
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
                archive.extractall(staging, filter="data")
            old = folder.with_name(f".{folder.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            if folder.exists():
                folder.rename(old)
            staging.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        except (OSError, tarfile.TarError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise StoreUnavailableError(f"cannot unpack the published {name} into {folder}: {exc}") from exc
        return version

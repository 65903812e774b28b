"""Files that appear whole or not at all, folders synced before anything vouches for them, and paths read as the
kernel reads them."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


@contextmanager
def written_whole(target: Path) -> Iterator[TextIO]:
    """A text file for `target`, written beside it and renamed into place once the block ends; a block that
    raises leaves `target` as it was (an earlier file of that name is not emptied)."""
    partial = target.with_name(f".{target.name}.partial")
    try:
        with partial.open("w", encoding="utf-8") as out:
            yield out
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def sync_folder(folder: Path) -> None:
    """Every file under `folder` on disk, before something that vouches for them (a pointer, a mark) is
    written: after a power cut, that would otherwise name files the disk never got."""
    for part in folder.rglob("*"):
        if part.is_file():
            with open(part, "rb") as handle:
                os.fsync(handle.fileno())


def absolute_path(raw: str | Path) -> Path:
    """`raw` as an absolute path that names what the kernel would (`/..` is `/`, and a `..` after a link is the
    parent of where the link leads): the part up to its last `..` resolved, links followed, the rest as written, so
    a path with no `..` keeps the names it was given. SQLite refuses a `..` above the root ("unable to open
    database file"), which the shell and the kernel read as the root."""
    parts = Path(raw).parts
    last = max((i for i, part in enumerate(parts) if part == ".."), default=-1)
    if last < 0:
        return Path(os.path.abspath(raw))
    return Path(os.path.realpath(Path(*parts[: last + 1]))).joinpath(*parts[last + 1:])

"""Files that appear whole or not at all, and folders synced before anything vouches for them."""
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

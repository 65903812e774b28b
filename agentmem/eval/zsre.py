"""The ZsRE editing records (MEND's split, as used by the GRACE and WISE papers)."""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import InvalidInputError

DEFAULT_EDIT_FILE = Path("../shared/data/zsre/zsre_mend_edit.json")


class ZsreRecord(BaseModel):
    """One edit: `src` -> `alt`; `rephrase` tests generalization, `loc` -> `loc_ans` tests locality."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    src: str
    alt: str
    rephrase: str
    loc: str
    loc_ans: str


def load_zsre(path: str | Path = DEFAULT_EDIT_FILE, limit: int | None = None) -> list[ZsreRecord]:
    """The first `limit` records of a ZsRE file (all of them by default)."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text())
        records = [ZsreRecord(**row) for row in rows[:limit]]
    except (OSError, ValueError, TypeError, ValidationError) as exc:
        raise InvalidInputError(f"cannot read ZsRE records from {path}: {exc}") from exc
    return records

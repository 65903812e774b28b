"""Checks of every argument a caller hands to `Memory`, run before anything is written.

Each check either returns the value in the form the stores keep (times in UTC, text
stripped) or raises `InvalidInputError` naming the argument. The limits themselves live on
the public models (agentmem.notes), so a row read back from an export meets the same ones.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .errors import InvalidInputError
from .notes import MAX_TAGS, STORED, Fact, Metadata, NoteId, ScopeId, Tag, Time, clean_string

MAX_K = 1000
MAX_PATH_CHARS = 4096

_ID = TypeAdapter(NoteId)
_SCOPE = TypeAdapter(ScopeId)
_TIME = TypeAdapter(Time)
_TAG = TypeAdapter(Tag)
_METADATA = TypeAdapter(Metadata)


def reasons(errors: Sequence[Mapping[str, Any]], limit: int = 5) -> str:
    """A validation error's `errors()` on one line, each reason after the field it concerns, the first
    `limit` only (pydantic's own text spans lines and adds a web link to each; one bad file line may
    have thousands)."""
    said = "; ".join(
        f"{'.'.join(map(str, error['loc']))}: {error['msg']}" if error["loc"] else error["msg"] for error in errors[:limit]
    )
    return said + (f"; and {len(errors) - limit} more" if len(errors) > limit else "")


def text(value: Any, max_chars: int, name: str = "text") -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a string, got {type(value).__name__}")
    try:
        clean_string(value)
    except ValueError as exc:
        raise InvalidInputError(f"{name} {exc}") from None
    if not value.strip():
        raise InvalidInputError(f"{name} is empty")
    if len(value) > max_chars:
        raise InvalidInputError(f"{name} has {len(value)} characters; the limit is {max_chars}")
    return value.strip()


def note_id(value: Any, name: str = "note id") -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a string, got {type(value).__name__}")
    try:
        return _ID.validate_python(value)
    except ValidationError:
        raise InvalidInputError(
            f"{name} must be 1-128 characters of letters, digits, '_', '.', ':' or '-', got {value[:40]!r}"
        ) from None


def scope(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a string or None, got {type(value).__name__}")
    try:
        return _SCOPE.validate_python(value)
    except ValidationError as exc:
        raise InvalidInputError(
            f"{name} must be a printable, non-empty string of at most 256 characters: {reasons(exc.errors())}"
        ) from None


def time(value: Any, name: str = "at") -> datetime:
    """`None` is now; a naive datetime is taken as UTC; every time comes back in UTC."""
    if value is None:
        return datetime.now(timezone.utc)
    if not isinstance(value, datetime):
        raise InvalidInputError(f"{name} must be a datetime, got {type(value).__name__}")
    try:
        return _TIME.validate_python(value)
    except ValidationError as exc:
        raise InvalidInputError(f"{name}: {reasons(exc.errors())}") from None


def tags(value: Any) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise InvalidInputError("tags must be a list of strings")
    value = list(value)
    if len(value) > MAX_TAGS:
        raise InvalidInputError(f"at most {MAX_TAGS} tags")
    if not all(isinstance(tag, str) for tag in value):
        raise InvalidInputError("every tag must be a string")
    try:
        return [_TAG.validate_python(tag) for tag in value]
    except ValidationError as exc:
        raise InvalidInputError(f"bad tag: {reasons(exc.errors())}") from None


def enrichment(keywords: list[str], context: str, max_keywords: int, max_text_chars: int) -> None:
    """An imported note's keywords and context, within what this store's own notes can hold: at most
    `max_keywords` keywords (evolution and the enricher keep to it), each a word of some note's text, and a
    context made of a date, a scope and four of its words (an enricher's, at most 500 characters)."""
    if len(keywords) > max_keywords:
        raise InvalidInputError(f"at most {max_keywords} keywords (this store's max_keywords); got {len(keywords)}")
    if any(len(word) > max_text_chars for word in keywords):
        raise InvalidInputError(f"a keyword is longer than a text may be ({max_text_chars} characters)")
    if len(context) > max_text_chars + 500:
        raise InvalidInputError(f"the context is longer than {max_text_chars + 500} characters")


def metadata(value: Any, stored: bool = False) -> dict[str, Any] | None:
    """`stored`: a note's metadata as a store held it (an export's), which may nest deeper than new input."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise InvalidInputError("metadata must be a dict with string keys")
    try:
        return _METADATA.validate_python(value, context=STORED if stored else None)
    except ValidationError as exc:
        raise InvalidInputError(f"bad metadata: {reasons(exc.errors())}") from None


def filters(value: Any) -> dict[str, str | int | float | bool]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(v, (str, int, float, bool)) for key, v in value.items()
    ):
        raise InvalidInputError("filters must map metadata keys to str, int, float or bool values")
    if any(isinstance(v, float) and not math.isfinite(v) for v in value.values()):
        raise InvalidInputError("filter values must be finite")
    metadata(value)  # the same limits as stored metadata
    return value


def fact(value: Any) -> Fact | None:
    """A Fact, checked again even when given as one (`model_construct` skips the checks)."""
    if value is None:
        return None
    if isinstance(value, Fact):
        value = dict(value)
    try:
        return Fact.model_validate(value)
    except ValidationError as exc:
        raise InvalidInputError(f"fact must be a Fact(prompt, target): {reasons(exc.errors())}") from None


def count(value: Any, name: str, low: int = 1, high: int = MAX_K) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInputError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


def flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def store_location(value: Any) -> str | Path:
    """A store's folder, or a postgresql:// URL: a usable, non-empty string or Path."""
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise InvalidInputError("path must be a non-empty string or Path (a folder, or a postgresql:// URL)")
    raw = str(value)
    try:
        clean_string(raw)
    except ValueError as exc:
        raise InvalidInputError(f"path {exc}") from None
    if len(raw) > MAX_PATH_CHARS:
        raise InvalidInputError("path is too long")
    if raw.startswith(("postgresql:", "postgres:")) and not raw.startswith(("postgresql://", "postgres://")):
        raise InvalidInputError(f"a PostgreSQL store is named by a URL postgresql://user@host:port/database, not {raw!r}")
    return value


def file_path(value: Any, name: str = "path") -> Path:
    """A path to a file (existing or to create): not empty, not a directory, in an existing folder."""
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise InvalidInputError(f"{name} must be a non-empty string or Path")
    raw = str(value)
    if len(raw) > MAX_PATH_CHARS or "\x00" in raw:
        raise InvalidInputError(f"{name} is not a usable path")
    try:
        clean_string(raw)
    except ValueError as exc:
        raise InvalidInputError(f"{name} {exc}") from None
    path = Path(raw)
    if path.is_dir():
        raise InvalidInputError(f"{name} {path} is a directory, not a file")
    if not path.parent.is_dir():
        raise InvalidInputError(f"{name} {path}: the folder {path.parent} does not exist")
    return path


def outside_store(path: Path, store_folder: Path, name: str = "path") -> Path:
    """A file to write that is not in the store's own folder: written there, it could take the place of the
    note graph, its write-ahead log or the index's files, which the store would then find damaged."""
    if path.resolve().is_relative_to(store_folder.resolve()):
        raise InvalidInputError(f"{name} {path} is inside the store's folder {store_folder}; write it elsewhere")
    return path

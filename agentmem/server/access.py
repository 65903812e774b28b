"""One place that enforces what a caller may reach, for REST, MCP and chat alike.

A caller bound to a user acts as that user: scope arguments default to it and may not name
another user; notes of other users look like notes that do not exist (no existence leak); and
whole-store operations (decay, stats, consolidation, the full ledger, repair) are refused, and
so is marking a note shared, which would put its fact in every user's answers, or changing one
that is; and it may not date a call ahead of the server's clock (`FUTURE_TOLERANCE`).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from .. import validation
from ..errors import InvalidInputError, NoteNotFoundError
from ..memory import Memory
from ..notes import Note
from ..stores.store import not_found
from .auth import Caller
from .errors import AccessDeniedError

# How far ahead of the server's clock a key bound to one user may date a call (`at`): clients' clocks differ a little.
FUTURE_TOLERANCE = timedelta(minutes=5)


class ScopedMemory:
    """A `Memory` seen through one caller's rights."""

    def __init__(self, memory: Memory, caller: Caller) -> None:
        self.memory, self.caller = memory, caller

    @property
    def bound(self) -> bool:
        return self.caller.user_id is not None

    def user(self, requested: str | None) -> str | None:
        """The user_id a call acts for: the bound user, or whatever an unbound caller asked. A malformed id is
        an `InvalidInputError` for every caller, before a bound key's 403."""
        requested = validation.scope("user_id", requested)
        if not self.bound:
            return requested
        if requested not in (None, self.caller.user_id):
            raise AccessDeniedError(f"this API key may only reach the notes of user {self.caller.user_id!r}")
        return self.caller.user_id

    def at(self, requested: datetime | None) -> datetime | None:
        """The time a call acts at, as asked (None: now). A caller bound to a user may not date a call later than
        the server's clock plus `FUTURE_TOLERANCE`: a recall or a write dated years ahead sets its notes' last
        recall there, so they would not fade. A caller for every user may (replays need any time), as may the
        Python API."""
        if self.bound and requested is not None:
            latest = datetime.now(timezone.utc) + FUTURE_TOLERANCE
            if validation.time(requested) > latest:
                minutes = f"{FUTURE_TOLERANCE.total_seconds() / 60:g} minutes"
                raise InvalidInputError(
                    f"at {requested.isoformat()} is ahead of this server's clock by more than {minutes}, the most a key "
                    f"bound to one user may date a call ahead (leave at out to act now)"
                )
        return requested

    def visible(self, note: Note) -> bool:
        return not self.bound or note.user_id == self.caller.user_id

    def note(self, note_id: str) -> Note:
        """The note, if this caller may see it; else the same error as for a note that does not exist."""
        note = self.memory.get(note_id)
        if not self.visible(note):
            raise not_found(note_id)  # the same words as for a note that does not exist
        return note

    def hidden(self, note_ids: set[str]) -> set[str]:
        """Of these ids, those of notes that exist but this caller may not see."""
        if not self.bound:
            return set()
        found = set()
        for note_id in note_ids:
            try:
                note = self.memory.get(note_id)
            except NoteNotFoundError:
                continue
            if not self.visible(note):
                found.add(note_id)
        return found

    def may_mark_shared(self, metadata: object) -> None:
        """A note marked shared (`metadata={"shared": True}`) puts its fact into every user's answers once it
        is consolidated: only a key that is not bound to one user may mark one."""
        if self.bound and isinstance(metadata, dict) and metadata.get("shared") is True:
            raise AccessDeniedError(
                "a note marked shared reaches every user's answers once consolidated; this API key is bound to one user"
            )

    def may_change(self, note: Note) -> None:
        """A note already marked shared speaks for every user: a key bound to one user may forget
        its own, but not change what it says (its new fact would replace the shared edit)."""
        if self.bound and note.metadata.get("shared") is True:
            raise AccessDeniedError(
                "this note is marked shared, so its fact reaches every user's answers; only a key not bound to one"
                " user may change it (this one may forget it)"
            )

    def require_all_users(self, what: str) -> None:
        """Whole-store operations need a key that is not bound to one user."""
        if self.bound:
            raise AccessDeniedError(f"{what} acts on every user's notes; this API key is bound to one user")

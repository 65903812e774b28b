"""One error family, so callers can catch everything agentmem raises with one clause."""
from __future__ import annotations


class AgentMemError(Exception):
    """Base of every error agentmem raises on purpose."""


class InvalidInputError(AgentMemError, ValueError):
    """An argument is malformed; nothing was written."""


class NoteNotFoundError(AgentMemError, KeyError):
    """No note has this id."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "note not found"


class StoreClosedError(AgentMemError, RuntimeError):
    """The memory was closed; open a new one."""


class ModelUnavailableError(AgentMemError, RuntimeError):
    """A bundled model could not be found in the installed packages."""


class StoreUnavailableError(AgentMemError, RuntimeError):
    """A store could not be reached (e.g. no Chroma server at the given URL)."""


class StoreCorruptedError(AgentMemError, RuntimeError):
    """A store file is damaged or does not belong with the rest; the message says the way out."""

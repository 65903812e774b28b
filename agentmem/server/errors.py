"""The server's own typed errors, and the HTTP status every `AgentMemError` maps to."""
from __future__ import annotations

from ..errors import (
    AgentMemError, InvalidInputError, ModelUnavailableError, NoteNotFoundError, StoreClosedError, StoreUnavailableError,
)


class UnauthorizedError(AgentMemError, PermissionError):
    """The request carries no API key, or an unknown one."""


class AccessDeniedError(AgentMemError, PermissionError):
    """The API key is bound to one user and the request reaches beyond that user's notes."""


class PayloadTooLargeError(AgentMemError, ValueError):
    """The request body is over the server's size limit."""


class JobNotFoundError(AgentMemError, KeyError):
    """No background job has this id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "job not found"


class UpstreamError(AgentMemError, RuntimeError):
    """The upstream OpenAI-compatible server failed or could not be reached."""


STATUS: dict[type[AgentMemError], int] = {
    InvalidInputError: 422,
    NoteNotFoundError: 404,
    JobNotFoundError: 404,
    UnauthorizedError: 401,
    AccessDeniedError: 403,
    PayloadTooLargeError: 413,
    UpstreamError: 502,
    StoreClosedError: 503,
    StoreUnavailableError: 503,
    ModelUnavailableError: 503,
}


def status_of(error: AgentMemError) -> int:
    """The status of the nearest mapped class in the error's MRO; other agentmem errors are the caller's (400)."""
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def error_body(error: AgentMemError) -> dict[str, str]:
    return {"error": type(error).__name__, "message": str(error)}

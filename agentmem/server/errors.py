"""The server's own typed errors, the HTTP status every `AgentMemError` maps to, and the JSON body of a refusal."""
from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse

from ..errors import (
    AgentMemError, InvalidInputError, ModelUnavailableError, NoteNotFoundError, StoreClosedError, StoreUnavailableError,
)


class UnauthorizedError(AgentMemError, PermissionError):
    """The request carries no API key, or an unknown one."""


class AccessDeniedError(AgentMemError, PermissionError):
    """The API key is bound to one user and the request reaches beyond that user's notes."""


class ForeignHostError(AgentMemError, PermissionError):
    """The request's Host is not a name this server answers to: a web page's DNS rebinding, say."""


class ForeignOriginError(AgentMemError, PermissionError):
    """A web page of another origin sent the request (cross-site request forgery)."""


class PayloadTooLargeError(AgentMemError, ValueError):
    """The request body is over the server's size limit."""


class LaneFullError(AgentMemError, RuntimeError):
    """Too many requests already wait for the local model, for this user or in all: a queue without a
    bound would let one caller delay every other caller's turn without end. `retry_after_s` is when a place
    is likely free again (one turn's time), sent as `Retry-After`, which the `openai` client honours."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ClientGoneError(AgentMemError, ConnectionError):
    """The client closed the connection while its request waited for the model: its turn is skipped.
    Nobody reads the answer (499, as nginx logs a request its client closed)."""


class JobNotFoundError(AgentMemError, KeyError):
    """No background job has this id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "job not found"


class JobInterruptedError(AgentMemError, RuntimeError):
    """A job's server stopped while it ran, `jobs.MAX_INTERRUPTED` times: it may be what stops the server (its
    memory, say), so it is not run again."""


class UpstreamError(AgentMemError, RuntimeError):
    """The upstream OpenAI-compatible server failed or could not be reached."""


STATUS: dict[type[AgentMemError], int] = {
    InvalidInputError: 422,
    NoteNotFoundError: 404,
    JobNotFoundError: 404,
    UnauthorizedError: 401,
    AccessDeniedError: 403,
    ForeignOriginError: 403,
    ForeignHostError: 421,
    PayloadTooLargeError: 413,
    LaneFullError: 429,
    ClientGoneError: 499,
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


OPENAI_ROUTES = ("/v1/chat/", "/v1/models")


def error_response(path: str, status: int, kind: str, message: str,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    """A refusal of a request for `path`: `kind` is the error's name. On the OpenAI-compatible routes it takes
    OpenAI's shape, the only one OpenAI clients read a message from; elsewhere `{"error": kind, "message": ...}`."""
    if path.startswith(OPENAI_ROUTES):
        body: dict = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    else:
        body = {"error": kind, "message": message}
    return JSONResponse(body, status_code=status, headers=headers)


def typed_error_response(path: str, error: AgentMemError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    if isinstance(error, LaneFullError):
        headers = {**(headers or {}), "retry-after": str(error.retry_after_s)}
    return error_response(path, status_of(error), type(error).__name__, str(error), headers)

"""The server's caps: on request bodies, so one request cannot exhaust its memory, and on the queue
for the model's lane (`ModelLane`), so one caller cannot keep every other caller's turn waiting."""
from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import PayloadTooLargeError, typed_error_response

DEFAULT_MAX_BODY = 8 * 1024 * 1024
LANE_PER_USER = 4  # a user's requests waiting for or using the local model (chat turns, answers)
LANE_TOTAL = 32  # everyone's: at a few seconds a turn, the last waits a minute or two


class BodyLimitMiddleware:
    """Answers 413 to a body over `max_bytes`, whether it announces its length or is chunked.

    It reads the body before the app does: so it comes after the API key check, which needs the headers only.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
        await self.app(scope, _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}], receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = PayloadTooLargeError(f"the request body is over the limit of {self.max_bytes} bytes")
        await typed_error_response(scope["path"], error)(scope, receive, send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive channel that gives the buffered messages first, then the client's own."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed

"""The FastAPI app `agentmem serve` runs: REST, the OpenAI-compatible chat, and MCP at /mcp, over one `Memory`."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from mcp.server.transport_security import TransportSecuritySettings
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import Scope

from ..errors import AgentMemError
from ..memory import Memory
from ..validation import reasons
from . import openai_chat, rest
from .auth import ApiKeyMiddleware, ApiKeys, HostGuardMiddleware, trusted_hosts
from .errors import error_response, typed_error_response
from .jobs import JobRunner
from .limits import DEFAULT_MAX_BODY, BodyLimitMiddleware
from .mcp_server import build_mcp_server, callers_from_headers
from .model_lane import ModelLane

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"


async def post_only(request: Request) -> JSONResponse:
    """Every method but POST on /mcp: 405 with `Allow: POST`. A GET (a client's server-to-client stream) gets it as
    the MCP spec says: stateless, the server has no stream of its own to send; the SDK's stateless transport answered
    it 200 and then nothing, so clients that open the stream on connect hung, and each such GET held a connection for
    ever. Other methods reached the SDK, whose 405 named GET and DELETE in `Allow`, which this server refuses too
    (no session to end: DELETE)."""
    return error_response(request.url.path, 405, "MethodNotAllowed",
                          f"this server takes MCP messages by POST to {MCP_PATH} only (it keeps no session and sends "
                          "no stream of its own)", {"allow": "POST"})


class EveryMethodButPost(Route):
    """A route for every method on its path but POST, which goes on to the next route (the SDK's, which takes all)."""

    def __init__(self, path: str, endpoint: Callable[[Request], Awaitable[JSONResponse]]) -> None:
        super().__init__(path, endpoint)
        self.methods = None  # every method: a function's route takes GET alone unless told

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and scope["method"] == "POST":
            return Match.NONE, {}
        return super().matches(scope)


def create_app(
    memory: Memory,
    *,
    keys: ApiKeys | None = None,
    upstream: str | None = None,
    upstream_key: str | None = None,
    consolidate_every: timedelta | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    host: str = "127.0.0.1",
    allowed_hosts: Sequence[str] = (),
) -> FastAPI:
    """The app over `memory`, which it closes on shutdown (SIGTERM included, through uvicorn's lifespan).

    `host` is the address the server listens on; with `allowed_hosts`, it says which Host headers are
    answered (`trusted_hosts`).
    """
    keys = keys or ApiKeys()
    hosts = trusted_hosts(host, allowed_hosts)
    lane = ModelLane()
    mcp = build_mcp_server(memory, lane, callers_from_headers(keys))
    no_second_host_check = TransportSecuritySettings(enable_dns_rebinding_protection=False)  # HostGuard covers /mcp too
    # Stateless: every tool call carries its key, and no tool keeps state between calls. Sessions held open (the
    # SDK keeps 10,000 for 30 minutes each) would let one key use them all up and lock every other client out.
    mcp_app = mcp.streamable_http_app(streamable_http_path=MCP_PATH, stateless_http=True,
                                      transport_security=no_second_host_check)
    chat = openai_chat.ChatService(memory, lane, openai_chat.UpstreamChat(upstream, upstream_key) if upstream else None)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        jobs = None
        try:
            app.state.jobs = jobs = JobRunner(memory, consolidate_every)
            async with mcp.session_manager.run():
                yield
        finally:
            if jobs is not None:
                jobs.close()
            if chat.upstream is not None:
                chat.upstream.close()
            memory.close()
            log.warning("agentmem: stopped; the store at %s is closed", memory.path)

    app = FastAPI(
        title="agentmem",
        summary="Long-term memory for LLM agents: REST, MCP (at /mcp) and an OpenAI-compatible chat API.",
        version="1",
        lifespan=lifespan,
    )
    app.state.memory, app.state.chat, app.state.lane = memory, chat, lane
    app.include_router(rest.router)
    app.include_router(openai_chat.router)
    app.router.routes.append(EveryMethodButPost(MCP_PATH, post_only))  # before the SDK's route, which takes all
    app.router.routes.extend(mcp_app.routes)
    # The last added runs first: the Host and Origin, then the key (headers only), and only then is the body read.
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body)
    app.add_middleware(ApiKeyMiddleware, keys=keys, open_paths={rest.HEALTH})  # says "up", nothing more
    app.add_middleware(HostGuardMiddleware, hosts=hosts)

    @app.exception_handler(AgentMemError)
    async def typed_error(request: Request, exc: AgentMemError) -> JSONResponse:
        return typed_error_response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request.url.path, 422, "InvalidInputError", reasons(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own refusals (an unknown route, a body that is not JSON) in the same shape as typed errors."""
        if exc.status_code == 400:  # the body could not even be parsed: malformed input, like any other
            return error_response(request.url.path, 422, "InvalidInputError", str(exc.detail))
        return error_response(request.url.path, exc.status_code, HTTPStatus(exc.status_code).phrase.replace(" ", ""),
                              str(exc.detail), exc.headers)

    return app

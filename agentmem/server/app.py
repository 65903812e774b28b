"""The FastAPI app `agentmem serve` runs: REST, the OpenAI-compatible chat, and MCP at /mcp, over one `Memory`."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import AgentMemError
from ..memory import Memory
from . import openai_chat, rest
from .auth import ApiKeyMiddleware, ApiKeys
from .errors import error_body, status_of
from .jobs import JobRunner
from .limits import DEFAULT_MAX_BODY, BodyLimitMiddleware
from .mcp_server import build_mcp_server, callers_from_headers
from .model_lane import ModelLane

log = logging.getLogger(__name__)


def create_app(
    memory: Memory,
    *,
    keys: ApiKeys | None = None,
    upstream: str | None = None,
    upstream_key: str | None = None,
    consolidate_every: timedelta | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    host: str = "127.0.0.1",
) -> FastAPI:
    """The app over `memory`, which it closes on shutdown (SIGTERM included, through uvicorn's lifespan)."""
    keys = keys or ApiKeys()
    lane = ModelLane()
    mcp = build_mcp_server(memory, lane, callers_from_headers(keys))
    mcp_app = mcp.streamable_http_app(streamable_http_path="/mcp", host=host)
    chat = openai_chat.ChatService(memory, lane, openai_chat.UpstreamChat(upstream, upstream_key) if upstream else None)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.jobs = JobRunner(memory, consolidate_every)
        try:
            async with mcp.session_manager.run():
                yield
        finally:
            app.state.jobs.close()
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
    app.router.routes.extend(mcp_app.routes)
    app.add_middleware(ApiKeyMiddleware, keys=keys)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body)  # outermost: refuse before reading anything else

    @app.exception_handler(AgentMemError)
    async def typed_error(request: Request, exc: AgentMemError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=status_of(exc))

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        return JSONResponse({"error": "InvalidInputError", "message": problems}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Starlette's own refusals (an unknown route, a body that is not JSON) in the same shape as typed errors."""
        if exc.status_code == 400:  # the body could not even be parsed: malformed input, like any other
            return JSONResponse({"error": "InvalidInputError", "message": str(exc.detail)}, status_code=422)
        return JSONResponse({"error": HTTPStatus(exc.status_code).phrase.replace(" ", ""), "message": str(exc.detail)},
                            status_code=exc.status_code, headers=exc.headers)

    return app

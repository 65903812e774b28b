"""The MCP server (official `mcp` SDK, 2.x): memory tools with the names MCP clients already know.

The same server runs over stdio (`agentmem mcp`) and over streamable HTTP at `/mcp` inside
`agentmem serve`; over HTTP, a user-bound API key scopes every tool and resource to its user.
Tools return pydantic models, so clients get structured content as well as text.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from mcp.server import MCPServer, ServerRequestContext
from mcp.server.context import CallNext, HandlerResult
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.shared.exceptions import MCPError
from mcp.types import INTERNAL_ERROR, INVALID_PARAMS, CallToolResult, TextContent
from pydantic import BaseModel, ValidationError

from ..errors import AgentMemError, InvalidInputError, NoteNotFoundError
from ..memory import Memory
from ..notes import Answer, ConsolidationReport, Hit, Note
from .access import ScopedMemory
from .auth import ApiKeys, Caller
from .model_lane import ModelLane
from .models import STRICT

RESOURCE_NOT_FOUND = -32002  # the MCP specification's error code for a resource that does not exist
# a resource read's refusal, as the client's fault where it is (a store that cannot be reached is the server's)
RESOURCE_CODES = {NoteNotFoundError: RESOURCE_NOT_FOUND, InvalidInputError: INVALID_PARAMS}

INSTRUCTIONS = (
    "Long-term memory. add_memory stores what is worth keeping (scope it with user_id); "
    "search_memories finds notes before you answer; get/update/delete_memory manage one note "
    "(memory_id is the note id); answer replies from memory; each note is also the resource memory://notes/{id}."
)


class Deleted(BaseModel):
    deleted: str


class Hits(BaseModel):
    hits: list[Hit]


def callers_from_headers(keys: ApiKeys) -> Callable[[Context], Caller]:
    """Over HTTP the caller is the request's API key (the HTTP layer already refused bad keys)."""

    def caller(ctx: Context) -> Caller:
        request = ctx.request_context.request
        return keys.caller(request.headers if request is not None else {})  # no request, no key: refused if keys are on

    return caller


def strict_tool(fn: Callable[..., Any]) -> Tool:
    """A tool (described by `fn`'s docstring) that takes its arguments as the REST bodies do: no unknown
    ones, no "5" for 5. The SDK would drop an unknown argument: a mistyped `user` stored a private note unowned."""
    tool = Tool.from_function(fn)

    class Arguments(tool.fn_metadata.arg_model):
        model_config = STRICT

    tool.fn_metadata.arg_model = Arguments  # the SDK reads it at each call
    tool.parameters = Arguments.model_json_schema(by_alias=True)  # what clients see: "additionalProperties": false
    return tool


class StrictArguments:
    """MCP middleware: a tool call whose arguments its tool refuses gets a tool error in the shape of the
    tools' other errors (`InvalidInputError: ...`), naming each unknown argument and what the tool takes."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        self.tools = {tool.name: tool for tool in tools}

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        params = ctx.params if isinstance(ctx.params, dict) else {}
        name, arguments = params.get("name"), params.get("arguments")
        known = ctx.method == "tools/call" and isinstance(name, str) and isinstance(arguments, (dict, type(None)))
        tool = self.tools.get(name) if known else None  # malformed params: the SDK answers INVALID_PARAMS
        if tool is not None:
            try:
                tool.fn_metadata.validate_arguments(dict(arguments or {}))
            except ValidationError as exc:
                text = f"InvalidInputError: {_problems(exc)} ({tool.name} takes {', '.join(tool.parameters['properties'])})"
                return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)
        return await call_next(ctx)


def _problems(exc: ValidationError) -> str:
    def problem(error: Any) -> str:
        where = ".".join(str(part) for part in error["loc"])
        return f"unknown argument {where!r}" if error["type"] == "extra_forbidden" else f"{where}: {error['msg']}"

    return "; ".join(problem(error) for error in exc.errors())


def build_mcp_server(memory: Memory, lane: ModelLane,
                     caller_of: Callable[[Context], Caller] = lambda ctx: Caller()) -> MCPServer:
    """An MCP server over `memory`; `caller_of` says whose rights a request carries (default: every user).
    The tools that use the local model (answer, consolidate) take their turn on `lane`."""
    def scoped(ctx: Context) -> ScopedMemory:
        return ScopedMemory(memory, caller_of(ctx))

    def typed(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except AgentMemError as exc:
            raise ToolError(f"{type(exc).__name__}: {exc}") from exc

    async def on_lane(call: Callable[[], Any], user: str | None = None) -> Any:
        """`typed(call)` on the model's lane, queued for `user`; a full queue is a typed tool error too."""
        try:
            return await lane.run(call, user=user)
        except AgentMemError as exc:
            raise ToolError(f"{type(exc).__name__}: {exc}") from exc

    def add_memory(text: str, ctx: Context, user_id: str | None = None, agent_id: str | None = None,
                   session_id: str | None = None, tags: list[str] | None = None,
                   metadata: dict[str, Any] | None = None) -> Note:
        """Store a memory (a note); a near-duplicate reinforces the note it repeats."""
        mem = scoped(ctx)

        def add() -> Note:
            mem.may_mark_shared(metadata)
            return memory.remember(text, user_id=mem.user(user_id), agent_id=agent_id, session_id=session_id,
                                   tags=tags or (), metadata=metadata)

        return typed(add)

    def search_memories(query: str, ctx: Context, user_id: str | None = None, agent_id: str | None = None,
                        session_id: str | None = None, k: int = 5,
                        filters: dict[str, str | int | float | bool] | None = None) -> Hits:
        """Find the memories that best answer a query, best first, each with its score and why."""
        mem = scoped(ctx)
        return Hits(hits=typed(lambda: memory.recall(query, k=k, user_id=mem.user(user_id), agent_id=agent_id,
                                                     session_id=session_id, filters=filters)))

    def get_memory(memory_id: str, ctx: Context) -> Note:
        """One memory by its id."""
        return typed(lambda: scoped(ctx).note(memory_id))

    def update_memory(memory_id: str, ctx: Context, text: str | None = None, tags: list[str] | None = None,
                      metadata: dict[str, Any] | None = None) -> Note:
        """Change a memory's text, tags or metadata; the previous version is kept in its history."""
        mem = scoped(ctx)

        def change() -> Note:
            mem.may_change(mem.note(memory_id))
            mem.may_mark_shared(metadata)
            return memory.update(memory_id, text=text, tags=tags, metadata=metadata)

        return typed(change)

    def delete_memory(memory_id: str, ctx: Context) -> Deleted:
        """Forget a memory for good (and retract its edit of the model's weights, if any)."""
        mem = scoped(ctx)

        def delete() -> Deleted:
            mem.note(memory_id)
            memory.forget(memory_id)
            return Deleted(deleted=memory_id)

        return typed(delete)

    async def consolidate(ctx: Context, dry_run: bool = False, policy: dict[str, Any] | None = None) -> ConsolidationReport:
        """Move often-recalled facts into the local model's weights (dry_run: only the plan). Takes minutes on a CPU."""
        mem = scoped(ctx)

        def run() -> ConsolidationReport:
            mem.require_all_users("consolidation")
            return memory.consolidate(policy, dry_run=dry_run)

        return await on_lane(run)

    async def answer(question: str, ctx: Context, user_id: str | None = None, agent_id: str | None = None,
                     session_id: str | None = None, k: int = 5) -> Answer:
        """Answer a question from memory: from the weights where edits cover it, else with recalled notes as context."""
        user = typed(lambda: scoped(ctx).user(user_id))
        return await on_lane(lambda: memory.answer(question, k=k, user_id=user, agent_id=agent_id,
                                                   session_id=session_id), user)

    tools = [strict_tool(tool) for tool in (add_memory, search_memories, get_memory, update_memory, delete_memory,
                                            consolidate, answer)]
    server = MCPServer("agentmem", instructions=INSTRUCTIONS, tools=tools, middleware=[StrictArguments(tools)])

    @server.resource("memory://notes/{note_id}", mime_type="application/json", description="One note, as JSON.")
    def note_resource(note_id: str, ctx: Context) -> str:
        try:
            return scoped(ctx).note(note_id).model_dump_json()
        except AgentMemError as exc:
            raise MCPError(RESOURCE_CODES.get(type(exc), INTERNAL_ERROR), f"{type(exc).__name__}: {exc}") from exc

    return server

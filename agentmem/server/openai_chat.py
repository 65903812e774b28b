"""An OpenAI-compatible chat API: `POST /v1/chat/completions` (streamed or not) and `GET /v1/models`.

Every request is one `MemoryChat` turn for the request's user (the standard `user` field, or the
`X-AgentMem-User` header): notes are recalled before the reply and go to the model as a system
message, and the user's last message is remembered. The reply comes from the bundled local model
(with its edits), or, with an upstream URL, from any OpenAI-compatible server. A streamed reply is
sent as server-sent chunks once the reply is complete (the chat function returns whole texts).
A local turn waits on the model's lane (`ModelLane`); if its client has gone by then, it is not
run, so nothing is recalled or remembered for it. An upstream turn runs on the upstream's own lane
(`UpstreamLane`), admitted as local turns are. Tool calling is refused: the turn's reply is text.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from .. import validation
from ..errors import InvalidInputError
from ..facts import ChatFunction
from ..integrations.chat import SYSTEM, MemoryChat
from ..memory import Memory
from ..notes import MAX_STORED_METADATA_DEPTH, CleanStr, json_value
from .access import ScopedMemory
from .client import redacted_url, split_credentials
from .model_lane import ModelLane, UpstreamLane
from .errors import UpstreamError
from .rest import scoped

LOCAL_MODEL = "agentmem-local"
log = logging.getLogger(__name__)


class OpenAIError(BaseModel):
    message: str
    type: str = Field(description="the typed error's class name, e.g. InvalidInputError")
    param: None = None
    code: None = None


class OpenAIErrorBody(BaseModel):
    """How these routes refuse: OpenAI's error shape, the one OpenAI clients take the message from."""

    error: OpenAIError


ERRORS = {status: {"model": OpenAIErrorBody} for status in (401, 403, 413, 421, 422, 429, 502, 503)}
router = APIRouter(prefix="/v1", tags=["openai"], responses=ERRORS)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text or "" for part in self.content if part.type == "text")
        return self.content or ""


class ChatCompletionRequest(BaseModel):
    """The fields agentmem uses; other OpenAI parameters are accepted and passed upstream."""

    model_config = ConfigDict(extra="allow")
    model: Annotated[CleanStr, Field(min_length=1, max_length=256)] = LOCAL_MODEL  # echoed in the response
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    stream: StrictBool = False
    user: str | None = None
    max_tokens: int | None = Field(None, ge=1, le=2048, description="passed upstream; local replies take up to 96 tokens")
    max_completion_tokens: int | None = Field(None, ge=1, le=2048)

    @model_validator(mode="after")
    def plain_json(self) -> ChatCompletionRequest:
        """Every message and parameter, the ones passed upstream too, as JSON any server reads: finite numbers
        and valid Unicode without NUL (else the upstream call failed and the client's input read as its fault)."""
        json_value(self.model_dump(), max_depth=MAX_STORED_METADATA_DEPTH)
        return self


TOOL_FIELDS = ("tools", "functions", "tool_choice", "function_call")
TOOL_MESSAGE_FIELDS = ("tool_calls", "function_call")


def refuse_tool_calling(body: ChatCompletionRequest) -> None:
    """Raises `InvalidInputError` for a request that offers tools or carries a tool call or its result: a turn's
    reply is text, so a tool call the model made would be lost (and the turn's result could not come back)."""
    offered = [f for f in TOOL_FIELDS if (body.model_extra or {}).get(f) not in (None, [])]
    called = [f"a {m.role!r} message" for m in body.messages if m.role in ("tool", "function")]
    called += [f"a message's {f!r}" for m in body.messages for f in TOOL_MESSAGE_FIELDS
               if (m.model_extra or {}).get(f) not in (None, [])]
    if offered or called:
        found = ", ".join([repr(f) for f in offered] + called)
        raise InvalidInputError(f"tool calling is not supported by agentmem's chat endpoint (this request carries "
                                f"{found}); send tool-calling requests to the model's own server")


def header_text(value: str | None, name: str) -> str | None:
    """A header's value as the client sent it: UTF-8, as httpx and curl send text (Starlette reads every header as
    Latin-1, which filed 'José' under 'JosÃ©', another user). Raises `InvalidInputError` for bytes that are not UTF-8."""
    if value is None:
        return None
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise InvalidInputError(f"the {name} header is not valid UTF-8") from None


def system_message(body: ChatCompletionRequest) -> str:
    """The request's system and developer messages, as one."""
    return "\n\n".join(m.text() for m in body.messages[:-1] if m.role in ("system", "developer"))


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"


class MemoryTrace(BaseModel):
    """agentmem's addition to the OpenAI response: which notes were recalled, which note the turn became."""

    recalled: list[str]
    remembered: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    agentmem: MemoryTrace


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "agentmem"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class UpstreamChat:
    """A chat function that forwards the messages (recalled notes included) to an OpenAI-compatible server.

    `api_key` goes as `Authorization: Bearer KEY`. A user and password in `base_url` go as Basic auth only when
    there is no key (both cannot be the Authorization header: the key wins, and the log says the URL's are not
    sent). Neither shows anywhere: errors, which reach API clients, name the server as `shown` (the password
    as ***), and the httpx client's URL, which its log lines show, holds no user part."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 120.0) -> None:
        url = base_url.rstrip("/")
        self.shown = redacted_url(url)
        plain, credentials = split_credentials(url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        if api_key and credentials is not None:
            log.warning("the upstream URL's user and password (%s) are not sent: the upstream key is, as a Bearer "
                        "header", self.shown)
            credentials = None
        self.client = httpx.Client(base_url=plain, headers=headers, auth=credentials, timeout=timeout)

    def complete(self, messages: list[dict[str, str]], model: str, options: dict[str, Any]) -> str:
        try:
            response = self.client.post("/chat/completions", json={**options, "model": model, "messages": messages,
                                                                   "stream": False})
            response.raise_for_status()
            content = response.json()["choices"][0]["message"]["content"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise UpstreamError(f"the upstream server at {self.shown} failed: {exc}") from None
        if not isinstance(content, str | None):  # the upstream's fault, not the caller's
            raise UpstreamError(f"the upstream server at {self.shown} replied with "
                                f"{type(content).__name__} content, not text")
        return content or ""

    def models(self) -> ModelList:
        try:
            response = self.client.get("/models")
            response.raise_for_status()
            return ModelList.model_validate(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            raise UpstreamError(f"the upstream server at {self.shown} failed: {exc}") from None

    def close(self) -> None:
        self.client.close()


class ChatService:
    """Turns chat requests into `MemoryChat` turns, answered locally or upstream."""

    def __init__(self, memory: Memory, lane: ModelLane, upstream: UpstreamChat | None = None,
                 upstream_lane: UpstreamLane | None = None) -> None:
        """`lane`: where local turns take their turn with the server's other uses of the model;
        `upstream_lane`: where upstream turns wait for the upstream (a lane of their own by default)."""
        self.memory, self.lane, self.upstream = memory, lane, upstream
        self.upstream_lane = upstream_lane or UpstreamLane()

    def chat_function(self, body: ChatCompletionRequest) -> ChatFunction | None:
        """The upstream server as a chat function; None for `MemoryChat`'s own (the local model, scoped to the user)."""
        if self.upstream is None:
            return None
        upstream = self.upstream
        options = {k: v for k, v in (body.model_extra or {}).items() if k != "stream_options"}  # asked unstreamed
        if body.max_tokens or body.max_completion_tokens:
            options["max_tokens"] = body.max_completion_tokens or body.max_tokens
        return lambda messages: upstream.complete(messages, body.model, options)

    async def run_turn(
        self, body: ChatCompletionRequest, mem: ScopedMemory, user: str | None, session: str | None,
        client: Request | None = None,
    ) -> ChatCompletion:
        """`turn` on a worker thread; a local turn on the model's lane (`ModelLane`), queued for the
        (checked) user it acts for and skipped if `client` has gone by its turn; an upstream turn on the
        upstream's lane (`UpstreamLane`), admitted for that user the same way, off the threads other routes use."""
        user, session = self.checked(body, mem, user, session)
        if self.upstream is not None:
            return await self.upstream_lane.run(self.turn, body, user, session, user=user)
        return await self.lane.run(self.turn, body, user, session, user=user, client=client)

    def checked(self, body: ChatCompletionRequest, mem: ScopedMemory, user: str | None,
                session: str | None) -> tuple[str | None, str | None]:
        """The user and session a turn acts for, its messages checked: at once, so a bad turn neither waits
        for the model nor counts as another user's, and changes nothing."""
        refuse_tool_calling(body)
        last = body.messages[-1]
        if last.role != "user" or not last.text().strip():
            raise InvalidInputError("the last message must be a non-empty user message")
        system = system_message(body)
        if system and self.upstream is None:  # the local model reads it: checked as a note's text is
            validation.text(system, self.memory.config.max_text_chars, "the system message")
        return mem.user(user), validation.scope("session_id", session)

    def turn(self, body: ChatCompletionRequest, user: str | None, session: str | None) -> ChatCompletion:
        """One chat turn as `checked` let it through: recall, reply, remember."""
        *earlier, last = body.messages
        chat = MemoryChat(self.memory, self.chat_function(body), user_id=user, system=system_message(body) or SYSTEM)
        if session is not None:
            chat.session_id = session
        chat.history = [{"role": m.role, "content": m.text()} for m in earlier if m.role in ("user", "assistant")]
        reply = chat.reply(last.text())
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=body.model,
            choices=[Choice(message=AssistantMessage(content=reply.text))],
            agentmem=MemoryTrace(recalled=[hit.note.id for hit in reply.recalled], remembered=reply.remembered.id),
        )


async def service(request: Request) -> ChatService:
    return request.app.state.chat


@router.post("/chat/completions", response_model=ChatCompletion,
             responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
             summary="a chat turn with long-term memory (OpenAI-compatible)")
async def chat_completions(
    request: Request,
    body: ChatCompletionRequest,
    mem: Annotated[ScopedMemory, Depends(scoped)],
    chat: Annotated[ChatService, Depends(service)],
    x_agentmem_user: Annotated[str | None, Header()] = None,
    x_agentmem_session: Annotated[str | None, Header()] = None,
) -> ChatCompletion | StreamingResponse:
    header_user = header_text(x_agentmem_user, "X-AgentMem-User")
    session = header_text(x_agentmem_session, "X-AgentMem-Session")
    user = body.user if body.user is not None else header_user  # "" is refused, not taken for no user
    completion = await chat.run_turn(body, mem, user, session, request)
    if body.stream:
        return StreamingResponse(_chunks(completion), media_type="text/event-stream")
    return completion


def _chunks(completion: ChatCompletion) -> Iterator[str]:
    """The reply as `chat.completion.chunk` events: the role, the text word by word, the stop, then [DONE]."""
    text = completion.choices[0].message.content
    pieces = [piece for word in text.split(" ") for piece in (word, " ")][:-1] if text else []

    def chunk(delta: dict[str, str], finish: str | None = None) -> str:
        event = {"id": completion.id, "object": "chat.completion.chunk", "created": completion.created,
                 "model": completion.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if finish is not None:
            event["agentmem"] = completion.agentmem.model_dump()
        return f"data: {json.dumps(event)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for piece in pieces:
        yield chunk({"content": piece})
    yield chunk({}, "stop")
    yield "data: [DONE]\n\n"


@router.get("/models", response_model=ModelList, summary="the models this server answers with")
def models(chat: Annotated[ChatService, Depends(service)]) -> ModelList:
    if chat.upstream is not None:
        return chat.upstream.models()
    return ModelList(data=[Model(id=LOCAL_MODEL)])

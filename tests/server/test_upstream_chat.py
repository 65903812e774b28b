"""The chat endpoint in front of an upstream server, driven by real clients (the `openai` client and httpx):
what it admits, which threads its turns hold, the user its headers name, and tool calling, which it refuses."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import anyio
import anyio.to_thread
import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from agentmem import InvalidInputError
from agentmem.server.access import ScopedMemory
from agentmem.server.auth import ApiKeys, Caller
from agentmem.server.model_lane import ModelLane
from agentmem.server.errors import UpstreamError
from agentmem.server.openai_chat import ChatCompletionRequest, ChatService, UpstreamChat
from agentmem.server.limits import LANE_PER_USER, LANE_TOTAL

from tests.conftest import free_port

from .conftest import (ADMIN_KEY, ALICE_KEY, BOB_KEY, KEYS, JsonReplies, Served, assert_clean_stop, stand_in_upstream,
                       start_server)

JOSE_KEY = "jose-key-0001"


class SlowUpstream(JsonReplies):
    """An OpenAI-compatible server: a request whose model is `slow-N` is answered after N seconds; one offering
    tools is answered with a tool call, as OpenAI answers it. Every chat request it gets is counted."""

    received: list[dict] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).received.append(body)
        model = body.get("model", "")
        if model.startswith("slow-"):
            time.sleep(float(model.removeprefix("slow-")))
        if body.get("tools"):
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}
        else:
            message = {"role": "assistant", "content": f"Noted ({len(body['messages'])} messages)."}
        self.answer({"id": "up", "object": "chat.completion", "created": 0, "model": model,
                     "choices": [{"index": 0, "message": message,
                                  "finish_reason": "tool_calls" if body.get("tools") else "stop"}]})

    def do_GET(self) -> None:
        self.answer({"object": "list", "data": [{"id": "up-model", "object": "model", "created": 0, "owned_by": "t"}]})



class ManyConnections(ThreadingHTTPServer):
    request_queue_size = 128   # dozens of turns connect at once
    daemon_threads = True


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with stand_in_upstream(SlowUpstream, ManyConnections) as url:
        yield url


@pytest.fixture(scope="module")
def proxy(upstream, tmp_path_factory) -> Iterator[Served]:
    """A keyed server (admin, alice, bob, and a key bound to José) answering chats with `upstream`."""
    keys = [*KEYS, f"{JOSE_KEY}:José"]
    served = start_server(tmp_path_factory.mktemp("upstream-proxy"), "--upstream", upstream,
                          *(f"--api-key={k}" for k in keys), key=ADMIN_KEY)
    yield served
    assert_clean_stop(served)


def test_one_users_upstream_chats_are_admitted_like_local_ones_and_stall_no_other_route(proxy):
    """45 concurrent chats of one user were all taken, each holding a thread of the pool the REST routes share
    while the upstream thought: another user's plain list of notes waited for the upstream's answers."""

    async def flood(key: str, users: list[str | None], delay_s: float) -> tuple[list[object], float]:
        client = AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0, timeout=120)
        bob = httpx.AsyncClient(base_url=proxy.url, headers={"Authorization": f"Bearer {BOB_KEY}"}, timeout=120)
        async with client, bob:

            async def chat(user: str | None) -> object:
                extra = {"user": user} if user else {}
                try:
                    return await client.chat.completions.create(
                        model=f"slow-{delay_s}", messages=[{"role": "user", "content": "I keep two cats."}], **extra)
                except openai.APIStatusError as exc:
                    return exc

            chats = [asyncio.create_task(chat(user)) for user in users]
            await asyncio.sleep(1.5)   # every chat has reached the server and waits for the upstream
            started = time.monotonic()
            listed = await bob.get("/v1/notes")   # needs a thread of the shared pool, and no model
            list_s = time.monotonic() - started
            assert listed.status_code == 200
            return await asyncio.gather(*chats), list_s

    delay_s = 5.0
    answers, list_s = asyncio.run(flood(ALICE_KEY, [None] * 45, delay_s))
    refused = [a for a in answers if isinstance(a, openai.RateLimitError)]
    assert len(answers) - len(refused) == LANE_PER_USER, answers   # the others answered at once: 429
    assert {a.type for a in refused} == {"LaneFullError"}
    assert "requests for user 'alice' already wait for the upstream server" in refused[0].message
    assert int(refused[0].response.headers["retry-after"]) >= 1
    assert list_s < 1.5, list_s   # not after the upstream's 5 s

    # an unbound key naming 45 users: 32 in all wait for the upstream, on threads of their own
    answers, list_s = asyncio.run(flood(ADMIN_KEY, [f"user-{i}" for i in range(45)], delay_s))
    refused = [a for a in answers if isinstance(a, openai.RateLimitError)]
    assert len(answers) - len(refused) == LANE_TOTAL, answers
    assert f"{LANE_TOTAL} requests already wait for the upstream server" in refused[0].message
    assert list_s < 1.5, list_s
    with proxy.client(ADMIN_KEY) as admin:   # a refused turn remembered nothing
        assert len(admin.get("/v1/notes", params={"user_id": "alice"}).json()) == LANE_PER_USER
        assert sum(len(admin.get("/v1/notes", params={"user_id": f"user-{i}"}).json()) for i in range(45)) == LANE_TOTAL


def test_upstream_turns_hold_no_thread_of_the_pool_the_other_routes_share():
    """Each upstream turn held one of anyio's 40 default threads, which FastAPI's sync routes and MCP's tools use."""
    release = threading.Event()
    service = ChatService(memory=None, lane=ModelLane(), upstream=object())
    service.turn = lambda body, user, session: release.wait(10)

    async def turns_while_another_route_runs() -> float:
        async with anyio.create_task_group() as turns:
            for i in range(LANE_TOTAL):
                body = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], user=f"user-{i}")
                turns.start_soon(service.run_turn, body, ScopedMemory(None, Caller()), body.user, None)
            await anyio.sleep(0.2)
            assert service.upstream_lane.threads.borrowed_tokens == LANE_TOTAL
            shared = anyio.to_thread.current_default_thread_limiter().borrowed_tokens
            release.set()
        return shared

    assert anyio.run(turns_while_another_route_runs) == 0


def test_a_user_named_in_a_header_is_read_as_utf8(proxy):
    """`X-AgentMem-User: José`, sent as UTF-8 as httpx and curl send it, filed the turn under 'JosÃ©': another
    user's scope, which a key bound to José could not even name (403)."""
    with proxy.client(ADMIN_KEY) as admin:
        told = admin.post("/v1/chat/completions", headers={"X-AgentMem-User": "José".encode(),
                                                           "X-AgentMem-Session": "sessão-1".encode()},
                          json={"messages": [{"role": "user", "content": "My locker code is 4417."}]})
        assert told.status_code == 200, told.text
        note = admin.get(f"/v1/notes/{told.json()['agentmem']['remembered']}").json()
        assert (note["user_id"], note["session_id"]) == ("José", "sessão-1")
        asked = admin.post("/v1/chat/completions", json={
            "user": "José", "messages": [{"role": "user", "content": "What is my locker code?"}]})
        assert asked.json()["agentmem"]["recalled"] == [note["id"]]
        assert admin.get("/v1/notes", params={"user_id": "JosÃ©"}).json() == []
        before = admin.get("/v1/stats").json()["notes"]
        for header in ("X-AgentMem-User", "X-AgentMem-Session"):   # bytes that are no UTF-8: refused, not guessed
            refused = admin.post("/v1/chat/completions", headers={header: b"Jos\xe9"},
                                 json={"messages": [{"role": "user", "content": "My locker code is 4417."}]})
            assert refused.status_code == 422, refused.text
            assert refused.json()["error"]["type"] == "InvalidInputError"
            assert f"the {header} header is not valid UTF-8" in refused.json()["error"]["message"]
        assert admin.get("/v1/stats").json()["notes"] == before
    with proxy.client(JOSE_KEY) as jose:   # the key's own user, named in the header
        own = jose.post("/v1/chat/completions", headers={"X-AgentMem-User": "José".encode()},
                        json={"messages": [{"role": "user", "content": "I cycle to work."}]})
        assert own.status_code == 200, own.text


def test_tool_calling_is_refused_before_anything_is_stored_or_sent_upstream(proxy):
    """The upstream's tool call was dropped (finish_reason "stop", content "") and the tool's result refused
    as a turn without a user message: an agent's tool call vanished."""
    client = OpenAI(base_url=f"{proxy.url}/v1", api_key=ALICE_KEY, max_retries=0)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    ask = {"role": "user", "content": "What's the weather in Oslo?"}
    asks = [
        ({"tools": tools}, [ask], "'tools'"),
        ({"tool_choice": "auto"}, [ask], "'tool_choice'"),
        ({"extra_body": {"functions": [tools[0]["function"]]}}, [ask], "'functions'"),
        ({"extra_body": {"function_call": "auto"}}, [ask], "'function_call'"),
        ({}, [ask, {"role": "assistant", "content": None, "tool_calls": [call]},
              {"role": "tool", "tool_call_id": "call_1", "content": "12 C"}], "a 'tool' message"),
        ({}, [ask, {"role": "assistant", "content": None, "tool_calls": [call]}, ask], "a message's 'tool_calls'"),
        ({}, [ask, {"role": "function", "name": "get_weather", "content": "12 C"}, ask], "a 'function' message"),
    ]
    with proxy.client(ADMIN_KEY) as admin:
        before, sent = admin.get("/v1/stats").json()["notes"], len(SlowUpstream.received)
        for options, messages, named in asks:
            with pytest.raises(openai.UnprocessableEntityError, match="tool calling is not supported") as refused:
                client.chat.completions.create(model="m", messages=messages, **options)
            assert refused.value.type == "InvalidInputError" and named in refused.value.message, refused.value.message
        assert admin.get("/v1/stats").json()["notes"] == before   # nothing remembered
    assert len(SlowUpstream.received) == sent   # nothing sent upstream
    plain = client.chat.completions.create(model="m", messages=[ask], tools=[])   # no tool offered: a plain turn
    assert plain.choices[0].message.content.startswith("Noted")


def test_an_api_key_no_client_can_send_is_refused_at_start_up(tmp_path):
    """'clé-secrète-1' was taken, but httpx (the openai and mcp clients' transport) cannot send it, and a UTF-8
    header reads as Latin-1 to the server: a key nobody could use."""
    for bad in ("clé-secrète-1:alice", "tab\tkey-0001", "wide-key-０００１"):
        with pytest.raises(InvalidInputError, match="visible ASCII"):
            ApiKeys.parse([bad])
    keys_file = tmp_path / "keys"
    keys_file.write_text("good-key-0001:ann\nclé-secrète-1:alice\n", encoding="utf-8")
    for options in (["--api-key", "clé-secrète-1:alice"], ["--keys-file", str(keys_file)]):
        store = tmp_path / f"store{len(options[1])}"
        done = subprocess.run([sys.executable, "-m", "agentmem.cli", "--path", str(store), "serve",
                               "--port", str(free_port()), *options], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "visible ASCII" in done.stderr
        assert not store.exists()   # nothing opened
    assert ApiKeys.parse(["good-key-0001:José"]).caller({"x-api-key": "good-key-0001"}).user_id == "José"


UPSTREAM_PASSWORD, UPSTREAM_KEY = "UpS3cretPw", "up-key-0001"


class FailingUpstream(JsonReplies):
    """An OpenAI-compatible server that fails as its `model` asks: `500`, `not-json`, `number` (content 42), `drop`
    (the connection closed without a reply); else a reply. It keeps the Authorization header of every request."""

    authorization: list[str | None] = []

    def do_POST(self) -> None:
        type(self).authorization.append(self.headers.get("authorization"))
        model = json.loads(self.rfile.read(int(self.headers["content-length"])))["model"]
        if model == "drop":
            self.close_connection = True
            self.connection.close()
            return
        if model in ("500", "not-json"):
            data = b"<html>upstream trouble</html>"
            self.send_response(500 if model == "500" else 200)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        content = 42 if model == "number" else "Fine."
        self.answer({"choices": [{"message": {"role": "assistant", "content": content}}]})

    def do_GET(self) -> None:
        type(self).authorization.append(self.headers.get("authorization"))
        self.send_response(500)
        self.send_header("content-length", "0")
        self.end_headers()


def test_the_upstream_urls_password_is_shown_to_no_client_and_logged_nowhere_and_the_upstream_key_is_sent(
        tmp_path):
    """`--upstream http://user:PASSWORD@host/v1`: every failure's 502 told the API client (a key bound to one user
    too) the URL with its password, httpx's log line of every upstream request held it, and `--upstream-key` was
    not sent: the URL's user and password went as Basic auth in its place."""
    with stand_in_upstream(FailingUpstream) as upstream:
        url = upstream.replace("http://", f"http://upuser:{UPSTREAM_PASSWORD}@")
        shown = upstream.replace("http://", "http://upuser:***@")
        served = start_server(tmp_path, "--upstream", url, "--upstream-key", UPSTREAM_KEY,
                              *(f"--api-key={k}" for k in KEYS), key=ADMIN_KEY)
        try:
            alice = OpenAI(base_url=f"{served.url}/v1", api_key=ALICE_KEY, max_retries=0)
            ask = [{"role": "user", "content": "I keep bees."}]
            assert alice.chat.completions.create(model="fine", messages=ask).choices[0].message.content == "Fine."
            assert FailingUpstream.authorization[-1] == f"Bearer {UPSTREAM_KEY}"   # the key, as a Bearer header
            for model, said in (("500", "500 Internal Server Error"), ("not-json", "Expecting value"),
                                ("number", "int content, not text"), ("drop", "disconnected")):
                with pytest.raises(openai.InternalServerError) as failed:
                    alice.chat.completions.create(model=model, messages=ask)
                assert (failed.value.status_code, failed.value.type) == (502, "UpstreamError")
                message = failed.value.message
                assert f"the upstream server at {shown}" in message and said in message, message
                assert UPSTREAM_PASSWORD not in failed.value.response.text, message
            with pytest.raises(openai.InternalServerError) as failed:   # /v1/models, asked of the upstream
                alice.models.list()
            assert shown in failed.value.message and UPSTREAM_PASSWORD not in failed.value.response.text
            assert {FailingUpstream.authorization[-1]} == {f"Bearer {UPSTREAM_KEY}"}
        finally:
            assert_clean_stop(served)
        logged = "".join(served.log.read_text().split())   # rich wraps long lines
        assert UPSTREAM_PASSWORD not in logged
        assert "areNOTsent:theupstreamkeyis".lower() in logged.lower()   # the operator is told which was sent

        # without --upstream-key, the URL's user and password still reach the upstream (Basic auth), unshown
        chat = UpstreamChat(url)
        try:
            with pytest.raises(UpstreamError) as failed:
                chat.complete([{"role": "user", "content": "hi"}], "500", {})
            assert shown in str(failed.value) and UPSTREAM_PASSWORD not in str(failed.value)
            assert FailingUpstream.authorization[-1] == httpx.BasicAuth("upuser", UPSTREAM_PASSWORD)._auth_header
        finally:
            chat.close()

"""The OpenAI-compatible chat, driven by the official `openai` client: local model and upstream mode."""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import anyio
import anyio.to_thread
import openai
import pytest
from openai import OpenAI

from agentmem import InvalidInputError
from agentmem.server.access import ScopedMemory
from agentmem.server.auth import Caller
from agentmem.server.model_lane import ModelLane
from agentmem.server.openai_chat import ChatCompletionRequest, ChatService

from .conftest import ADMIN_KEY, ALICE_KEY, JsonReplies, stand_in_upstream, start_server



def trace(response) -> dict:
    """agentmem's addition to the response: the recalled note ids and the note the user's turn became."""
    return response.model_extra["agentmem"]


@pytest.mark.slow   # the server loads the bundled SmolLM2
def test_a_later_session_recalls_what_an_earlier_one_was_told(model_server):
    client = OpenAI(base_url=f"{model_server.url}/v1", api_key="unused", timeout=600)
    user = f"kai-{uuid.uuid4().hex[:6]}"
    assert [m.id for m in client.models.list().data] == ["agentmem-local"]
    told = client.chat.completions.create(
        model="agentmem-local", user=user, max_tokens=24,
        messages=[{"role": "user", "content": "My sister Mira lives in Tromsø and works as a glassblower."}],
    )
    assert told.choices[0].message.content.strip() and trace(told)["recalled"] == []

    stream = client.chat.completions.create(   # a new conversation: only long-term memory links the two
        model="agentmem-local", user=user, max_tokens=24, stream=True,
        messages=[{"role": "user", "content": "What does my sister Mira do for a living?"}],
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text.strip() and chunks[-1].choices[0].finish_reason == "stop"
    assert trace(told)["remembered"] in chunks[-1].model_extra["agentmem"]["recalled"]

    other = client.chat.completions.create(   # another user does not see Kai's notes
        model="agentmem-local", user=f"other-{uuid.uuid4().hex[:6]}", max_tokens=8,
        messages=[{"role": "user", "content": "What does my sister Mira do for a living?"}],
    )
    assert trace(told)["remembered"] not in trace(other)["recalled"]


@pytest.mark.slow   # the server loads the bundled SmolLM2
def test_upstream_mode_forwards_to_another_real_server_with_the_recalled_notes(model_server, tmp_path):
    before = model_server.client(None).get("/v1/stats").json()["notes"]
    proxy = start_server(tmp_path, "--upstream", f"{model_server.url}/v1")
    try:
        client = OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", timeout=600)
        assert [m.id for m in client.models.list().data] == ["agentmem-local"]   # the upstream's models
        told = client.chat.completions.create(
            model="agentmem-local", user="lena", max_tokens=16,
            messages=[{"role": "user", "content": "My cat is called Pixel."}],
        )
        asked = client.chat.completions.create(
            model="agentmem-local", user="lena", max_tokens=16,
            messages=[{"role": "system", "content": "Answer in one short sentence."},
                      {"role": "user", "content": "What is my cat called?"}],
        )
        assert asked.choices[0].message.content.strip()
        assert trace(asked)["recalled"] == [trace(told)["remembered"]]   # recalled here, sent upstream
        assert proxy.client(None).get("/v1/stats").json()["users"] == {"lena": 2}
        # the upstream server answered both turns (and, being an agentmem server itself, remembered them)
        assert model_server.client(None).get("/v1/stats").json()["notes"] == before + 2
    finally:
        proxy.stop()


@pytest.mark.slow   # the server loads the bundled SmolLM2
def test_malformed_chat_requests_get_typed_errors(model_server):
    with model_server.client(None) as client:
        for body in ({"messages": []}, {"messages": [{"role": "assistant", "content": "hi"}]},
                     {"messages": [{"role": "user", "content": "   "}]}, {"messages": [{"role": "wizard"}]}):
            response = client.post("/v1/chat/completions", json=body)
            assert (response.status_code, response.json()["error"]["type"]) == (422, "InvalidInputError"), body
        too_long = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * 10_001}]})
        assert too_long.json()["error"]["message"].startswith("message has 10001 characters")   # not "query"
        before = client.get("/v1/stats").json()
        lone_surrogate = b'{"messages": [{"role": "system", "content": "\\ud800"}, {"role": "user", "content": "hi"}]}'
        surrogate_model = b'{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}'
        asks = [(lone_surrogate, {}), (surrogate_model, {}), (b'{"messages": [{"role": "user", "content": "hi"}]}', {"X-AgentMem-Session": "s" * 300})]
        for body, headers in asks:   # refused before the turn: nothing recalled, nothing remembered
            response = client.post("/v1/chat/completions", content=body,
                                   headers={"content-type": "application/json", **headers})
            assert (response.status_code, response.json()["error"]["type"]) == (422, "InvalidInputError"), body
        assert client.get("/v1/stats").json() == before


def test_local_turns_waiting_for_the_model_hold_no_thread_of_the_shared_pool():
    """Forty chats waiting for the one local model once held every worker thread of the pool the REST
    routes share: another route's call then waited behind them all."""
    service = ChatService(memory=None, lane=ModelLane(total=60), upstream=None)
    model, finished = threading.Lock(), []

    def turn(body, user, session):   # a local turn: the model, one at a time
        with model:
            time.sleep(0.05)
        finished.append(body)

    service.turn = turn

    async def chats_and_another_route() -> int:
        async with anyio.create_task_group() as chats:
            for i in range(60):
                body = ChatCompletionRequest(messages=[{"role": "user", "content": f"Chat number {i}"}])
                chats.start_soon(service.run_turn, body, ScopedMemory(None, Caller()), None, None)
            await anyio.sleep(0.02)
            await anyio.to_thread.run_sync(lambda: None)   # another route's work, in the shared pool
            return len(finished)

    assert anyio.run(chats_and_another_route) < 10   # not after the 20 chats queued before it for a thread


def test_a_malformed_turn_is_refused_at_once_not_after_waiting_for_the_model():
    """It waited behind every turn queued for the model first, counted as whatever user it named."""
    service = ChatService(memory=None, lane=ModelLane(), upstream=None)
    release = threading.Event()
    bad = [ChatCompletionRequest(messages=[{"role": "assistant", "content": "I answer myself"}]),
           ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], user="alice\n")]

    async def refused_while_the_model_is_busy() -> list[str]:
        errors = []
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: service.lane.run(lambda: release.wait(10)))   # holds the model
            await anyio.sleep(0.05)
            for body in bad:
                with anyio.fail_after(2):   # not behind the held turn
                    try:
                        await service.run_turn(body, ScopedMemory(None, Caller()), body.user, None)
                    except InvalidInputError as exc:
                        errors.append(str(exc))
            release.set()
        return errors

    assert len(anyio.run(refused_while_the_model_is_busy)) == 2


def test_the_openai_client_shows_why_a_request_was_refused(server):
    """Errors on these routes are in OpenAI's shape: the `openai` client takes the message from no other."""
    alice = OpenAI(base_url=f"{server.url}/v1", api_key=ALICE_KEY, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError, match="may only reach the notes of user 'alice'") as denied:
        alice.chat.completions.create(model="agentmem-local", user="bob", messages=[{"role": "user", "content": "hi"}])
    assert denied.value.type == "AccessDeniedError"
    with pytest.raises(openai.UnprocessableEntityError, match="messages") as malformed:
        alice.chat.completions.create(model="agentmem-local", messages=[])
    assert malformed.value.type == "InvalidInputError"
    admin = OpenAI(base_url=f"{server.url}/v1", api_key=ADMIN_KEY, max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError, match="user_id"):   # was taken for no user: every user's notes
        admin.chat.completions.create(model="agentmem-local", user="", messages=[{"role": "user", "content": "hi"}])
    stranger = OpenAI(base_url=f"{server.url}/v1", api_key="wrong-key-123", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="a valid API key is required"):
        stranger.models.list()


class NumberReplyingUpstream(JsonReplies):
    """An OpenAI-compatible server whose reply content is a number, not text."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.answer({"choices": [{"message": {"role": "assistant", "content": 42}}]})


@pytest.fixture
def number_upstream() -> Iterator[str]:
    with stand_in_upstream(NumberReplyingUpstream) as url:
        yield url


def test_an_upstream_reply_that_is_not_text_is_the_upstreams_fault(number_upstream, tmp_path):
    proxy = start_server(tmp_path, "--upstream", number_upstream)
    try:
        client = OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError, match="int content, not text") as failed:
            client.chat.completions.create(model="any", user="ola",
                                           messages=[{"role": "user", "content": "Ola's cat is called Miso."}])
        assert (failed.value.status_code, failed.value.type) == (502, "UpstreamError")
        with proxy.client(None) as rest:
            for body in (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
                         b'{"messages": [{"role": "assistant", "content": "\\ud800"}, {"role": "user", "content": "hi"}]}',
                         b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}'):
                refused = rest.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
                assert (refused.status_code, refused.json()["error"]["type"]) == (422, "InvalidInputError"), body
            assert rest.get("/v1/stats").json()["notes"] == 0   # the failed turn remembered nothing
    finally:
        proxy.stop()

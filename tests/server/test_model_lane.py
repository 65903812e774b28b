"""The model's lane: calls waiting for the local model hold no thread of the pool every route shares,
the queue is bounded per user and in all, and a request whose client has gone is not run."""
from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import anyio
import anyio.to_thread
import httpx
import openai
import pytest
from openai import OpenAI

from agentmem.server.errors import ClientGoneError, LaneFullError
from agentmem.server.limits import LANE_PER_USER
from agentmem.server.model_lane import GONE_POLL_S, ModelLane

from .conftest import ADMIN_KEY, ALICE_KEY, BOB_KEY, Served

STORY = "Tell me a long story about a dragon named Ivo who lives in the mountains."  # holds the lane for seconds
SHORT = {"retrieval": False, "max_new_tokens": 1}  # an answer that holds the lane for a moment only


def test_calls_waiting_on_the_lane_leave_the_shared_pool_to_other_routes():
    lane, model, finished = ModelLane(total=60), threading.Lock(), []

    def answer(i: int) -> int:   # uses the model: one at a time
        with model:
            time.sleep(0.05)
        finished.append(i)
        return i

    async def answers_and_another_route() -> tuple[int, list[int]]:
        results: list[int] = []

        async def ask(i: int) -> None:
            results.append(await lane.run(answer, i))

        async with anyio.create_task_group() as answers:
            for i in range(60):
                answers.start_soon(ask, i)
            await anyio.sleep(0.02)
            await anyio.to_thread.run_sync(lambda: None)   # another route's work, in the shared pool
            done_by_then = len(finished)
        return done_by_then, results

    done_by_then, results = anyio.run(answers_and_another_route)
    assert done_by_then < 10   # it did not wait behind the answers queued before it
    assert sorted(results) == list(range(60))


def test_a_user_may_queue_only_so_many_calls_and_everyone_only_so_many_in_all():
    lane, release, made = ModelLane(per_user=2, total=3), threading.Event(), []

    def call(name: str) -> str:
        release.wait(10)
        made.append(name)
        return name

    async def queue() -> list[str]:
        refused = []

        async def ask(name: str, user: str | None) -> None:
            try:
                await lane.run(call, name, user=user)
            except LaneFullError:
                refused.append(name)

        async with anyio.create_task_group() as calls:
            for name, user in [("alice-1", "alice"), ("alice-2", "alice"), ("alice-3", "alice"), ("bob-1", "bob"),
                               ("plan-1", None)]:
                calls.start_soon(ask, name, user)
                await anyio.sleep(0.01)
            release.set()
        await lane.run(call, "alice-4", user="alice")   # the queue is free again once they are done
        return refused

    assert anyio.run(queue) == ["alice-3", "plan-1"]   # alice's third; then the lane's third in all
    assert made == ["alice-1", "alice-2", "bob-1", "alice-4"]


def test_a_refusal_says_when_to_retry_from_how_long_turns_have_taken():
    lane, release = ModelLane(per_user=1, total=2), threading.Event()

    async def refusal_after(turns_s: list[float]) -> int:
        for seconds in turns_s:
            await lane.run(time.sleep, seconds)
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: lane.run(release.wait, 10, user="alice"))
            await anyio.sleep(0.05)
            with pytest.raises(LaneFullError) as refused:
                await lane.run(print, user="alice")
            release.set()
        release.clear()
        return refused.value.retry_after_s

    assert anyio.run(refusal_after, []) == 10   # no turn timed yet: a local reply's usual seconds
    # the first turn timed (0.05 s, the one refused against) replaced the guess; two of 3 s moved it to 1.1 s
    assert anyio.run(refusal_after, [3.0, 3.0]) == 2


def test_a_call_whose_client_has_gone_by_its_turn_is_not_made():
    class Client:
        def __init__(self, gone: bool) -> None:
            self.gone = gone

        async def is_disconnected(self) -> bool:
            return self.gone

    lane, made = ModelLane(), []

    async def calls() -> None:
        with pytest.raises(ClientGoneError):
            await lane.run(made.append, "gone", client=Client(gone=True))
        await lane.run(made.append, "here", client=Client(gone=False))

    anyio.run(calls)
    assert made == ["here"]


def test_a_call_whose_client_leaves_while_it_waits_frees_its_users_place_at_once():
    """A user whose clients had all left still got 429 until the calls ahead of theirs had run."""
    class Client:
        gone = False

        async def is_disconnected(self) -> bool:
            return self.gone

    lane, release, made = ModelLane(per_user=1, total=3), threading.Event(), []
    leaving = Client()

    async def calls() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: lane.run(lambda: release.wait(10), user="bob"))   # holds the lane
            await anyio.sleep(0.05)

            async def wait_then_leave() -> None:
                with pytest.raises(ClientGoneError):
                    await lane.run(made.append, "left", user="alice", client=leaving)

            group.start_soon(wait_then_leave)
            await anyio.sleep(0.05)
            leaving.gone = True
            await anyio.sleep(GONE_POLL_S + 0.2)   # the lane is still held by bob's call
            # alice's place is free again: her next call queues (a LaneFullError here would fail the test)
            group.start_soon(lambda: lane.run(made.append, "again", user="alice"))
            await anyio.sleep(0.05)
            release.set()

    anyio.run(calls)
    assert made == ["again"]


def post(server: Served, key: str, path: str, body: dict, timeout: float = 300.0) -> httpx.Response:
    with server.client(key, timeout=timeout) as client:
        return client.post(path, json=body)


def leave(server: Served, path: str, body: dict) -> None:
    """Sends the request and closes the connection half a second later, while it waits for the model."""
    with pytest.raises(httpx.ReadTimeout):
        post(server, ADMIN_KEY, path, body, timeout=0.5)


@pytest.mark.slow   # the server loads the bundled SmolLM2
def test_requests_whose_clients_left_while_they_waited_are_not_run(server, admin):
    """A client that gave up once cost every later caller a whole turn, and its chat was still remembered."""
    run = uuid.uuid4().hex[:6]
    gone = f"gone-{run}"
    admin.post("/v1/notes", json={"text": "Ivo the dragon guards the northern pass.", "user_id": gone})
    before = admin.get("/v1/notes", params={"user_id": gone}).json()
    ask = {"role": "user", "content": "What does Ivo the dragon guard?"}
    with ThreadPoolExecutor(4) as pool:
        holder = pool.submit(post, server, ADMIN_KEY, "/v1/chat/completions",
                             {"user": f"holder-{run}", "messages": [{"role": "user", "content": STORY}]})
        time.sleep(0.5)   # the holder has the lane; these three wait behind it and give up
        left = [pool.submit(leave, server, path, body) for path, body in [
            ("/v1/chat/completions", {"user": gone, "messages": [ask]}),
            ("/v1/chat/completions", {"user": gone, "messages": [ask], "stream": True}),
            ("/v1/answer", {"user_id": gone, "question": ask["content"]}),
        ]]
        for leaving in left:
            leaving.result()
        assert not holder.done(), "the holder's turn ended before the clients left: this test needs a longer one"
        after = post(server, ADMIN_KEY, "/v1/chat/completions",   # queued behind the three that left
                     {"user": f"after-{run}", "messages": [{"role": "user", "content": "My cat is called Pixel."}]})
        assert holder.result().status_code == 200
    assert after.status_code == 200 and after.json()["choices"][0]["message"]["content"].strip()
    remembered = admin.get("/v1/notes", params={"user_id": f"after-{run}"}).json()
    assert [note["id"] for note in remembered] == [after.json()["agentmem"]["remembered"]]
    assert admin.get("/v1/notes", params={"user_id": gone}).json() == before   # nothing remembered or reinforced
    assert "Traceback" not in server.log.read_text()


@pytest.mark.slow   # the server loads the bundled SmolLM2
def test_a_user_with_a_full_queue_for_the_model_gets_429_and_changes_nothing(server, admin):
    before = admin.get("/v1/notes", params={"user_id": "alice"}).json()
    with ThreadPoolExecutor(LANE_PER_USER + 2) as pool:
        holder = pool.submit(post, server, BOB_KEY, "/v1/chat/completions",
                             {"messages": [{"role": "user", "content": STORY}]})
        time.sleep(0.5)
        queued = [pool.submit(post, server, ALICE_KEY, "/v1/answer", {"question": f"Q{i}?", **SHORT})
                  for i in range(LANE_PER_USER)]
        time.sleep(0.5)
        assert not holder.done(), "bob's turn ended before alice's queue filled: this test needs a longer one"
        alice = OpenAI(base_url=f"{server.url}/v1", api_key=ALICE_KEY, max_retries=0)
        with pytest.raises(openai.RateLimitError, match="requests for user 'alice' already wait") as refused:
            alice.chat.completions.create(model="agentmem-local",
                                          messages=[{"role": "user", "content": "I drink my tea without sugar."}])
        assert refused.value.type == "LaneFullError"
        answer = post(server, ALICE_KEY, "/v1/answer", {"question": "Q?", **SHORT})
        assert (answer.status_code, answer.json()["error"]) == (429, "LaneFullError")
        assert int(answer.headers["retry-after"]) >= 1
        blank = post(server, ADMIN_KEY, "/v1/answer", {"question": "Q?", "user_id": " ", **SHORT})
        assert blank.status_code == 422 and "user_id" in blank.json()["message"]
        assert not holder.done(), "a bad user was refused only once it had waited its turn on the model"
        other = pool.submit(post, server, ADMIN_KEY, "/v1/answer", {"question": "Q?", "user_id": "carol", **SHORT})
        assert [response.result().status_code for response in [holder, *queued, other]] == [200] * (LANE_PER_USER + 2)
    assert admin.get("/v1/notes", params={"user_id": "alice"}).json() == before

"""The MCP server driven by the official `mcp` SDK client: over stdio (a subprocess) and streamable HTTP."""
from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from agentmem import Memory

from .conftest import ADMIN_KEY

TOOLS = {"add_memory", "search_memories", "get_memory", "update_memory", "delete_memory", "consolidate", "answer"}


async def exercise(client: Client) -> None:
    """The whole note life cycle through the tools, and a note read as a resource."""
    assert {tool.name for tool in (await client.list_tools()).tools} >= TOOLS
    added = await client.call_tool("add_memory", {"text": "Ines teaches chemistry in Porto", "user_id": "ines",
                                                  "tags": ["work"]})
    assert not added.is_error and added.structured_content["user_id"] == "ines"
    note_id = added.structured_content["id"]
    found = await client.call_tool("search_memories", {"query": "Who teaches chemistry?", "user_id": "ines", "k": 3})
    assert found.structured_content["hits"][0]["note"]["id"] == note_id
    got = await client.call_tool("get_memory", {"memory_id": note_id})
    assert got.structured_content["text"] == "Ines teaches chemistry in Porto"
    resource = await client.read_resource(f"memory://notes/{note_id}")
    assert '"Ines teaches chemistry in Porto"' in resource.contents[0].text
    updated = await client.call_tool("update_memory", {"memory_id": note_id, "text": "Ines teaches physics in Porto"})
    assert updated.structured_content["text"] == "Ines teaches physics in Porto"
    bad = await client.call_tool("add_memory", {"text": "   "})
    assert bad.is_error and "InvalidInputError" in bad.content[0].text
    deleted = await client.call_tool("delete_memory", {"memory_id": note_id})
    assert deleted.structured_content == {"deleted": note_id}
    gone = await client.call_tool("get_memory", {"memory_id": note_id})
    assert gone.is_error and "NoteNotFoundError" in gone.content[0].text


def test_over_stdio(tmp_path):
    params = StdioServerParameters(command=sys.executable, args=["-m", "agentmem.cli", "--path", str(tmp_path / "m"), "mcp"],
                                   env=dict(os.environ))

    async def main():
        async with Client(params, read_timeout_seconds=120) as client:
            await exercise(client)

    asyncio.run(main())


HELLO = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}}}
# Requests the SDK's JSON-RPC model refuses: lone surrogates (valid JSON escapes, not valid Unicode) and a method that
# is not a string. Over stdio the SDK dropped each one, and the client waited for ever.
UNREADABLE = (
    rb'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"add_memory","arguments":{"text":"\ud800"}}}',
    rb'{"jsonrpc":"2.0","id":"q\udfff","method":"tools/call","params":{"name":"search_memories","arguments":{}}}',
    rb'{"jsonrpc":"2.0","id":4,"method":5}',
    b'{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"add_memory","arguments":{"text":"\xff\\ud800"}}}',
    # no id can be read of these: answered with the id null (they got no reply, and a client waited for ever)
    b'{"jsonrpc":"2.0","id":7,"method":"ping"} and trailing words',
    b'[{"jsonrpc":"2.0","id":8,"method":"ping"}]',
    b'{"jsonrpc":"2.0","id":9,"params":' + b"[" * 5000 + b"]" * 5000 + b"}",
)


def test_over_stdio_every_request_gets_a_reply_even_one_the_sdk_cannot_read(tmp_path):
    server = subprocess.Popen([sys.executable, "-m", "agentmem.cli", "--path", str(tmp_path / "m"), "mcp"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=dict(os.environ))
    replies = []
    try:
        for line in (json.dumps(HELLO).encode(), *UNREADABLE,
                     b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"add_memory",'
                     b'"arguments":{"text":"Ines teaches chemistry"}}}'):
            server.stdin.write(line + b"\n")
            server.stdin.flush()
            assert select.select([server.stdout], [], [], 60)[0], f"no reply to {line[:80]!r} within 60 s"
            replies.append(json.loads(server.stdout.readline()))
            if len(replies) == len(UNREADABLE) + 1:  # a blank line asks nothing: no reply, the session goes on
                server.stdin.write(b"\n")
        server.stdin.close()
        assert server.wait(timeout=60) == 0
    finally:
        server.kill()
    refused = replies[1:8]
    assert [reply["id"] for reply in refused] == [2, None, 4, 6, None, None, None]  # a lone surrogate's id: null too
    assert [reply["error"]["code"] for reply in refused] == [-32600] * 4 + [-32700, -32600, -32600]
    assert "lone surrogate" in refused[0]["error"]["message"] and "InvalidInputError" in refused[0]["error"]["message"]
    assert "batch" in refused[5]["error"]["message"] and "too deep" in refused[6]["error"]["message"]
    assert replies[8]["id"] == 5 and not replies[8]["result"]["isError"]  # the session goes on
    with Memory(tmp_path / "m") as memory:
        assert [note.text for note in memory.notes()] == ["Ines teaches chemistry"]


def test_over_stdio_ctrl_c_ends_the_server_and_closes_the_store(tmp_path):
    """Ctrl-C left the SDK in its blocking read of stdin: the server hung until stdin ended."""
    server = subprocess.Popen([sys.executable, "-m", "agentmem.cli", "--path", str(tmp_path / "m"), "mcp"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=dict(os.environ))
    try:
        server.stdin.write(json.dumps(HELLO).encode() + b"\n")
        server.stdin.flush()
        assert json.loads(server.stdout.readline())["id"] == 1
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=60) == 0   # stdin still open
    finally:
        server.kill()
    with Memory(tmp_path / "m") as memory:   # closed, so it opens
        assert memory.notes() == []


def test_over_streamable_http_a_request_that_cannot_be_read_gets_a_client_error(server):
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json"}
    with server.client(ADMIN_KEY) as client:
        codes = [client.post("/mcp", content=line, headers=headers).status_code for line in UNREADABLE]
    assert codes == [400] * len(UNREADABLE)


def test_over_streamable_http_inside_serve(server):
    async def main():
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60) as http:
            async with Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as client:
                await exercise(client)

    asyncio.run(main())


def test_no_client_can_use_up_the_sessions_of_the_others(server):
    """Each `initialize` held a session open for 30 minutes, 10,000 at most: one key opened them all in 80 s, and
    every other client got 503. The server keeps none now (stateless), and every call carries its own key."""
    hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}}}
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Accept": "application/json, text/event-stream"}
    with server.client(ADMIN_KEY) as client:
        opened = client.post("/mcp", json=hello, headers=headers)
    assert opened.status_code == 200 and "mcp-session-id" not in opened.headers


def test_a_tool_refuses_arguments_it_does_not_take_and_values_of_another_type(tmp_path, embedder):
    """The SDK would drop a mistyped `user`: the note would be stored unowned, so its fact shared with every user."""
    from agentmem.memory import Memory
    from agentmem.server.mcp_server import build_mcp_server
    from agentmem.server.model_lane import ModelLane

    async def main(memory):
        async with Client(build_mcp_server(memory, ModelLane())) as client:
            typo = await client.call_tool("add_memory", {"text": "Yara's locker code is 4417", "user": "yara"})
            assert typo.is_error and "InvalidInputError" in typo.content[0].text
            assert "unknown argument 'user'" in typo.content[0].text and "user_id" in typo.content[0].text
            as_text = await client.call_tool("search_memories", {"query": "locker code", "k": "3"})
            assert as_text.is_error and "InvalidInputError" in as_text.content[0].text and "k:" in as_text.content[0].text
            schema = next(t for t in (await client.list_tools()).tools if t.name == "add_memory").input_schema
            assert schema["additionalProperties"] is False
            # a list sent as JSON text (as some clients send lists) is still taken
            listed = await client.call_tool("add_memory", {"text": "Yara likes tea", "user_id": "yara", "tags": '["a"]'})
            assert not listed.is_error and listed.structured_content["tags"] == ["a"]

    with Memory(tmp_path / "m", embedder=embedder) as memory:
        asyncio.run(main(memory))
        assert [note.text for note in memory.notes()] == ["Yara likes tea"]


def test_a_missing_or_malformed_note_resource_is_the_clients_error_not_an_internal_one(tmp_path, embedder):
    """Both came back as -32603, an internal error of the server."""
    from mcp.shared.exceptions import MCPError

    from agentmem.memory import Memory
    from agentmem.server.mcp_server import build_mcp_server
    from agentmem.server.model_lane import ModelLane

    async def codes(memory) -> list[tuple[int, str]]:
        found = []
        async with Client(build_mcp_server(memory, ModelLane())) as client:
            for uri in ("memory://notes/nope", "memory://notes/bad%20id"):
                try:
                    await client.read_resource(uri)
                except MCPError as exc:
                    found.append((exc.code, exc.message.split(":")[0]))
        return found

    with Memory(tmp_path / "m", embedder=embedder) as memory:
        assert asyncio.run(codes(memory)) == [(-32002, "NoteNotFoundError"), (-32602, "InvalidInputError")]


def test_the_answer_tool_is_refused_with_a_typed_error_when_its_users_queue_for_the_model_is_full(tmp_path, embedder):
    from agentmem.memory import Memory
    from agentmem.server.mcp_server import build_mcp_server
    from agentmem.server.model_lane import ModelLane

    async def main(memory):
        async with Client(build_mcp_server(memory, ModelLane(per_user=0))) as client:   # every user's queue is full
            refused = await client.call_tool("answer", {"question": "What is Yara's locker code?", "user_id": "yara"})
            assert refused.is_error and "LaneFullError: 0 requests for user 'yara'" in refused.content[0].text

    with Memory(tmp_path / "m", embedder=embedder) as memory:
        asyncio.run(main(memory))

"""MCP over stdio, where every request gets a reply.

The SDK's stdio transport drops a line its JSON-RPC model refuses (a lone surrogate in any
string, a method that is not a string) after logging it, and the client waits for a reply
that never comes. Here the process's stdin and stdout pass through two pipes: a line the SDK
can read goes on to it unchanged, and a request it cannot read gets JSON-RPC's error reply
for its id (null when the id cannot be read). Both writers share one lock, so a reply never
lands inside another message.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from typing import BinaryIO

from mcp.server.mcpserver import MCPServer
from mcp.types import jsonrpc_message_adapter
from pydantic import ValidationError

PARSE_ERROR = -32700  # JSON-RPC 2.0: the line is not JSON
INVALID_REQUEST = -32600  # JSON-RPC 2.0: the JSON sent is not a valid Request object
# The server's last line to the writer: no JSON-RPC message holds a raw NUL. The pipe's end of file cannot tell it,
# as the SDK may keep a copy of the pipe open after it stops.
STOPPED = b"\0\n"


def unreadable_reply(line: bytes) -> bytes | None:
    """JSON-RPC's error reply to a line the SDK cannot read; None for a line it reads, a blank line, or a notification
    (JSON-RPC answers none). A line that is not JSON, or whose id cannot be read (a batch, which MCP no longer
    takes; nesting too deep to parse), is answered with the id null, as JSON-RPC asks."""
    text = line.decode("utf-8", "replace")  # as the SDK reads it
    try:
        jsonrpc_message_adapter.validate_json(text, by_name=False)
        return None
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
    if not text.strip():
        return None
    try:
        request = json.loads(text)
    except ValueError as exc:
        return _error_reply(None, PARSE_ERROR, f"the line is not JSON: {exc}")
    except RecursionError:
        return _error_reply(None, INVALID_REQUEST, "the request is nested too deep to read")
    if not isinstance(request, dict):
        what = "a batch (a JSON array): send each request on a line of its own" if isinstance(request, list) else \
            "not a JSON object"
        return _error_reply(None, INVALID_REQUEST, f"the request is {what}")
    request_id = request.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, (int, str)) or "method" not in request:
        return None
    if isinstance(request_id, str) and not _writable(request_id):
        request_id = None  # an id the reply could not carry either: JSON-RPC's null, "unknown"
    if not _writable(json.dumps(request, ensure_ascii=False)):
        reason = "a string holds a lone surrogate; strings must be valid Unicode"
    return _error_reply(request_id, INVALID_REQUEST, f"the request cannot be read: {reason}")


def _error_reply(request_id: int | str | None, code: int, message: str) -> bytes:
    reply = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": f"InvalidInputError: {message}"}}
    return json.dumps(reply, separators=(",", ":")).encode() + b"\n"


def _writable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


class _ToServer:
    """The pipe the SDK reads requests from. Ending it ends the session: at the end of stdin, and on Ctrl-C,
    whose KeyboardInterrupt alone left the SDK waiting for ever on its blocking read of stdin."""

    def __init__(self, fd: int) -> None:
        self._fd, self._writing, self._open, self._ending = fd, threading.Lock(), True, False

    def send(self, line: bytes) -> bool:
        """Pass `line` on; False once the pipe has ended."""
        with self._writing:
            if self._open and not self._ending:
                view = memoryview(line)
                while view:
                    view = view[os.write(self._fd, view):]
            self._close_if_ending()
        if self._ending:  # Ctrl-C came while the lock was held, after the check above
            self.end()
        return not self._ending

    def end(self) -> None:
        """End the pipe now, or (from a signal handler, while a line is being written) right after that line."""
        self._ending = True
        if self._writing.acquire(blocking=False):
            try:
                self._close_if_ending()
            finally:
                self._writing.release()

    def _close_if_ending(self) -> None:
        if self._ending and self._open:
            os.close(self._fd)
            self._open = False


def _pass_requests(wire_in: BinaryIO, to_server: _ToServer, wire_out: BinaryIO, writing: threading.Lock) -> None:
    """Until stdin ends, or the client stops reading its replies: the session then ends."""
    try:
        for line in wire_in:
            reply = unreadable_reply(line)
            if reply is None and not to_server.send(line):
                return
            if reply is not None and not _write_line(wire_out, reply, writing):
                return
    finally:
        to_server.end()


def _pass_replies(from_sdk: BinaryIO, wire_out: BinaryIO, writing: threading.Lock) -> None:
    """Until the server has stopped; once the client stops reading, the replies are read and dropped, so that
    the server is never stuck writing them."""
    client_reads = True
    with from_sdk:
        for line in from_sdk:
            if line == STOPPED:
                return
            client_reads = client_reads and _write_line(wire_out, line, writing)


def _write_line(wire_out: BinaryIO, line: bytes, writing: threading.Lock) -> bool:
    """Write `line` to the client; False if it no longer reads (a closed pipe)."""
    with writing:
        try:
            wire_out.write(line)
            wire_out.flush()
        except OSError:
            return False
    return True


def run_stdio(server: MCPServer) -> None:
    """Serve `server` over this process's stdin and stdout until stdin ends or Ctrl-C."""
    sys.stdout.flush()
    wire_in, wire_out = os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb")
    requests_read, requests_write = os.pipe()
    replies_read, replies_write = os.pipe()
    os.dup2(requests_read, 0)
    os.dup2(replies_write, 1)
    os.close(requests_read)
    os.close(replies_write)
    writing, to_server = threading.Lock(), _ToServer(requests_write)
    reader = threading.Thread(target=_pass_requests, name="agentmem-mcp-stdin", daemon=True,
                              args=(wire_in, to_server, wire_out, writing))
    writer = threading.Thread(target=_pass_replies, name="agentmem-mcp-stdout", daemon=True,
                              args=(os.fdopen(replies_read, "rb"), wire_out, writing))
    reader.start()
    writer.start()
    interrupt = signal.getsignal(signal.SIGINT)

    def ctrl_c(*_: object) -> None:  # the first ends the session; a second one interrupts as usual
        signal.signal(signal.SIGINT, interrupt)
        to_server.end()

    signal.signal(signal.SIGINT, ctrl_c)
    try:
        server.run("stdio")
    finally:
        signal.signal(signal.SIGINT, interrupt)
        sys.stdout.flush()
        with contextlib.suppress(OSError):
            os.write(1, STOPPED)  # after every reply the server wrote: the writer passes them all, then ends
            writer.join(timeout=10)
        os.dup2(wire_out.fileno(), 1)
        with contextlib.suppress(OSError):  # the client's end may be closed
            wire_out.close()

"""Real `agentmem serve` processes on free loopback ports, and httpx clients for them."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ADMIN_KEY = "admin-key-0001"
ALICE_KEY = "alice-key-0001"
BOB_KEY = "bob-key-00001"
KEYS = [ADMIN_KEY, f"{ALICE_KEY}:alice", f"{BOB_KEY}:bob"]


class JsonReplies(BaseHTTPRequestHandler):
    """The base of the tests' stand-in upstream servers: answers with JSON, logs nothing."""

    def answer(self, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def stand_in_upstream(handler: type[JsonReplies], server_class: type[ThreadingHTTPServer] = ThreadingHTTPServer
                      ) -> Iterator[str]:
    """A stand-in upstream on a free loopback port while the block runs; yields its OpenAI base URL."""
    server = server_class(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Served:
    url: str
    path: Path
    process: subprocess.Popen
    log: Path

    def client(self, key: str | None = ADMIN_KEY, timeout: float = 120.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def stop(self) -> int:
        """SIGTERM, as a process manager would send; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(folder: Path, *args: str, key: str | None = None, timeout: float = 180.0,
                 global_args: tuple[str, ...] = (), store: str | None = None,
                 env: dict[str, str] | None = None) -> Served:
    """`agentmem --path folder/store *global_args serve --port N *args`, once it answers /v1/health; `store` (a
    PostgreSQL URL) in place of folder/store, `env` added to this process's environment."""
    port = free_port()
    log = folder / "server.log"
    command = [sys.executable, "-m", "agentmem.cli", "--path", store or str(folder / "store"), *global_args, "serve",
               "--port", str(port), *args]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT,
                               env={**os.environ, **(env or {})})
    served = Served(f"http://127.0.0.1:{port}", folder / "store", process, log)
    deadline = time.monotonic() + timeout
    with served.client(key, timeout=5) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"agentmem serve exited with {process.returncode}:\n{log.read_text()}")
            try:
                if client.get("/v1/health").status_code == 200:
                    return served
            except httpx.TransportError:
                pass
            time.sleep(0.3)
    served.stop()
    pytest.fail(f"agentmem serve did not answer within {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[Served]:
    """One server with API keys: an admin key, and keys bound to alice and to bob."""
    served = start_server(tmp_path_factory.mktemp("served"), *(f"--api-key={k}" for k in KEYS), key=ADMIN_KEY)
    yield served
    assert_clean_stop(served)


def assert_clean_stop(served: Served) -> None:
    """SIGTERM ends the server through its shutdown path (uvicorn re-raises the signal once it is done)."""
    assert served.stop() in (0, -signal.SIGTERM), served.log.read_text()
    assert "the store at" in served.log.read_text() and "is closed" in served.log.read_text()


@pytest.fixture
def admin(server) -> Iterator[httpx.Client]:
    with server.client(ADMIN_KEY) as client:
        yield client


@pytest.fixture(scope="session")
def model_server(tmp_path_factory) -> Iterator[Served]:
    """A server without keys whose chats and jobs load the bundled SmolLM2 (once, on first use)."""
    served = start_server(tmp_path_factory.mktemp("model-served"))
    yield served
    assert_clean_stop(served)

"""The shell against a server (`agentmem --url`, `RemoteMemory`), run as a real subprocess: what it shows of the URL."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.conftest import free_port

from .conftest import JsonReplies, stand_in_upstream


def shell(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("AGENTMEM_URL", "AGENTMEM_API_KEY")}
    return subprocess.run([sys.executable, "-m", "agentmem.cli", *args], capture_output=True, text=True, timeout=60,
                          env={**environment, **(env or {})})


class NoAgentmemHere(JsonReplies):
    """A web server that is not agentmem's: every route is 404; it keeps the Authorization header it got."""

    authorization: list[str | None] = []
    api_key: list[str | None] = []

    def do_GET(self) -> None:
        type(self).authorization.append(self.headers.get("authorization"))
        type(self).api_key.append(self.headers.get("x-api-key"))
        self.send_response(404)
        self.send_header("content-length", "0")
        self.end_headers()


@pytest.fixture
def not_agentmem() -> Iterator[str]:
    with stand_in_upstream(NoAgentmemHere) as url:
        yield url.removesuffix("/v1")


def test_the_shell_never_shows_a_password_in_the_server_url(not_agentmem):
    """`agentmem --url http://admin:PASSWORD@host stats` printed "cannot reach the agentmem server at
    http://admin:PASSWORD@host/v1", and so did AGENTMEM_URL."""
    port = free_port()   # nothing listens there
    for password in ("Sup3rS3cret", "p%40ss%2Fw0rd"):   # percent-encoded: shown neither encoded nor decoded
        url = f"http://admin:{password}@127.0.0.1:{port}"
        for done in (shell("--url", url, "stats"), shell("stats", env={"AGENTMEM_URL": url})):
            assert done.returncode == 2, done.stderr
            assert f"cannot reach the agentmem server at http://admin:***@127.0.0.1:{port}/v1" in done.stderr
            assert password not in done.stderr and "p@ss/w0rd" not in done.stderr, done.stderr

    # a server that is not agentmem's: the credentials are still sent (Basic, as before), but not shown
    url = not_agentmem.replace("http://", "http://admin:Sup3rS3cret@")
    done = shell("--url", url, "stats")
    assert done.returncode == 2 and "no agentmem API at http://admin:***@127.0.0.1" in done.stderr, done.stderr
    assert "Sup3rS3cret" not in done.stderr
    assert NoAgentmemHere.authorization[-1].startswith("Basic ")
    shell("--url", url, "--api-key", "agentmem-key-1", "stats")   # both: the proxy's Basic auth, and the server's key
    assert NoAgentmemHere.authorization[-1].startswith("Basic ") and NoAgentmemHere.api_key[-1] == "agentmem-key-1"

    # a password httpx would misread (an unencoded / or ? makes part of it the port, the path or the query)
    for url in (f"http://admin:Sup3r/S3cret@127.0.0.1:{port}", f"http://admin:123?S3cret@127.0.0.1:{port}",
                f"http://admin:123/S3cret@127.0.0.1:{port}"):
        done = shell("--url", url, "stats")
        assert done.returncode == 2 and "InvalidInputError" in done.stderr, done.stderr
        assert "S3cret" not in done.stderr and "Sup3r" not in done.stderr, done.stderr
        assert "percent-encode" in done.stderr

    # no scheme://, so no user part is found to hide: the whole URL is not shown (it was, as the "scheme")
    for url in (f"admin:S3cret@127.0.0.1:{port}", f"http:/admin:S3cret@127.0.0.1:{port}"):
        done = shell("--url", url, "stats")
        assert done.returncode == 2 and "S3cret" not in done.stderr, done.stderr

"""Shared fixtures: the real MiniLM embedder (loaded once) and fresh memories on disk."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Before torch loads (OpenMP reads it once): torch's idle threads sleep instead of spinning. With spinning, a test on
# the real model took 4x as long whenever the servers other tests start shared the 2 cores (145 s against 40 s).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from agentmem import Memory  # noqa: E402
from agentmem.models import load_embedder  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="session")
def embedder():
    return load_embedder()


@pytest.fixture
def private_home(tmp_path_factory, monkeypatch):
    """Key statistics are cached in a home of this test session, not the user's."""
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path_factory.getbasetemp() / "agentmem-home"))


@pytest.fixture
def memory(tmp_path, embedder):
    with Memory(tmp_path / "mem", embedder=embedder) as mem:
        yield mem


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_chroma(data: Path) -> tuple[subprocess.Popen, str]:
    """A real `chroma run` process on a free loopback port, once it listens: the process and its URL."""
    chroma = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    port = free_port()
    process = subprocess.Popen(
        [chroma, "run", "--path", str(data), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, f"http://127.0.0.1:{port}"
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"chroma run exited with {process.returncode}")
            time.sleep(0.2)
    process.kill()
    pytest.fail("chroma run did not start listening within 60 s")


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory):
    """A real `chroma run` process on a free loopback port, for server-mode tests."""
    process, url = start_chroma(tmp_path_factory.mktemp("chroma-server"))
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL 15 server (Debian's binaries, run as the `postgres` user) in a temporary folder."""
    from agentmem.eval.postgres_server import TemporaryPostgres

    server = TemporaryPostgres(durable=False)
    yield server
    server.stop()


def drop_local_folder(url: str) -> None:
    """A PostgreSQL store keeps its embedded index folder under AGENTMEM_HOME: drop it with the test's database."""
    from agentmem.stores.location import local_folder

    shutil.rmtree(local_folder(url), ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the session's server (its local folder removed after the test)."""
    url = postgres_server.create_database()
    yield url
    drop_local_folder(url)


def postgres_location(request: pytest.FixtureRequest) -> dict:
    """`Memory`'s arguments for a new database on the session's PostgreSQL server, with the Chroma server."""
    database = request.getfixturevalue("postgres_server").create_database()
    return {"path": database, "chroma_url": request.getfixturevalue("chroma_server"),
            "collection": f"notes_{database.rsplit('/', 1)[1]}_{os.getpid()}"}


@pytest.fixture(params=["sqlite", "postgres"])
def memory_location(request, tmp_path):
    """`Memory`'s location arguments for a named store of this test, on each note store: a folder,
    or a Postgres database of its own with the Chroma server (one collection per store).
    The same name gives the same store, so a test can reopen it."""
    made: dict[str, dict] = {}

    def location(name: str = "mem") -> dict:
        if request.param == "sqlite":
            return {"path": tmp_path / name}
        if name not in made:
            made[name] = postgres_location(request)
        return made[name]

    yield location
    for options in made.values():
        drop_local_folder(options["path"])


@contextlib.contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A real tmpfs mounted at `folder` (made here) with these mount options, unmounted after; the test is skipped,
    with the reason, where this machine cannot mount one."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


"""Faults from the world, on real filesystems and a real server: a read-only folder, a full disk,
a Chroma server killed mid-write. The contract: a call that raises (always a typed error) stored
nothing; a call that returned is durable."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from agentmem import AgentMemError, Memory, StoreUnavailableError

from .conftest import T0, free_port, tmpfs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@pytest.fixture
def small_disk(tmp_path):
    """A real 24 MiB tmpfs; skipped with the reason when this machine cannot mount one."""
    with tmpfs(tmp_path / "disk", "size=24m") as mount:
        yield mount


def fill(disk: Path) -> Path:
    """Take every free byte of the filesystem."""
    filler = disk / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_gives_typed_errors_and_every_write_that_returned_is_kept(small_disk, tmp_path, embedder):
    path = small_disk / "m"
    with Memory(path, embedder=embedder) as mem:
        mem.remember("Uma keeps a log of her runs", user_id="uma", at=T0)
    returned, raised = [], []
    with Memory(path, embedder=embedder) as mem:
        filler = fill(small_disk)
        for i in range(8):
            text = f"Uma ran {i + 3} kilometres along the river {uuid.uuid4().hex[:6]}"
            try:
                mem.remember(text, user_id="uma", at=T0)
                returned.append(text)
            except AgentMemError as exc:
                assert isinstance(exc, StoreUnavailableError), exc
                raised.append(text)
        assert raised, "the disk was full: some write must have been refused"
        with pytest.raises(StoreUnavailableError):
            mem.export(small_disk / "export.jsonl")
        filler.unlink()
        mem.export(tmp_path / "after.jsonl")
    with Memory(path, embedder=embedder) as reopened:
        texts = {n.text for n in reopened.notes(user_id="uma")}
        assert set(returned) <= texts and not set(raised) & texts
        reopened.decay(at=T0)


def test_a_read_only_folder_gives_typed_errors_and_changes_nothing(small_disk, tmp_path, embedder):
    path = small_disk / "m"
    with Memory(path, embedder=embedder) as mem:
        mem.remember("Vik collects stamps from Iceland", user_id="vik", at=T0)
        mem.export(tmp_path / "before.jsonl")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        try:
            mem = Memory(path, embedder=embedder)
        except AgentMemError as exc:
            assert isinstance(exc, StoreUnavailableError), exc
        else:
            with mem:
                with pytest.raises(StoreUnavailableError):
                    mem.remember("Vik bought a stamp album", user_id="vik", at=T0)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    with Memory(path, embedder=embedder) as mem:
        mem.export(tmp_path / "after.jsonl")
    assert (tmp_path / "after.jsonl").read_bytes() == (tmp_path / "before.jsonl").read_bytes()


def start_chroma(data: Path, port: int) -> subprocess.Popen:
    chroma = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    process = subprocess.Popen(
        [chroma, "run", "--path", str(data), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    import socket

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    pytest.fail("chroma run did not start")


@pytest.mark.server
def test_a_chroma_server_killed_mid_write_loses_nothing_acknowledged(tmp_path, embedder):
    port, data = free_port(), tmp_path / "chroma-data"
    server = start_chroma(data, port)
    url = f"http://127.0.0.1:{port}"
    path = tmp_path / "m"
    returned, raised = [], []
    try:
        with Memory(path, chroma_url=url, embedder=embedder) as mem:
            def write() -> None:
                for i in range(2000):
                    text = f"Wen logged sensor reading {i}: {uuid.uuid4().hex[:8]}"
                    try:
                        mem.remember(text, user_id="wen", at=T0, deduplicate=False)
                        returned.append(text)
                    except AgentMemError as exc:
                        raised.append((text, exc))
                    if len(raised) >= 3:
                        return

            writer = threading.Thread(target=write)
            writer.start()
            while len(returned) < 20 and writer.is_alive():
                time.sleep(0.01)
            server.kill()  # while the writer is mid-way through its next write
            writer.join(timeout=300)
            assert len(returned) >= 20 and len(raised) == 3
            assert all(isinstance(exc, StoreUnavailableError) for _, exc in raised), raised
            with pytest.raises(StoreUnavailableError):
                mem.recall("sensor reading", user_id="wen", at=T0)
        raised = [text for text, _ in raised]
        server = start_chroma(data, port)
        with Memory(path, chroma_url=url, embedder=embedder) as mem:
            texts = {n.text for n in mem.notes(user_id="wen")}
            assert set(returned) <= texts and not set(raised) & texts
            assert mem.stats().pending_sync == 0  # the outbox caught the index up
            hits = mem.recall(returned[-1], user_id="wen", k=3, at=T0)
            assert returned[-1] in {h.note.text for h in hits}
    finally:
        server.kill()
        server.wait()

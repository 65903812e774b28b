"""The benchmarks' throwaway PostgreSQL server does not outlive a benchmark stopped with SIGTERM."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentmem.eval.postgres_server import BIN

pytestmark = pytest.mark.skipif(not (BIN / "postgres").exists(), reason="PostgreSQL 15 is not installed")

BENCHMARK = """
import sys, time
from agentmem.eval.postgres_server import TemporaryPostgres
server = TemporaryPostgres(durable=False)
try:
    print(server.folder, flush=True)
    time.sleep(120)
finally:
    server.stop()
"""


def _postgres_running(folder: Path) -> bool:
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return any(line.startswith(str(BIN / "postgres")) and str(folder) in line for line in listing.splitlines())


def test_a_benchmark_stopped_with_sigterm_stops_its_server_and_removes_its_folder():
    process = subprocess.Popen([sys.executable, "-c", BENCHMARK], stdout=subprocess.PIPE, text=True)
    try:
        folder = Path(process.stdout.readline().strip())
        assert folder.is_dir() and _postgres_running(folder)
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        process.kill()
    deadline = time.monotonic() + 30
    while _postgres_running(folder) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _postgres_running(folder)
    assert not folder.exists()

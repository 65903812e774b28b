"""A throwaway PostgreSQL 15 server in a temporary folder, for the tests and the benchmarks.

Debian's binaries (/usr/lib/postgresql/15/bin) refuse to run as root, so under root the
server runs as the `postgres` user (`runuser`), in a folder chowned to it. It listens on a
free loopback port with trust authentication and keeps its socket in that folder; `stop`
shuts it down and removes the folder. Nothing here is for production use.

The server outlives a process that dies without calling `stop`, so a benchmark stopped with SIGTERM
(`kill`, `timeout`) would leave it running: while a server is up, SIGTERM raises SystemExit instead,
and the `finally` that stops the server runs.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

BIN = Path(os.environ.get("AGENTMEM_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, where Python's default (die at once) is still the handler and a handler can be
    set (the main thread): a program that set its own handler keeps it."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TemporaryPostgres:
    """One PostgreSQL server process; `url(db)` names a database on it, `create_database` makes one."""

    def __init__(self, durable: bool = True) -> None:
        """`durable=False` turns fsync off: faster for tests, where a crash of the machine does not matter."""
        if not (BIN / "postgres").exists():
            raise FileNotFoundError(f"PostgreSQL 15 is not installed ({BIN / 'postgres'} is missing)")
        self.folder = Path(tempfile.mkdtemp(prefix="agentmem-pg-"))
        self.port = _free_port()
        self._as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_postgres:
            shutil.chown(self.folder, "postgres")
        data = self.folder / "data"
        subprocess.run(
            [*self._as_postgres, str(BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--locale=C.UTF-8"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        settings = ["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"]
        if not durable:
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        self._process = subprocess.Popen(
            [*self._as_postgres, str(BIN / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(self.folder),
             *settings],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _exit_on_sigterm()
        self._wait_ready()
        self._databases = 0

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._process.returncode}")
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("postgres did not accept connections within 60 s")

    @property
    def pid(self) -> int:
        """The process the server runs under (its launcher when run as `postgres`): the root of its process tree."""
        return self._process.pid

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its URL."""
        self._databases += 1
        name = name or f"store_{self._databases}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown (open sessions are ended), through pg_ctl: runuser would not pass a signal on cleanly."""
        if self._process.poll() is None:
            subprocess.run(
                [*self._as_postgres, str(BIN / "pg_ctl"), "stop", "-D", str(self.folder / "data"), "-m", "fast"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

"""Remember throughput of one process and of two processes on one PostgreSQL store.

    python -m agentmem.eval.fleet [--data ../shared/data] [--notes 100] [--threads 1]

A PostgreSQL 15 server and a `chroma run` server are started for the run. Each process is
a replica: its own Memory on the shared store, one torch thread, MiniLM loaded and warmed
before a common start signal. One process remembers N texts; then, on a fresh store, two
processes remember N different texts each at once. Throughput = texts / wall time of the
slowest process. The target (issue 16) is two processes >= 1.6x one.

Each phase also counts the CPU seconds that the replicas and both servers used while it ran. A
phase that keeps every core busy is bound by CPU, and then the cores busy while one process
works bound what two can reach: at one process's CPU per text, C cores allow at most
C / (cores busy with one) times its throughput.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

from .latency import corpus
from .postgres_server import TemporaryPostgres
from .report import add_benchmarks_option, command_line, machine_line, write_section

REPLICA = """
import sys, time, json
import torch
from agentmem import Memory
url, chroma, collection, threads, texts = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(threads)
texts = json.loads(open(texts).read())
with Memory(url, chroma_url=chroma, collection=collection) as mem:
    mem.recall("warm up", k=1, reinforce=False)
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    for i, text in enumerate(texts):
        mem.remember(text, user_id="fleet", session_id=f"s{i // 50}")
    mem.stats()  # the last index write, which finishes after remember returns
    print(time.perf_counter() - start, flush=True)
    sys.stdin.readline()  # closed only after the CPU count, so closing is not counted
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_chroma(folder: Path) -> tuple[subprocess.Popen, str]:
    chroma = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    port = _free_port()
    process = subprocess.Popen([chroma, "run", "--path", str(folder), "--host", "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    process.kill()
    sys.exit("chroma run did not start listening within 60 s")


def cpu_seconds(pids: Iterable[int]) -> float:
    """CPU seconds used so far by these processes and every process below them, ended ones included
    (a parent's `children_*` times hold its reaped children's)."""
    total = 0.0
    for pid in pids:
        root = psutil.Process(pid)
        for process in [root, *root.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:  # ended since the listing; its parent counts it once reaped
                continue
            total += times.user + times.system + times.children_user + times.children_system
    return total


def replicas(
    url: str, chroma: str, collection: str, threads: int, batches: list[list[str]], workdir: Path, servers: list[int],
) -> dict:
    """Start one replica per batch, release them together; the fleet's texts per second, and the CPU
    seconds the replicas and the `servers` (process ids) used meanwhile."""
    processes = []
    for n, batch in enumerate(batches):
        texts = workdir / f"{collection}-{n}.json"
        texts.write_text(json.dumps(batch))
        processes.append(subprocess.Popen(
            [sys.executable, "-c", REPLICA, url, chroma, collection, str(threads), str(texts)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        ))
    for process in processes:
        if process.stdout.readline().strip() != "ready":
            sys.exit("a replica failed to start")
    replica_ids = [process.pid for process in processes]
    before = cpu_seconds(replica_ids), cpu_seconds(servers)
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    seconds = [float(process.stdout.readline()) for process in processes]
    after = cpu_seconds(replica_ids), cpu_seconds(servers)
    for process in processes:
        process.stdin.write("close\n")
        process.stdin.flush()
    if any(process.wait() != 0 for process in processes):
        sys.exit("a replica failed")
    texts = sum(map(len, batches))
    return {"per_s": texts / max(seconds), "seconds": max(seconds),
            "replica_cpu_s": after[0] - before[0], "server_cpu_s": after[1] - before[1]}


def run(data: Path, notes: int, threads: int) -> dict:
    texts, _ = corpus(data)
    workdir = Path(tempfile.mkdtemp(prefix="agentmem-fleet-"))
    os.environ["AGENTMEM_HOME"] = str(workdir / "home")
    server = TemporaryPostgres()
    chroma, chroma_url = start_chroma(workdir / "chroma")
    servers = [server.pid, chroma.pid]
    try:
        one = replicas(server.create_database("one"), chroma_url, "one", threads, [texts[:notes]], workdir, servers)
        two = replicas(server.create_database("two"), chroma_url, "two", threads,
                       [texts[notes:2 * notes], texts[2 * notes:3 * notes]], workdir, servers)
    finally:
        chroma.terminate()
        chroma.wait(timeout=30)
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    cores = os.cpu_count() or 1
    for phase in (one, two):
        phase["cores_busy"] = (phase["replica_cpu_s"] + phase["server_cpu_s"]) / phase["seconds"]
    return {"notes_per_process": notes, "threads_per_process": threads, "cores": cores, "one": one, "two": two,
            "ratio": two["per_s"] / one["per_s"], "ratio_the_cores_allow": cores / one["cores_busy"]}


def markdown(result: dict, command: str) -> str:
    notes, threads = result["notes_per_process"], result["threads_per_process"]

    def row(processes: int, phase: dict, ratio: str) -> str:
        texts = notes * processes
        return (f"| {processes} | {notes} | {threads} | {phase['per_s']:.1f}{ratio} | {phase['cores_busy']:.2f}"
                f" | {1000 * phase['replica_cpu_s'] / texts:.1f} / {1000 * phase['server_cpu_s'] / texts:.1f} |")

    return "\n".join([
        "## Fleet: remember throughput, one vs two processes on one PostgreSQL store",
        "",
        f"Measured {machine_line()}.",
        f"Command: `{command}`",
        "",
        "| processes | texts per process | torch threads each | remember throughput (texts/s) | cores busy"
        " | CPU ms per text: replicas / servers |",
        "|---|---|---|---|---|---|",
        row(1, result["one"], ""),
        row(2, result["two"], f" ({result['ratio']:.2f}x)"),
        "",
        "Each process is a replica with its own Memory on one PostgreSQL 15 store and one `chroma run` server."
        " Target: two processes >= 1.6x one. Embedding runs before the store's advisory lock and the index"
        " write after it, in the background (its outbox rows claimed); the write section (neighbours,"
        " duplicates, links, the note's commit) is serialized. Cores busy: the CPU seconds of the replicas, PostgreSQL and `chroma run`"
        f" over the phase's wall time; at one process's CPU per text, this machine's {result['cores']} cores allow"
        f" two processes at most {result['ratio_the_cores_allow']:.2f}x one.",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agentmem.eval.fleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--notes", type=int, default=100, help="texts each process remembers")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    add_benchmarks_option(parser)
    args = parser.parse_args(argv)
    result = run(args.data, args.notes, args.threads)
    command = command_line(parser, argv)
    write_section("fleet", markdown(result, command.strip()), args.benchmarks)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

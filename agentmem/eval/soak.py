"""Soak: many writers, random SIGKILLs and fuzzed calls against one store, then a count of what broke.

    python -m agentmem.eval.soak --threads 8 --processes 2 --writes 1000 --kills 6 --fuzz 300 [--store postgres]

- 8 threads in this process and 2 child processes write unique notes to one store (a folder, or with
  `--store postgres` a PostgreSQL 15 database and a `chroma run` server, both started here; with
  `--store postgres-embedded` the database and the embedded index in this machine's folder); each child is
  SIGKILLed at random moments and restarted, resuming after its last acknowledged write. A write
  counts as acknowledged once `remember` returned (children append it to a log, flushed, after).
- Then N fuzzed calls (agentmem.eval.fuzzing) run against the same store, each checked against the
  contract, with the store reopened and read whole after each one.
Reported: lost (acknowledged, not in the store), duplicated (stored more than once), untyped
errors, calls that raised but changed the store, and stores left unreadable.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..memory import Memory
from ..models import load_embedder
from ..stores.location import local_folder
from .fleet import start_chroma
from .fuzzing import Outcome, apply, calls, readable
from .postgres_server import TemporaryPostgres
from .report import add_benchmarks_option, command_line, count, machine_line, write_section


def text_of(writer: str, seq: int) -> str:
    return f"Soak writer {writer} stored record number {seq} on shift {seq % 7}"


STORES = {
    "sqlite": "SQLite in a folder, embedded Chroma",
    "postgres": "PostgreSQL 15, a `chroma run` server",
    "postgres-embedded": "PostgreSQL 15, embedded Chroma on this machine",
}


@contextmanager
def soaked_store(kind: str, folder: Path) -> Iterator[dict[str, Any]]:
    """The store the soak writes to, as `Memory`'s arguments: a folder, or a database of a PostgreSQL server
    (durable, as users run it) with a `chroma run` server or the embedded index (`STORES`), stopped afterwards."""
    if kind == "sqlite":
        yield {"path": str(folder / "store")}
        return
    server = TemporaryPostgres()
    url = server.url("soak")
    try:
        server.create_database("soak")
        if kind == "postgres-embedded":  # the index in this machine's folder for the store (`local_folder`)
            yield {"path": url, "collection": "soak"}
            return
        chroma, chroma_url = start_chroma(folder / "chroma")
        try:
            yield {"path": url, "chroma_url": chroma_url, "collection": "soak"}
        finally:
            chroma.terminate()
            chroma.wait(timeout=30)
    finally:
        server.stop()
        shutil.rmtree(local_folder(url), ignore_errors=True)  # what the store kept on this machine


def child(location: dict[str, Any], writer: str, writes: int, ack: Path) -> None:
    """A writer process: resumes after its last acknowledged write."""
    done = len(ack.read_text().splitlines()) if ack.exists() else 0
    with Memory(**location) as mem, ack.open("a") as log:
        for seq in range(done, writes):
            mem.remember(text_of(writer, seq), user_id=writer, deduplicate=False)
            log.write(f"{seq}\n")
            log.flush()
            os.fsync(log.fileno())


def run_processes(location: dict[str, Any], processes: int, writes: int, kills: int, folder: Path
                  ) -> tuple[list[str], int]:
    """Run the child writers to completion, SIGKILLing them up to `kills` times in all; their acked
    texts and the SIGKILLs sent. Writers still running when this fails are killed, so none outlives
    the soak's folder."""
    budget = kills
    acks = {f"p{i}": folder / f"p{i}.acks" for i in range(processes)}
    for ack in acks.values():
        ack.touch()
    command = [sys.executable, "-m", "agentmem.eval.soak", "--child", json.dumps(location)]
    running = {name: subprocess.Popen([*command, name, str(writes), str(ack)]) for name, ack in acks.items()}
    rng = random.Random(0)
    try:
        while running:
            time.sleep(rng.uniform(2.0, 8.0))
            for name, process in list(running.items()):
                if process.poll() is not None:
                    if process.returncode != 0 and process.returncode != -signal.SIGKILL:
                        raise RuntimeError(f"writer {name} failed with exit code {process.returncode}")
                    if len(acks[name].read_text().splitlines()) >= writes:
                        del running[name]
                        continue
                    running[name] = subprocess.Popen([*command, name, str(writes), str(acks[name])])
                elif kills > 0 and rng.random() < 0.5:
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                    kills -= 1
    finally:
        for process in running.values():
            process.kill()
            process.wait()
    texts = [text_of(name, int(seq)) for name, ack in acks.items() for seq in ack.read_text().split()]
    return texts, budget - kills


def run_threads(mem: Memory, threads: int, writes: int) -> tuple[list[str], list[str]]:
    acked: list[str] = []
    errors: list[str] = []

    def write(writer: str) -> None:
        for seq in range(writes):
            try:
                mem.remember(text_of(writer, seq), user_id=writer, deduplicate=False)
                acked.append(text_of(writer, seq))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    workers = [threading.Thread(target=write, args=(f"t{i}",)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return acked, errors


def run_fuzz(location: dict[str, Any], folder: Path, examples: int, embedder) -> list[Outcome]:
    outcomes: list[Outcome] = []

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(data=st.data())
    def one(data) -> None:
        with Memory(**location, embedder=embedder) as mem:
            known = [n.id for n in mem.notes(include_archived=True, limit=50)]
            call = data.draw(calls(known, folder))
            outcomes.append(apply(mem, call, folder / "snapshot.jsonl"))
        if readable(folder, **location, embedder=embedder) is not None:
            outcomes[-1].result += " (store left unreadable)"

    one()
    return outcomes


def main(argv: list[str] | None = None) -> dict[str, int]:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4]), Path(sys.argv[5]))
        return {}
    parser = argparse.ArgumentParser(prog="python -m agentmem.eval.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=count, default=8)
    parser.add_argument("--processes", type=count, default=2)
    parser.add_argument("--writes", type=count, default=1000, help="writes per thread and per process")
    parser.add_argument("--kills", type=count, default=6, help="SIGKILLs sent to the writer processes in all")
    parser.add_argument("--fuzz", type=count, default=300, help="fuzzed calls after the writes (0: no fuzzing)")
    parser.add_argument("--store", choices=list(STORES), default="sqlite",
                        help="the note store: a folder (SQLite), or PostgreSQL with a Chroma server or with the"
                        " embedded index")
    add_benchmarks_option(parser, "--output")  # --output: its old name, still accepted
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="agentmem-soak-") as root, soaked_store(args.store, Path(root)) as location:
        folder = Path(root)
        embedder = load_embedder()
        with Memory(**location, embedder=embedder):
            pass
        with ThreadPoolExecutor(1) as pool:
            from_processes = pool.submit(run_processes, location, args.processes, args.writes, args.kills, folder)
            with Memory(**location, embedder=embedder) as mem:
                acked_by_threads, thread_errors = run_threads(mem, args.threads, args.writes)
            acked_by_processes, kills_sent = from_processes.result()
        with Memory(**location, embedder=embedder) as mem:
            stored = Counter(n.text for n in mem.notes(include_archived=True))
        acked = acked_by_threads + acked_by_processes
        write_seconds = time.monotonic() - started
        outcomes = run_fuzz(location, folder, args.fuzz, embedder) if args.fuzz else []
        counts = {
            "SIGKILLs sent": kills_sent,
            "acknowledged": len(acked),
            "lost": sum(1 for text in acked if stored[text] == 0),
            "duplicated": sum(1 for n in stored.values() if n > 1),
            "write errors": len(thread_errors),
        }
        if args.fuzz:
            counts |= {
                "fuzzed calls": len(outcomes),
                "fuzzed calls refused (typed)": sum(o.result == "typed" for o in outcomes),
                "untyped errors": sum(o.result.startswith("untyped") for o in outcomes),
                "raised but changed the store": sum(o.changed_on_error for o in outcomes),
            }
        left_unreadable = readable(folder, **location, embedder=embedder) is not None
        counts["stores left unreadable"] = sum("unreadable" in o.result for o in outcomes) + left_unreadable
    command = command_line(parser, argv)
    table = "\n".join(f"| {name} | {value} |" for name, value in counts.items())
    findings = "\n".join(f"- `{o.call!r}`: {o.result}" for o in outcomes if o.result not in ("ok", "typed"))
    fuzzing = f"then {args.fuzz} fuzzed calls" if args.fuzz else "fuzzing not run (`--fuzz 0`)"
    section = "soak" if args.store == "sqlite" else f"soak-{args.store}"  # each store's last run has a section
    write_section(section, f"""## Soak: writers, SIGKILLs and fuzzed calls on one store ({STORES[args.store]})

{machine_line()}. Command: `{command.strip()}`. {args.threads} threads + {args.processes} processes x {args.writes} writes,
{args.kills} SIGKILLs of the writer processes; writes took {write_seconds:.0f} s; {fuzzing}.

| measure | count |
|---|---|
{table}
{findings}
""", args.benchmarks)
    print(counts)
    return counts


if __name__ == "__main__":
    main()

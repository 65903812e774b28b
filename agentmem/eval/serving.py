"""What serving costs: `agentmem serve` next to in-process calls, and the shell with and without a server.

    python -m agentmem.eval.serving [--data ../shared/data] [--notes 1000] [--probes 100] [--threads 1]

Measured in one run: remember / recall p50 and p95 in process and over HTTP (httpx, keep-alive),
on two stores holding the same notes, probe by probe alternately so load spikes on a shared machine
hit both; `agentmem --url ... recall` and `agentmem --path ... recall` end to end (new processes);
`agentmem --help`; and 16 concurrent HTTP clients x 200 remember/recall calls (lost, duplicated,
failed). Targets: served p50 <= in-process p50 + 5 ms; `--url` recall <= 1 s; `--help` <= 1 s.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

from ..memory import Memory
from ..models import load_embedder
from .latency import corpus, percentiles, timed
from .report import add_benchmarks_option, command_line, machine_line, write_section

CLIENTS, CALLS = 16, 200


def agentmem_command() -> list[str]:
    """The installed console script (what users run), else the module."""
    script = Path(sys.executable).with_name("agentmem")
    return [str(script)] if script.exists() else [sys.executable, "-m", "agentmem.cli"]


def start_server(store: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([*agentmem_command(), "--path", str(store), "serve", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    sys.exit("agentmem serve did not start within 300 s")


def wall(command: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    """Median and max wall time of a command run `runs` times (each must succeed), and its median CPU time
    (user + system): on a shared machine the wall time also counts waiting for a core, the CPU time does not."""
    seconds, cpu = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env, timeout=600)
        seconds.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return {"median_s": statistics.median(seconds), "max_s": max(seconds), "cpu_median_s": statistics.median(cpu),
            "runs": runs}


def concurrency(url: str) -> dict[str, float]:
    """CLIENTS threads, each alternating remember and recall for CALLS calls; then every note counted."""
    run, errors, stored, lock = uuid.uuid4().hex[:8], [], {}, threading.Lock()

    def client(c: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            for i in range(CALLS // 2):
                text = f"Client {c} noted {' '.join(uuid.uuid4().hex[:6] for _ in range(4))} in run {run}"
                response = http.post("/v1/notes", json={"text": text, "user_id": f"load-{run}"})
                if response.status_code != 200:
                    errors.append(response.status_code)
                    continue
                with lock:
                    stored.setdefault(response.json()["id"], []).append(text)
                if http.post("/v1/recall", json={"query": text, "user_id": f"load-{run}", "k": 3}).status_code != 200:
                    errors.append("recall")

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    with httpx.Client(base_url=url, timeout=120) as http, http.stream("GET", "/v1/export") as response:
        texts = [json.loads(line)["text"] for line in response.iter_lines() if line]
    sent = [t for ts in stored.values() for t in ts]
    found = [t for t in texts if run in t]
    return {
        "calls": CLIENTS * CALLS, "seconds": seconds, "calls_per_s": CLIENTS * CALLS / seconds, "errors": len(errors),
        "lost": len(set(sent) - set(found)), "duplicated": len(found) - len(set(found)) + len(sent) - len(stored),
    }


def thread_env(threads: int) -> dict[str, str]:
    """The same thread limits for this process and the server: torch, numpy's BLAS and OpenMP read them at load."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False",
            "TOKENIZERS_PARALLELISM": "false"}


def run(data: Path, notes: int, probes: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    env = {**os.environ, **thread_env(threads)}
    texts, questions = corpus(data)
    fill, probe_texts, asks = texts[probes:probes + notes], texts[:probes], questions[:probes]
    workdir = Path(tempfile.mkdtemp(prefix="agentmem-serving-"))
    local_store, served_store = workdir / "local", workdir / "served"
    memory = Memory(local_store, embedder=load_embedder())
    memory.remember_many(fill, user_id="bench")
    process, url = start_server(served_store, env)
    try:
        http = httpx.Client(base_url=url, timeout=120)
        for start in range(0, len(fill), 500):
            http.post("/v1/notes/batch", json={"items": fill[start:start + 500], "user_id": "bench"}).raise_for_status()
        times: dict[str, list[float]] = {k: [] for k in ("remember_local", "remember_served", "recall_local", "recall_served")}
        calls = {
            "remember_local": lambda text, question: memory.remember(text, user_id="bench"),
            "remember_served": lambda text, question: http.post(
                "/v1/notes", json={"text": text, "user_id": "bench"}).raise_for_status(),
            "recall_local": lambda text, question: memory.recall(question, user_id="bench", k=10),
            "recall_served": lambda text, question: http.post(
                "/v1/recall", json={"query": question, "user_id": "bench", "k": 10}).raise_for_status(),
        }
        for i, (text, question) in enumerate(zip(probe_texts, asks)):
            for verb in ("remember", "recall"):  # which side goes first alternates: a store's background work
                sides = ("local", "served") if i % 2 else ("served", "local")  # after a write must not always
                for side in sides:                                             # land on the same side's next call
                    name = f"{verb}_{side}"
                    times[name].append(timed(lambda: calls[name](text, question)))
        memory.close()
        cli = agentmem_command()
        results = {
            "notes": notes, "probes": probes, "threads": threads,
            "calls": {name: percentiles(seconds) for name, seconds in times.items()},
            "cli": {
                "help": wall([*cli, "--help"], env, 5),
                "url_recall": wall([*cli, "--url", url, "recall", asks[0], "--user", "bench"], env, 5),
                "path_recall": wall([*cli, "--path", str(local_store), "recall", asks[0], "--user", "bench"], env, 3),
            },
            "concurrency": concurrency(url),
            "load_average": os.getloadavg()[0],
        }
        http.close()
    finally:
        process.terminate()
        process.wait(timeout=60)
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def markdown(results: dict, command: str) -> str:
    calls, cli, load = results["calls"], results["cli"], results["concurrency"]

    def row(verb: str) -> str:
        local, served = calls[f"{verb}_local"], calls[f"{verb}_served"]
        extra = served["p50_ms"] - local["p50_ms"]
        return (f"| {verb} | {local['p50_ms']:.1f} / {local['p95_ms']:.1f} | {served['p50_ms']:.1f} / "
                f"{served['p95_ms']:.1f} | {extra:+.1f} ms | {'yes' if extra <= 5 else 'no'} |")

    def timing(name: str, key: str, target: str) -> str:
        t = cli[key]
        return f"| {name} | {t['median_s']:.2f} | {t['max_s']:.2f} | {t['cpu_median_s']:.2f} | {t['runs']} | {target} |"

    return "\n".join([
        "## Serving: REST next to in-process calls, the shell with and without a server",
        "",
        f"Measured {machine_line()}; OMP/MKL/OpenBLAS and torch threads: {results['threads']}, here and in the server.",
        f"Command: `{command}`",
        "",
        f"Two stores holding the same {results['notes']} LoCoMo/ZsRE notes: one opened in process, one served by"
        f" `agentmem serve` on loopback (httpx, keep-alive). {results['probes']} probes, in process and served"
        " alternately (which side goes first alternates too). Served times include HTTP, JSON and validation"
        " on both ends.",
        "",
        "| call | in process p50 / p95 (ms) | served p50 / p95 (ms) | served - in process (p50) | target +5 ms met |",
        "|---|---|---|---|---|",
        row("remember"),
        row("recall"),
        "",
        "| shell command (new process each run) | wall median s | wall max s | CPU median s | runs | target (wall) |",
        "|---|---|---|---|---|---|",
        timing("`agentmem --help`", "help", "<= 1 s"),
        timing("`agentmem --url URL recall ...` (server running)", "url_recall", "<= 1 s"),
        timing("`agentmem --path STORE recall ...` (no server: loads torch, MiniLM, Chroma)", "path_recall", "-"),
        "",
        f"Concurrency: {CLIENTS} HTTP clients x {CALLS} calls (remember, then recall of what was remembered):"
        f" {load['calls']} calls in {load['seconds']:.1f} s ({load['calls_per_s']:.0f} calls/s);"
        f" errors {load['errors']}, lost {load['lost']}, duplicated {load['duplicated']}.",
        "",
        f"Load average (1 min) when the run ended: {results['load_average']:.1f} on {os.cpu_count()} cores"
        " (other benchmarks shared the machine).",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agentmem.eval.serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--notes", type=int, default=1000)
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="also write the raw figures as JSON here")
    add_benchmarks_option(parser)
    args = parser.parse_args(argv)
    if os.environ.get("OMP_NUM_THREADS") != str(args.threads):  # read at import time: start again with it set
        command = [sys.executable, "-m", "agentmem.eval.serving", *(argv if argv is not None else sys.argv[1:])]
        os.execve(sys.executable, command, {**os.environ, **thread_env(args.threads)})
    results = run(args.data, args.notes, args.probes, args.threads)
    command = command_line(parser, argv)
    write_section("serving", markdown(results, command.strip()), args.benchmarks)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

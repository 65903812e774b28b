"""LoCoMo evidence recall of the default ranking on each note store (SQLite, PostgreSQL), same data, same code.

    python -m agentmem.eval.locomo_stores [--conversations 3] [--stores sqlite postgres]

Runs `agentmem.eval.locomo`'s ingestion, questions and scoring with its `Memory` opened on
the store named: a folder, or a database of a PostgreSQL 15 server started for the run
(its vector index embedded in the run's folder). Issue 16's target: PostgreSQL within 0.01
recall@10 of SQLite.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from ..memory import Memory
from . import locomo
from .postgres_server import TemporaryPostgres
from .report import machine_line, write_section


def postgres_memory(server: TemporaryPostgres) -> type[Memory]:
    """`Memory` with each folder the benchmark names mapped to a database of its own."""
    databases: dict[str, str] = {}

    class PostgresMemory(Memory):
        def __init__(self, folder: str | Path, **kwargs: object) -> None:
            if str(folder) not in databases:
                databases[str(folder)] = server.create_database()
            super().__init__(databases[str(folder)], **kwargs)

    return PostgresMemory


def run(data: Path, conversations: int, stores: list[str]) -> dict:
    loaded = locomo.load(data)[:conversations]
    config, turn_format = locomo.ablations()["agentmem (default)"]
    root = Path(tempfile.mkdtemp(prefix="agentmem-locomo-stores-"))
    os.environ["AGENTMEM_HOME"] = str(root / "home")
    results = {}
    for store in stores:
        server = TemporaryPostgres() if store == "postgres" else None
        try:
            locomo.Memory = postgres_memory(server) if server else Memory  # the store the benchmark opens
            retriever = locomo.IngestedStores(root / store).retriever(config, turn_format)
            results[store] = locomo.evaluate(loaded, retriever)["all conversations"]["all"]
        finally:
            locomo.Memory = Memory
            if server:
                server.stop()
        print(store, json.dumps(results[store]), flush=True)
    return results


def markdown(results: dict, conversations: int, command: str) -> str:
    lines = [
        "## Retrieval on each note store: LoCoMo evidence recall, SQLite and PostgreSQL",
        "",
        f"Measured {machine_line()}.",
        f"Command: `{command}`",
        "",
        f"The default ranking on the first {conversations} dev conversation(s); only the note store differs"
        " (PostgreSQL's lexical score is BM25-shaped: per-term IDF x ts_rank; SQLite's is FTS5's BM25).",
        "",
        "| store | questions | recall@1 | recall@5 | recall@10 | recall@25 | hit@10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for store, r in results.items():
        lines.append(f"| {store} | {r['questions']} | {r['recall@1']:.3f} | {r['recall@5']:.3f} | {r['recall@10']:.3f}"
                     f" | {r['recall@25']:.3f} | {r['hit@10']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/locomo/locomo_dev.json"))
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--stores", nargs="+", choices=["sqlite", "postgres"], default=["sqlite", "postgres"])
    parser.add_argument("--benchmarks", type=Path, default=Path("BENCHMARKS.md"))
    args = parser.parse_args(argv)
    results = run(args.data, args.conversations, args.stores)
    command = "python -m agentmem.eval.locomo_stores " + " ".join(argv if argv is not None else sys.argv[1:])
    write_section("locomo-stores", markdown(results, args.conversations, command.strip()), args.benchmarks)


if __name__ == "__main__":
    main()

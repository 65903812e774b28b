"""The `agentmem` command: a memory store from the shell. Every command prints JSON."""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import AgentMemError


def _time(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date/time: {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentmem", description="Long-term memory for LLM agents.")
    parser.add_argument("--path", type=Path, default=Path("memdata"), help="store folder (default: ./memdata)")
    parser.add_argument("--chroma-url", default=None, help="use a Chroma server, e.g. http://127.0.0.1:8000")
    commands = parser.add_subparsers(dest="command", required=True)

    scope = argparse.ArgumentParser(add_help=False)
    scope.add_argument("--user", dest="user_id")
    scope.add_argument("--agent", dest="agent_id")
    scope.add_argument("--session", dest="session_id")
    scope.add_argument("--at", type=_time, help="ISO time to act at (default: now)")

    remember = commands.add_parser("remember", parents=[scope], help="store a memory")
    remember.add_argument("text")
    remember.add_argument("--tag", dest="tags", action="append", default=[])

    recall = commands.add_parser("recall", parents=[scope], help="find memories")
    recall.add_argument("query")
    recall.add_argument("-k", type=int, default=5)
    recall.add_argument("--archived", action="store_true", help="include archived notes")

    forget = commands.add_parser("forget", help="delete a memory for good")
    forget.add_argument("id")

    decay = commands.add_parser("decay", help="archive faded memories")
    decay.add_argument("--at", type=_time)

    commands.add_parser("stats", help="counts of notes, links and users")

    export = commands.add_parser("export", help="write all notes as JSONL")
    export.add_argument("file", type=Path)

    import_ = commands.add_parser("import", help="load notes from JSONL")
    import_.add_argument("file", type=Path)

    consolidate = commands.add_parser(
        "consolidate", help="edit the facts of often-recalled notes into the local model (progress on stderr)"
    )
    consolidate.add_argument("--dry-run", action="store_true", help="print the decisions, change nothing")
    consolidate.add_argument("--at", type=_time, help="ISO time to judge the notes at (default: now)")
    consolidate.add_argument("--editor", help="editor kind (default: the store's saved one, else grace)")
    consolidate.add_argument("--policy", type=json.loads, default={}, help='policy overrides as JSON, e.g. \'{"min_recalls": 2}\'')
    return parser


def run(args: argparse.Namespace) -> Any:
    from .memory import Memory  # heavy imports only once the arguments are known good

    scope = {k: getattr(args, k, None) for k in ("user_id", "agent_id", "session_id", "at")}
    with Memory(args.path, chroma_url=args.chroma_url, editor=getattr(args, "editor", None)) as mem:
        match args.command:
            case "remember":
                return mem.remember(args.text, tags=args.tags, **scope).model_dump(mode="json")
            case "recall":
                hits = mem.recall(args.query, k=args.k, include_archived=args.archived, **scope)
                return [hit.model_dump(mode="json") for hit in hits]
            case "forget":
                mem.forget(args.id)
                return {"forgotten": args.id}
            case "decay":
                return mem.decay(at=args.at).model_dump(mode="json")
            case "stats":
                return mem.stats().model_dump(mode="json")
            case "export":
                return {"exported": mem.export(args.file), "file": str(args.file)}
            case "import":
                return mem.import_(args.file).model_dump(mode="json")
            case "consolidate":
                report = mem.consolidate(args.policy, dry_run=args.dry_run, at=args.at, progress=True)
                return report.model_dump(mode="json")
    raise AssertionError(args.command)  # argparse only lets known commands through


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except AgentMemError as exc:
        print(f"agentmem: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

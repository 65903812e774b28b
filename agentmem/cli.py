"""The `agentmem` command: a memory store from the shell. Every command prints JSON.

Commands act on the store in `--path`, or, with `--url`, on a running `agentmem serve` (a call
then costs milliseconds instead of a model load). Heavy imports (torch, Chroma, the server) happen
only once the arguments are known good, so `--help` and argument errors answer at once.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

DEFAULT_PORT = 8765
LOCAL_ONLY = ("serve", "mcp", "restore-backup", "migrate")  # commands on this machine's store, never a server's
CREATES_STORE = ("remember", "import")  # the verbs on notes that may start a new store; the others need one
DURATION = re.compile(r"(\d+)([smhd])")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
MAX_PERIOD = timedelta(days=365)   # jobs.MAX_EVERY, kept here so that the shell's --help imports no server code


def _time(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date/time: {value!r}") from None


def _duration(value: str) -> timedelta:
    """`24h`, `30m`, `1d12h`, `90s`: positive, and at most MAX_PERIOD (365 days)."""
    parts = DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise argparse.ArgumentTypeError(f"not a duration like 24h, 30m or 1d12h: {value!r}")
    too_long = argparse.ArgumentTypeError(f"the duration must be at most {MAX_PERIOD.days} days: {value!r}")
    duration = timedelta()
    for number, unit in parts:
        if len(number.lstrip("0")) > 12:   # over a year in any unit; int() of 10,000 digits is slow, timedelta overflows
            raise too_long
        duration += timedelta(**{UNITS[unit]: int(number)})
    if duration <= timedelta(0):
        raise argparse.ArgumentTypeError("the duration must be positive")
    if duration > MAX_PERIOD:
        raise too_long
    return duration


def _port(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port (1-65535): {value!r}")
    return int(value)


def _positive(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {value!r}")
    return int(value)


def _http_url(value: str) -> str:
    """An http(s) URL with a host: `localhost:1234` would be read as the scheme `localhost`. A refusal shows it
    without its password, and a user part that httpx would misread is refused before anything is opened."""
    from .errors import InvalidInputError
    from .server.client import redacted_url, split_credentials  # httpx only: fast

    try:
        parts = urlsplit(value)
        good = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not one
        good = False
    if not good:
        raise argparse.ArgumentTypeError(
            f"not an http(s) URL with a host, like http://127.0.0.1:1234/v1: {redacted_url(value)!r}")
    try:
        split_credentials(value)
    except InvalidInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _policy(value: str) -> dict[str, Any]:
    try:
        policy = json.loads(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not JSON: {value!r}") from None
    if not isinstance(policy, dict):
        raise argparse.ArgumentTypeError("the policy must be a JSON object")
    return policy


STORE_OPTIONS = ("--path", "--chroma-url", "--collection", "--url", "--api-key")


class Parser(argparse.ArgumentParser):
    """The root parser: a store option put after the command gets the order it needs, not only "unrecognized"."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments") and any(option in message for option in STORE_OPTIONS):
            message += "; the store's options come before the command: agentmem --path PATH COMMAND ..."
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="agentmem", description="Long-term memory for LLM agents.")
    parser.add_argument("--path", help="store folder, or a postgresql:// URL (default: ./memdata)")
    parser.add_argument("--chroma-url", default=None, help="use a Chroma server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--collection", default="agentmem_notes",
                        help="the Chroma collection of the store's vectors: one per store on a Chroma server")
    parser.add_argument("--url", help="talk to a running `agentmem serve` instead of opening --path (env AGENTMEM_URL,"
                                       " which a --path given overrides)")
    parser.add_argument("--api-key", default=os.environ.get("AGENTMEM_API_KEY"),
                        help="the key --url sends, and serve's key when it is given none (env AGENTMEM_API_KEY)")
    commands = parser.add_subparsers(dest="command", required=True)

    scope = argparse.ArgumentParser(add_help=False)
    scope.add_argument("--user", dest="user_id")
    scope.add_argument("--agent", dest="agent_id")
    scope.add_argument("--session", dest="session_id")
    scope.add_argument("--at", type=_time, help="ISO time to act at (default: now)")
    note = argparse.ArgumentParser(add_help=False)
    note.add_argument("id", help="note id")

    remember = commands.add_parser("remember", parents=[scope], help="store a memory")
    remember.add_argument("text")
    remember.add_argument("--tag", dest="tags", action="append", default=[])

    recall = commands.add_parser("recall", parents=[scope], help="find memories")
    recall.add_argument("query")
    recall.add_argument("-k", type=int, default=5, help="how many notes (default: 5)")
    recall.add_argument("--archived", action="store_true", help="include archived notes")

    listing = commands.add_parser("list", help="the memories of a scope, oldest first (nothing reinforced)")
    listing.add_argument("--user", dest="user_id")
    listing.add_argument("--agent", dest="agent_id")
    listing.add_argument("--session", dest="session_id")
    listing.add_argument("--archived", action="store_true", help="include archived notes")
    listing.add_argument("--limit", type=int, default=100, help="at most this many notes (default: 100)")
    listing.add_argument("--offset", type=int, default=0, help="skip this many first (default: 0)")
    commands.add_parser("get", parents=[note], help="one memory")
    update = commands.add_parser("update", parents=[note], help="change a memory's text or tags (history kept)")
    update.add_argument("--text")
    update.add_argument("--tag", dest="tags", action="append", default=None)
    commands.add_parser("history", parents=[note], help="earlier versions of a memory")
    commands.add_parser("forget", parents=[note], help="delete a memory for good")
    commands.add_parser("neighbors", parents=[note], help="the memories linked to one")
    link = commands.add_parser("link", parents=[note], help="link two memories by hand")
    link.add_argument("other", help="the other note id")
    link.add_argument("--weight", type=float, default=1.0, help="the link's strength, in (0, 1] (default: 1.0)")

    decay = commands.add_parser("decay", help="archive faded memories")
    decay.add_argument("--at", type=_time, help="ISO time to judge retention at (default: now)")
    restore = commands.add_parser("restore", parents=[note], help="bring an archived memory back")
    restore.add_argument("--at", type=_time, help="ISO time of the restore (default: now)")
    commands.add_parser("stats", help="counts of notes, links and users")

    export = commands.add_parser("export", help="write all notes as JSONL into FILE (replacing a file already there)",
                                 description="Write all notes as JSONL into FILE. It replaces a file already there"
                                             " (the new file appears whole or not at all).")
    export.add_argument("file", type=Path, metavar="FILE", help="the JSONL file to write (replaces one already there)")
    import_ = commands.add_parser("import", help="load notes from JSONL")
    import_.add_argument("file", type=Path)

    commands.add_parser("repair", help="rebuild the vector index from the note graph")
    backup = commands.add_parser("backup", help="copy the store (while in use) into a new folder")
    backup.add_argument("dest", type=Path)
    restore_backup = commands.add_parser("restore-backup", help="make --path a new store from a backup folder")
    restore_backup.add_argument("source", type=Path)
    migrate = commands.add_parser(
        "migrate", help="move a folder store into an empty PostgreSQL database (vectors, ledger and editor state too)"
    )
    migrate.add_argument("--from", dest="source", type=Path, required=True, help="the store folder, e.g. memdata")
    migrate.add_argument("--to", dest="target", required=True, help="postgresql://user@host:port/database")
    migrate.add_argument("--collection", default=argparse.SUPPRESS, help="the same as the global --collection")

    plan = commands.add_parser("plan", help="what consolidation would do now and why; changes nothing")
    plan.add_argument("--at", type=_time, help="ISO time to judge the notes at (default: now)")
    plan.add_argument("--policy", type=_policy, default={}, help='policy overrides as JSON, e.g. \'{"min_recalls": 2}\'')
    consolidate = commands.add_parser(
        "consolidate", help="edit the facts of often-recalled notes into the local model (progress on stderr)"
    )
    consolidate.add_argument("--dry-run", action="store_true", help="print the decisions, change nothing")
    consolidate.add_argument("--at", type=_time, help="ISO time to judge the notes at (default: now)")
    consolidate.add_argument("--editor", help="editor kind (default: the store's saved one, else grace)")
    consolidate.add_argument("--policy", type=_policy, default={},
                             help='policy overrides as JSON, e.g. \'{"min_recalls": 2}\'')
    ledger = commands.add_parser("ledger", help="which note became which edit")
    ledger.add_argument("--note", dest="note_id", help="only this note's edits")
    answer = commands.add_parser("answer", parents=[scope], help="answer from the weights or the recalled notes")
    answer.add_argument("question")
    answer.add_argument("-k", type=int, default=5, help="notes recalled as context, at most (default: 5)")
    answer.add_argument("--no-retrieval", dest="retrieval", action="store_false", help="the model (and its edits) alone")

    serve = commands.add_parser("serve", help="serve the store over REST, MCP (/mcp) and an OpenAI-compatible chat API")
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"the port (default: {DEFAULT_PORT})")
    serve.add_argument("--allowed-host", dest="allowed_hosts", action="append", default=[], metavar="NAME",
                       help="a host name clients reach the server by, besides 127.0.0.1, localhost and [::1] "
                            "(other Host headers get 421; bound beyond loopback with none given, any name is answered)")
    serve.add_argument("--api-key", dest="keys", action="append", default=[], metavar="KEY[:USER]",
                       help="accept this key (bound to USER if given); repeatable; env AGENTMEM_API_KEY")
    serve.add_argument("--keys-file", type=Path, help="a file of KEY[:USER] lines")
    serve.add_argument("--editor", help="editor kind (default: the store's saved one, else grace)")
    serve.add_argument("--upstream", type=_http_url,
                       help="answer chats with this OpenAI-compatible server (base URL, e.g. .../v1)")
    serve.add_argument("--upstream-key", default=os.environ.get("AGENTMEM_UPSTREAM_KEY"),
                       help="the upstream's API key (env AGENTMEM_UPSTREAM_KEY)")
    serve.add_argument("--consolidate-every", type=_duration, metavar="DURATION",
                       help="run a consolidation job on a schedule, e.g. 24h")
    serve.add_argument("--max-body", type=_positive, default=8 * 1024 * 1024, help="largest request body in bytes")

    mcp = commands.add_parser("mcp", help="serve the store as an MCP server over stdio")
    mcp.add_argument("--editor", help="editor kind (default: the store's saved one, else grace)")
    return parser


def where(args: argparse.Namespace) -> None:
    """--path or --url, as given; else AGENTMEM_URL; else ./memdata. A --path given beats the environment's
    server, which would otherwise have been used in its place without a word."""
    from .errors import InvalidInputError

    if args.path is not None and args.url is not None:
        raise InvalidInputError("give --path (a local store) or --url (a server), not both")
    if args.command in LOCAL_ONLY and args.url is not None:
        raise InvalidInputError(f"{args.command} works on this machine's stores, not a server's: leave out --url")
    if args.path is None and args.url is None and args.command not in LOCAL_ONLY:
        args.url = os.environ.get("AGENTMEM_URL") or None
    if args.path is None:
        args.path = "memdata"


def run(args: argparse.Namespace) -> Any:
    """The command's result (JSON-able), on the local store or the server at --url."""
    where(args)
    if not args.url:  # a local command loads MiniLM: no news, on a command that prints JSON
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if args.command == "serve":
        return serve(args)
    if args.command == "mcp":
        return serve_mcp(args)
    if args.command == "restore-backup":
        return restore_backup(args)
    if args.command == "migrate":
        return migrate_store(args)
    if args.url:
        from .server.client import RemoteMemory  # httpx only: fast

        with RemoteMemory(args.url, args.api_key) as mem:
            return act(mem, args)
    from .memory import Memory  # heavy imports only once the arguments are known good

    if args.command in CREATES_STORE:
        check_first(args)
    else:
        require_store(args.path)
    with Memory(args.path, chroma_url=args.chroma_url, collection=args.collection,
                editor=getattr(args, "editor", None)) as mem:
        return act(mem, args)


def check_first(args: argparse.Namespace) -> None:
    """The input of a command that may start a store, checked as the memory will check it, before the store
    opens: a refused first remember or import made a whole empty store (on a Chroma server, one that claimed
    the collection)."""
    from . import validation
    from .config import MemoryConfig
    from .transfer import read_notes

    for name in ("user_id", "agent_id", "session_id"):
        validation.scope(name, getattr(args, name, None))
    if args.command == "remember":
        validation.text(args.text, MemoryConfig().max_text_chars)
        validation.tags(args.tags)
    else:
        read_notes(validation.file_path(args.file))


def require_store(path: str) -> None:
    """Refuse a folder that holds no store: a mistyped --path would otherwise read, and make, a new empty one."""
    from .errors import StoreUnavailableError
    from .stores.location import GRAPH_FILE, check_location, is_postgres_url
    from .stores.postgres_connection import holds_store, redacted

    check_location(path)
    if is_postgres_url(path):
        if not holds_store(path):
            raise StoreUnavailableError(f"no store in the database {redacted(path)}; `agentmem --path URL remember"
                                        " ...`, `import` or `migrate --to URL` starts one")
    elif not (Path(path) / GRAPH_FILE).is_file():
        raise StoreUnavailableError(f"no store at {path} (no {GRAPH_FILE} there); "
                                    f"`agentmem --path {path} remember ...` or `import` starts one")


def act(mem: Any, args: argparse.Namespace) -> Any:
    """One command on a `Memory` or a `RemoteMemory` (they share these verbs)."""
    scope = {k: getattr(args, k, None) for k in ("user_id", "agent_id", "session_id", "at")}
    match args.command:
        case "remember":
            return mem.remember(args.text, tags=args.tags, **scope)
        case "recall":
            return mem.recall(args.query, k=args.k, include_archived=args.archived, **scope)
        case "list":
            return mem.notes(user_id=args.user_id, agent_id=args.agent_id, session_id=args.session_id,
                             include_archived=args.archived, limit=args.limit, offset=args.offset)
        case "get":
            return mem.get(args.id)
        case "update":
            return mem.update(args.id, text=args.text, tags=args.tags)
        case "history":
            return [{"at": at, "change": change, "note": note} for at, change, note in mem.history(args.id)]
        case "forget":
            mem.forget(args.id)
            return {"forgotten": args.id}
        case "neighbors":
            return mem.neighbors(args.id)
        case "link":
            mem.link(args.id, args.other, weight=args.weight)
            return {"linked": [args.id, args.other], "weight": args.weight}
        case "decay":
            return mem.decay(at=args.at)
        case "restore":
            return mem.restore(args.id, at=args.at)
        case "stats":
            return mem.stats()
        case "export":
            return {"exported": mem.export(args.file), "file": str(args.file)}
        case "import":
            return mem.import_(args.file)
        case "repair":
            return {"reindexed": mem.rebuild_index()}
        case "backup":
            return {"backup": str(mem.backup(args.dest))}
        case "plan":
            return mem.plan(args.policy, at=args.at)
        case "consolidate":
            return mem.consolidate(args.policy, dry_run=args.dry_run, at=args.at, progress=True)
        case "ledger":
            return mem.ledger(args.note_id)
        case "answer":
            return mem.answer(args.question, k=args.k, retrieval=args.retrieval, **scope)
    raise AssertionError(args.command)  # argparse only lets known commands through


def serve(args: argparse.Namespace) -> None:
    """Run the server until SIGTERM / Ctrl-C; the store is closed on the way out."""
    from .server.auth import ApiKeys, trusted_hosts  # light: a bad key or host is refused before torch loads

    specs = args.keys or [k for k in [args.api_key] if k]  # `agentmem --api-key K serve`, or env AGENTMEM_API_KEY
    keys = ApiKeys.parse(specs, args.keys_file)
    trusted_hosts(args.host, args.allowed_hosts)  # a bad --allowed-host is refused before the store opens

    import uvicorn

    from .consolidation.policy import ConsolidationPolicy
    from .memory import Memory
    from .server.app import create_app

    # a user-bound key may not mark a note shared; two of them stating one fact must not share it either
    policy = ConsolidationPolicy(share_from=None) if keys.binds_users else None
    with listening(args.host, args.port) as listener:  # before the store opens: a busy port costs no model load
        memory = Memory(args.path, chroma_url=args.chroma_url, collection=args.collection, editor=args.editor,
                        policy=policy)
        try:
            app = create_app(memory, keys=keys, upstream=args.upstream, upstream_key=args.upstream_key,
                             consolidate_every=args.consolidate_every, max_body=args.max_body, host=args.host,
                             allowed_hosts=args.allowed_hosts)
        except BaseException:  # the app closes the store on shutdown; without an app, close it here
            memory.close()
            raise
        print(f"agentmem: serving {args.path} on http://{args.host}:{args.port} (REST /v1, MCP /mcp, OpenAI "
              f"/v1/chat/completions){' with API keys' if keys.enabled else ''}", file=sys.stderr, flush=True)
        if not keys.enabled and args.host not in ("127.0.0.1", "localhost", "::1"):
            print("agentmem: warning: no API key, and the server is reachable beyond this machine", file=sys.stderr)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        try:
            server.run(sockets=[listener])
        except KeyboardInterrupt:  # Ctrl-C: uvicorn raises it again once it has shut down
            pass
    if not server.started:  # the app's start-up failed (uvicorn logged why), as `uvicorn.run` exits
        sys.exit(3)


def listening(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, for uvicorn to listen on; refuses a port it cannot have."""
    from .errors import InvalidInputError

    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)  # as uvicorn would bind it
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise InvalidInputError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    return listener


def restore_backup(args: argparse.Namespace) -> Any:
    """A new store at --path from a backup (local only: a server keeps its store open)."""
    from .memory import Memory

    with Memory.restore_backup(args.source, args.path, chroma_url=args.chroma_url,
                               collection=args.collection) as memory:
        return memory.stats()


def migrate_store(args: argparse.Namespace) -> Any:
    """The folder store --from copied into the PostgreSQL database --to (local only, like restore-backup).

    Ctrl-C or SIGTERM ends it with one line saying what the database holds (still empty: run it again;
    the whole copy: use it) and exit code 128 + the signal's number (130, 143), as shells report them."""
    import signal

    received = [signal.SIGINT]

    def terminated(signum: int, frame: Any) -> None:
        received[0] = signal.Signals(signum)
        raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGINT), signal.signal(signal.SIGTERM, terminated)
    started = False
    try:
        from .stores.migrate import MigrationInterrupted, migrate

        started = True
        return migrate(args.source, args.target, chroma_url=args.chroma_url, collection=args.collection)
    except KeyboardInterrupt as exc:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C while the line is written changes nothing
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if started and isinstance(exc, MigrationInterrupted):   # it says what the database holds
            said = str(exc)
        elif not started:
            said = "the migration was interrupted before anything was copied; run the same migrate again"
        else:   # interrupted again while the database was asked what it holds
            said = ("the migration was interrupted; if the database holds no store, run the same migrate again; if"
                    " it holds the copy, that copy is whole (the copy is one transaction): use it")
        print(f"agentmem: interrupted ({received[0].name}): {said}", file=sys.stderr, flush=True)
        sys.exit(128 + received[0])
    finally:   # a handler installed outside Python reads as None, and is restored as the default
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous[0] is None else previous[0])
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous[1] is None else previous[1])


def serve_mcp(args: argparse.Namespace) -> None:
    """MCP over stdin/stdout: stdout carries the protocol only."""
    from .memory import Memory
    from .server.mcp_server import build_mcp_server
    from .server.mcp_stdio import run_stdio
    from .server.model_lane import ModelLane

    with Memory(args.path, chroma_url=args.chroma_url, collection=args.collection, editor=args.editor) as memory:
        run_stdio(build_mcp_server(memory, ModelLane()))


def jsonable(result: Any) -> Any:
    """Pydantic models (local results) and plain JSON (remote results) alike, as JSON values."""
    if hasattr(result, "model_dump"):
        return result.model_dump(mode="json")
    if isinstance(result, (list, tuple)):
        return [jsonable(item) for item in result]
    if isinstance(result, dict):
        return {key: jsonable(value) for key, value in result.items()}
    if isinstance(result, datetime):
        return result.isoformat()
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import AgentMemError

    try:
        result = run(args)
    except AgentMemError as exc:
        print(f"agentmem: {getattr(exc, 'name', type(exc).__name__)}: {exc}", file=sys.stderr)
        return 2
    if result is not None:
        try:
            json.dump(jsonable(result), sys.stdout, indent=2, ensure_ascii=False)
            sys.stdout.write("\n")
            sys.stdout.flush()
        except BrokenPipeError:  # the reader stopped early (`| head`): no traceback, and none at exit either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

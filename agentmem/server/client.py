"""`RemoteMemory`: the verbs of `Memory`, over HTTP to a running `agentmem serve`.

The shell uses it for `agentmem --url ...`: a call costs a round trip, not a model load. It imports
only httpx, so it starts fast; results are plain JSON (dicts and lists), as the server sent them.
"""
from __future__ import annotations

import math
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from ..errors import AgentMemError, InvalidInputError, StoreUnavailableError
from ..files import written_whole

API = "/v1"  # where the server's REST API lives
MALFORMED_URL = (
    "malformed URL: percent-encode special characters in the password (@ as %40, / as %2F, : as %3A, ? as %3F,"
    " # as %23, % as %25); the URL is not shown, it may hold a password"
)


def _checked_url(url: str) -> httpx.URL:
    """`url` as httpx reads it. A URL whose user part httpx would misread is refused (InvalidInputError, naming
    none of it): an unencoded `/`, `?` or `#` in the password makes part of it the port, path or query, and an `@`
    after the host makes part of the password a path that every message would then show."""
    rest = url.partition("://")[2]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    if "@" in rest[end:]:
        raise InvalidInputError(MALFORMED_URL)
    try:
        return httpx.URL(url)
    except httpx.InvalidURL:
        raise InvalidInputError(MALFORMED_URL) from None  # httpx's message may quote the URL


def redacted_url(url: str) -> str:
    """The URL without its password, for messages: `http://user:***@host/v1` (an http(s) URL's user part, up to
    the last `@` of its authority); a URL that `split_credentials` refuses shows as its scheme only. The http(s)
    twin of `stores.postgres_connection.redacted`."""
    scheme, separator, rest = url.partition("://")
    if not separator or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):  # "alice:secret@host" has no scheme
        return "(a URL without scheme://, not shown)"
    try:
        _checked_url(url)
    except InvalidInputError:
        return f"{scheme}://(a malformed URL, not shown)"
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        user_part, _, host = authority.rpartition("@")
        user, colon, _ = user_part.partition(":")
        authority = f"{user}{':***' if colon else ''}@{host}"
    return f"{scheme}{separator}{authority}{tail}"


def split_credentials(url: str) -> tuple[str, httpx.BasicAuth | None]:
    """The URL without its user part, and that user and password as Basic auth (None if it has none): an httpx
    client built from these sends what it would have sent for the whole URL, but its URL, in its log lines, its
    errors and its `base_url`, holds no password. Raises `InvalidInputError` for a URL httpx would misread."""
    parsed = _checked_url(url)
    if not parsed.userinfo:
        return url, None
    return str(parsed.copy_with(userinfo=b"")), httpx.BasicAuth(parsed.username, parsed.password)


class RemoteError(AgentMemError):
    """An error the server reported; `name` is the server-side error class, `status` the HTTP status."""

    def __init__(self, name: str, message: str, status: int) -> None:
        super().__init__(message)
        self.name, self.status = name, status


class RemoteMemory:
    """A client for one agentmem server (`base_url` like http://127.0.0.1:8765; an OpenAI-style .../v1 too).
    A user and password in the URL are sent as Basic auth (for a proxy in front of the server) and never shown:
    messages name the server as `shown`, with the password as ***. The API key then goes as `X-API-Key`, since
    Basic auth takes the Authorization header its Bearer form would use."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 600.0) -> None:
        api = base_url.rstrip("/").removesuffix(API) + API
        self.shown = redacted_url(api)
        plain, credentials = split_credentials(api)
        headers = {} if not api_key else {"X-API-Key": api_key} if credentials else {"Authorization": f"Bearer {api_key}"}
        self.http = httpx.Client(base_url=plain, headers=headers, auth=credentials, timeout=timeout)

    def __enter__(self) -> RemoteMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        if "json" in kwargs:   # refused here as `Memory` refuses it, not as httpx's encoder's ValueError
            _json_compliant(kwargs["json"], "the request")
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise StoreUnavailableError(f"cannot reach the agentmem server at {self.shown}: {exc}") from None
        if response.is_error:
            raise self._refusal(response)
        return response.json()

    def _refusal(self, response: httpx.Response) -> AgentMemError:
        """The error a refusal reports; a route the server does not know means it is no agentmem server."""
        try:
            body = response.json()
            name, message = body["error"], body["message"]
        except (ValueError, KeyError, TypeError):
            name, message = f"HTTP{response.status_code}", response.text[:500]
        if name in ("NotFound", "HTTP404"):  # not NoteNotFoundError: the route itself is missing
            return StoreUnavailableError(f"no agentmem API at {self.shown} "
                                         f"(give the server's address, e.g. http://127.0.0.1:8765): {message}")
        return RemoteError(name, message, response.status_code)

    # ---- the verbs, as `Memory` names them --------------------------------------------------------

    def remember(self, text: str, *, tags: list[str] = (), **scope: Any) -> dict[str, Any]:
        return self.call("POST", "/notes", json=_body(text=text, tags=list(tags), **scope))

    def recall(self, query: str, *, k: int = 10, include_archived: bool = False, **scope: Any) -> list[dict[str, Any]]:
        return self.call("POST", "/recall", json=_body(query=query, k=k, include_archived=include_archived, **scope))

    def reinforce(self, note_ids: list[str], *, at: datetime | None = None, strict: bool = True) -> list[dict[str, Any]]:
        # strict is sent only when false: a server of an earlier release refuses a field it does not know
        return self.call("POST", "/reinforce", json=_body(note_ids=list(note_ids), at=at, strict=None if strict else False))

    def notes(self, **query: Any) -> list[dict[str, Any]]:
        return self.call("GET", "/notes", params=_body(**query))

    def get(self, note_id: str) -> dict[str, Any]:
        return self.call("GET", f"/notes/{_id(note_id)}")

    def update(self, note_id: str, *, text: str | None = None, tags: list[str] | None = None) -> dict[str, Any]:
        return self.call("PATCH", f"/notes/{_id(note_id)}", json=_body(text=text, tags=tags))

    def history(self, note_id: str) -> list[tuple[str, str, dict[str, Any]]]:
        return [(e["at"], e["change"], e["note"]) for e in self.call("GET", f"/notes/{_id(note_id)}/history")]

    def forget(self, note_id: str) -> None:
        self.call("DELETE", f"/notes/{_id(note_id)}")

    def neighbors(self, note_id: str) -> list[dict[str, Any]]:
        return self.call("GET", f"/notes/{_id(note_id)}/neighbors")

    def link(self, a: str, b: str, *, weight: float = 1.0) -> None:
        self.call("POST", f"/notes/{_id(a)}/links", json={"note_id": b, "weight": weight})

    def decay(self, at: datetime | None = None) -> dict[str, Any]:
        return self.call("POST", "/decay", json=_body(at=at))

    def restore(self, note_id: str, at: datetime | None = None) -> dict[str, Any]:
        return self.call("POST", f"/notes/{_id(note_id)}/restore", json=_body(at=at))

    def stats(self) -> dict[str, Any]:
        return self.call("GET", "/stats")

    def export(self, path: str | Path) -> int:
        """The server's notes (the key's user's, if bound) as JSON lines in `path`, which appears whole or not
        at all: a refusal or a dropped connection leaves an earlier file there as it was."""
        count = 0
        try:
            with self.http.stream("GET", "/export") as response:
                if response.is_error:
                    response.read()
                    raise self._refusal(response)
                with written_whole(Path(path)) as out:
                    for text in response.iter_text():  # as sent: a note's text may hold line breaks other than "\n"
                        out.write(text)
                        count += text.count("\n")
        except httpx.HTTPError as exc:
            raise StoreUnavailableError(f"cannot reach the agentmem server at {self.shown}: {exc}") from None
        except OSError as exc:
            raise StoreUnavailableError(f"cannot write {path}: {exc}") from exc
        return count

    def import_(self, path: str | Path) -> dict[str, Any]:
        source = Path(path)
        if not source.is_file():
            raise InvalidInputError(f"no such file: {source}")
        return self.call("POST", "/import", content=source.read_bytes(), headers={"content-type": "application/x-ndjson"})

    def rebuild_index(self) -> int:
        return self.call("POST", "/repair")["reindexed"]

    def backup(self, target: str | Path) -> str:
        """A backup folder on the server's disk."""
        return self.call("POST", "/backup", json={"target": str(target)})["backup"]

    def plan(self, policy: dict[str, Any] | None = None, *, at: datetime | None = None) -> list[dict[str, Any]]:
        return self.call("POST", "/plan", json=_body(policy=policy, at=at))

    def consolidate(self, policy: dict[str, Any] | None = None, *, dry_run: bool = False, at: datetime | None = None,
                    progress: bool = False, poll_seconds: float = 1.0) -> dict[str, Any]:
        """Start a job on the server and wait for its report (progress on stderr)."""
        job = self.call("POST", "/consolidate", json=_body(policy=policy, dry_run=dry_run, at=at))
        while job["status"] in ("queued", "running"):
            if progress:
                p = job["progress"]
                print(f"\rconsolidating: {p['stage']} {p['done']}/{p['total'] or '?'}", end="", file=sys.stderr)
            time.sleep(poll_seconds)
            job = self.call("GET", f"/jobs/{job['id']}")
        if progress:
            print(file=sys.stderr)
        if job["status"] == "failed":
            raise RemoteError(job["error"]["error"], job["error"]["message"], 200)
        return job["report"]

    def ledger(self, note_id: str | None = None) -> list[dict[str, Any]]:
        return self.call("GET", "/ledger", params=_body(note_id=note_id))

    def answer(self, question: str, *, k: int = 5, retrieval: bool = True, **scope: Any) -> dict[str, Any]:
        return self.call("POST", "/answer", json=_body(question=question, k=k, retrieval=retrieval, **scope))


def _body(**fields: Any) -> dict[str, Any]:
    """The fields that were given, times as ISO strings."""
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in fields.items() if v is not None}


def _json_compliant(value: Any, where: str) -> None:
    """Refuse what JSON cannot carry (NaN, infinities, objects JSON does not know) with InvalidInputError,
    naming the field: `link --weight nan` or a policy's `1e400` is bad input, as it is on a local store."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInputError(f"{where} must be a finite number, got {value!r}")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInputError(f"{where} has a key that is not a string: {key!r}")
            _json_compliant(item, key if where == "the request" else f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _json_compliant(item, f"{where}[{i}]")
    elif value is not None and not isinstance(value, (str, int, float)):
        raise InvalidInputError(f"{where} is not JSON: a {type(value).__name__}")


def _id(note_id: str) -> str:
    """A note id as one path segment (so an id can never reach another route)."""
    return quote(note_id, safe="")

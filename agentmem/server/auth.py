"""Who may call the server: web pages of other sites may not, and with API keys, only key holders may.

A key is given as `KEY` (every user) or `KEY:USER` (bound to one user_id). Clients send it as
`Authorization: Bearer KEY` (what OpenAI and MCP clients send) or `X-API-Key: KEY`.
"""
from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import validation
from ..errors import InvalidInputError
from .errors import ForeignHostError, ForeignOriginError, UnauthorizedError, typed_error_response

STATE_KEY = "agentmem_caller"


class Caller(BaseModel):
    """Who is calling: `user_id` is the one user a bound key may reach (None: every user)."""

    user_id: str | None = None


class ApiKeys:
    """The accepted keys; with none configured the server is open (bind it to loopback)."""

    def __init__(self, keys: Mapping[str, str | None] | None = None) -> None:
        self._keys = dict(keys or {})

    @classmethod
    def parse(cls, specs: Iterable[str] = (), keys_file: Path | None = None) -> ApiKeys:
        """Keys from `KEY` / `KEY:USER` specs and from a file with one spec a line (# comments). A bad spec is
        named by where it is ("keys.txt line 2", or its place among `specs`), never by the key itself."""
        lines = [(f"--api-key #{number}", spec) for number, spec in enumerate(specs, 1)]
        if keys_file is not None:
            try:
                text = keys_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise InvalidInputError(f"cannot read the keys file {keys_file}: {exc}") from None
            except UnicodeDecodeError as exc:
                raise InvalidInputError(f"the keys file {keys_file} is not UTF-8 text: {exc}") from None
            # numbered as editors number lines: at "\n" ("\r\n" too), not at the other breaks `splitlines` knows
            lines += [(f"{keys_file} line {number}", line) for number, line in enumerate(text.split("\n"), 1)]
        keys: dict[str, str | None] = {}
        listed: dict[str, str] = {}  # where each key was listed
        for where, line in lines:
            spec = line.strip()
            if not spec or spec.startswith("#"):
                continue
            key, bound, user = spec.partition(":")
            if len(key) < 8 or not all("!" <= c <= "~" for c in key):  # what every client can send in a header
                raise InvalidInputError(f"{where}: an API key needs at least 8 characters, each a visible ASCII"
                                        " character (no spaces, accents or other letters beyond ASCII)")
            if bound and not user.strip():  # a typo must not turn a user's key into one for every user
                raise InvalidInputError(f"{where}: the key spec {key[:4]}...: names no user after ':'")
            if key in keys:  # else the last listing would decide silently what the key reaches
                raise InvalidInputError(f"{where}: the key {key[:4]}... is listed twice (first at {listed[key]});"
                                        " list each key once")
            try:
                keys[key] = validation.scope("user_id", user.strip()) if bound else None
            except InvalidInputError as exc:
                raise InvalidInputError(f"{where}: {exc}") from None
            listed[key] = where
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @property
    def binds_users(self) -> bool:
        """Whether some key reaches one user's notes only."""
        return any(user is not None for user in self._keys.values())

    def caller(self, headers: Mapping[str, str]) -> Caller:
        """The caller a request's headers identify; raises `UnauthorizedError` when keys are on and it has none."""
        if not self.enabled:
            return Caller()
        offered = headers.get("x-api-key") or ""
        authorization = headers.get("authorization") or ""
        if not offered and authorization.lower().startswith("bearer "):
            offered = authorization[7:].strip()
        match = None
        for key, user in self._keys.items():  # compare with every key, in constant time each
            if hmac.compare_digest(key.encode(), offered.encode()):
                match = Caller(user_id=user)
        if match is None:
            raise UnauthorizedError("a valid API key is required (Authorization: Bearer KEY, or X-API-Key: KEY)")
        return match


class ApiKeyMiddleware:
    """Refuses every HTTP request without a valid key (401) and leaves the caller in `request.state`;
    `open_paths` answer without one (a load balancer's probe holds no key)."""

    def __init__(self, app: ASGIApp, keys: ApiKeys, open_paths: Iterable[str] = ()) -> None:
        self.app, self.keys, self.open_paths = app, keys, frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        try:
            caller = self.keys.caller(Headers(scope=scope))
        except UnauthorizedError as exc:
            await typed_error_response(scope["path"], exc, {"www-authenticate": "Bearer"})(scope, receive, send)
            return
        scope.setdefault("state", {})[STATE_KEY] = caller
        await self.app(scope, receive, send)


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def trusted_hosts(bind: str, allowed: Iterable[str] = ()) -> frozenset[str] | None:
    """The host names a request's Host header may carry (with any port), for a server bound to `bind`.

    On loopback: the loopback names, the bound address and `allowed`, so a web page whose own name
    rebinds to 127.0.0.1 is refused. Bound elsewhere, the names clients use are the operator's to say:
    the loopback names, the bound address and `allowed`, or any name (None) when `allowed` is empty.
    """
    names = set()
    for name in allowed:
        if not (host := _host_name(name.strip())):
            raise InvalidInputError(f"not a host name: {name!r}")
        names.add(host)
    if not names and not _is_loopback(bind):
        return None
    bound = _host_name(bind if ":" not in bind else f"[{bind.strip('[]')}]")  # "127.0.0.2", "::1" as "[::1]"
    every_interface = bound in ("0.0.0.0", "::")  # not a name a client can use
    return LOOPBACK_NAMES | names | ({bound} if bound and not every_interface else set())


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return address.lower() == "localhost"


class HostGuardMiddleware:
    """Refuses what a web page may make a browser send: a Host the server does not answer to (DNS
    rebinding: 421), and a request from a page of another origin (cross-site request forgery: 403).

    Clients that are not browsers send no Origin; a browser sends one with every POST, PATCH and DELETE.
    A cross-origin GET is not refused: without CORS headers the page cannot read the answer.
    """

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None) -> None:
        """`hosts`: the names the Host header may carry (see `trusted_hosts`); None: any name."""
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host, origin = headers.get("host", ""), headers.get("origin")
        error: ForeignHostError | ForeignOriginError | None = None
        if self.hosts is not None and _host_name(host) not in self.hosts:
            error = ForeignHostError(f"this server does not answer to the host {host!r} "
                                     "(agentmem serve --allowed-host NAME adds a name)")
        elif origin is not None and _origin_host(origin) != host.lower():
            error = ForeignOriginError(f"a web page of another origin ({origin!r}) may not call this server")
        if error is None:
            await self.app(scope, receive, send)
        else:
            await typed_error_response(scope["path"], error)(scope, receive, send)


def _origin_host(origin: str) -> str | None:
    """The host and port an Origin header names, lower-cased; None if it is malformed (then it is foreign)."""
    try:
        return urlsplit(origin).netloc.lower()
    except ValueError:
        return None


def _host_name(host: str) -> str | None:
    """The name in a Host header, without its port: `[::1]:8765` is `::1`; None if it is malformed."""
    try:
        return urlsplit(f"//{host}").hostname
    except ValueError:
        return None

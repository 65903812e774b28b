"""API keys: who may call the server, and which user's notes a key may reach.

A key is given as `KEY` (every user) or `KEY:USER` (bound to one user_id). Clients send it as
`Authorization: Bearer KEY` (what OpenAI and MCP clients send) or `X-API-Key: KEY`.
"""
from __future__ import annotations

import hmac
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import validation
from ..errors import InvalidInputError
from .errors import UnauthorizedError, error_body

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
        """Keys from `KEY` / `KEY:USER` specs and from a file with one spec a line (# comments)."""
        lines = list(specs)
        if keys_file is not None:
            try:
                lines += keys_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise InvalidInputError(f"cannot read the keys file {keys_file}: {exc}") from None
        keys: dict[str, str | None] = {}
        for line in lines:
            spec = line.strip()
            if not spec or spec.startswith("#"):
                continue
            key, bound, user = spec.partition(":")
            if len(key) < 8 or not key.isprintable() or " " in key:
                raise InvalidInputError("an API key needs at least 8 printable characters and no spaces")
            if bound and not user.strip():  # a typo must not turn a user's key into one for every user
                raise InvalidInputError(f"the key spec {key[:4]}...: names no user after ':'")
            keys[key] = validation.scope("user_id", user.strip()) if bound else None
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

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
    """Refuses every HTTP request without a valid key (401) and leaves the caller in `request.state`."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app, self.keys = app, keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            caller = self.keys.caller(headers)
        except UnauthorizedError as exc:
            body = json.dumps(error_body(exc)).encode()
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b"Bearer"),
            ]})
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})[STATE_KEY] = caller
        await self.app(scope, receive, send)

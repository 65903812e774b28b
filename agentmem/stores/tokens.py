"""Keyed hashes that name notes and scopes in the vector index without revealing them."""
from __future__ import annotations

import hashlib
import hmac


def index_token(key: bytes, kind: str, value: str) -> str:
    return hmac.new(key, f"{kind}\x1f{value}".encode(), hashlib.sha256).hexdigest()[:32]

"""A chat message's words as notes can hold them, for the adapters that remember user turns."""
from __future__ import annotations


def note_texts(text: str, limit: int) -> list[str]:
    """The text without NUL and lone surrogates (replaced), in stripped, non-blank parts of at most `limit`
    characters, cut at whitespace where it can: a turn longer than a note holds is several notes, never
    refused (a framework that stores a chat's turns after the reply only logs a refusal, and loses the turn)."""
    text = text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8").strip()
    parts: list[str] = []
    while text:
        if len(text) <= limit:
            parts.append(text)
            break
        cut = max(text.rfind(" ", limit // 2, limit + 1), text.rfind("\n", limit // 2, limit + 1))
        cut = cut if cut > 0 else limit
        parts.append(text[:cut].strip())
        text = text[cut:].strip()
    return parts

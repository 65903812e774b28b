"""`AgentMemBlock`: agentmem as a LlamaIndex memory block (`pip install agentmem[llamaindex]`).

`llama_index.core.memory.Memory.from_defaults(memory_blocks=[AgentMemBlock(memory=mem, user_id="maya")])`
gives a LlamaIndex agent agentmem's long-term memory: before each reply the block recalls notes for
the latest messages (across all of the user's sessions) and, as `MemoryChat` does, injects only those
at least `answer_min_similarity` similar to them, which alone count as recalled. The messages
LlamaIndex flushes out of its short-term memory reach the block, which remembers the user's turns as
notes, as `MemoryChat` does (the assistant's words are not facts the user gave; they stay in
LlamaIndex's chat store).

Nothing a chat hands over makes the block raise for its size: the recall query is the tail of the
latest messages that fits the memory's text limit (the latest words matter most), and a user turn
longer than the limit is remembered as several notes, split at whitespace.

Nor does its session id: LlamaIndex takes any string, agentmem refuses a blank, over-long or
control-character session id, and a refusal would lose the turns, which LlamaIndex has already moved
out of its short-term memory. Such an id is mapped to a stable one agentmem takes (`session_for`),
and the original is kept in the notes' metadata (`ORIGINAL_SESSION`) when metadata can hold it.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.memory import BaseMemoryBlock
from pydantic import Field, ValidationInfo, field_validator

from .. import validation
from ..consolidation.answering import fitting, notes_block
from ..errors import AgentMemError, InvalidInputError
from ..memory import Memory
from ..notes import Hit
from .chat import MEMORY_HEADER
from .turns import note_texts

log = logging.getLogger(__name__)

ORIGINAL_SESSION = "llamaindex.session_id"   # a LlamaIndex session id agentmem does not take as it is


def session_for(session_id: str | None) -> str | None:
    """The agentmem session of a LlamaIndex session id: the id itself if agentmem takes it, else
    "llamaindex-" and the id's SHA-256, so `Memory.notes(session_id=session_for(id))` finds it."""
    if session_id is None:
        return None
    try:
        return validation.scope("session_id", session_id)
    except InvalidInputError:
        return "llamaindex-" + hashlib.sha256(str(session_id).encode("utf-8", "surrogatepass")).hexdigest()


def _session_fields(session_id: str | None) -> dict[str, Any]:
    """A turn's session, and the original id in metadata when it was mapped and metadata can hold it."""
    session = session_for(session_id)
    if session == session_id:
        return {"session_id": session}
    try:
        return {"session_id": session, "metadata": validation.metadata({ORIGINAL_SESSION: session_id})}
    except InvalidInputError:   # NUL, a lone surrogate or over 64 KB: only its hash names it
        return {"session_id": session}


class AgentMemBlock(BaseMemoryBlock[str]):
    """Recall for the latest messages; remember the user's turns flushed from short-term memory."""

    name: str = Field("agentmem", description="The name of the memory block.")
    memory: Memory
    user_id: str | None = None
    agent_id: str | None = None
    k: int = Field(5, ge=1, le=validation.MAX_K, description="notes recalled per reply")
    query_messages: int = Field(1, ge=1, description="how many of the latest messages the recall query is made of")

    @field_validator("user_id", "agent_id")
    @classmethod
    def _scope_is_valid(cls, value: str | None, info: ValidationInfo) -> str | None:
        return validation.scope(info.field_name, value)

    async def _aget(self, messages: list[ChatMessage] | None = None, **block_kwargs: Any) -> str:
        """The recalled notes as one text, most relevant first ('' when nothing is recalled)."""
        texts = [m.content for m in messages or [] if m.content and m.content.strip()]
        parts = note_texts("\n".join(texts[-self.query_messages:]), self.memory.config.max_text_chars)
        if not parts:
            return ""
        query = parts[-1]  # the latest words, when there are more than a query holds
        hits = await asyncio.to_thread(self._related, query)
        if not hits:
            return ""
        return MEMORY_HEADER + "\n" + notes_block(hits)

    def _related(self, query: str) -> list[Hit]:
        """The notes `MemoryChat` would put in its prompt: the top k at least `answer_min_similarity`
        similar to the query, within the notes' budget; only they count as recalled (LlamaIndex calls
        `get` on every agent step: an unrelated note must not gain a recall per step)."""
        when = validation.time(None)
        hits = self.memory.recall(query, k=self.k, user_id=self.user_id, agent_id=self.agent_id, at=when,
                                  reinforce=False)
        hits = fitting([hit for hit in hits if hit.why.similarity >= self.memory.config.answer_min_similarity])
        try:  # as a recall counts what it found: one forgotten meanwhile, or made after `when`, is not counted
            self.memory.reinforce([hit.note.id for hit in hits], at=when, strict=False)
        except AgentMemError:  # the store unreachable: the notes found still go in the prompt, uncounted
            log.warning("the notes an AgentMemBlock recalled were not counted as recalled", exc_info=True)
        return hits

    async def _aput(self, messages: list[ChatMessage]) -> None:
        """Remember the user's turns, all in one transaction (all or none), in LlamaIndex's session."""
        limit = self.memory.config.max_text_chars
        turns = [
            {"text": part, **_session_fields(m.additional_kwargs.get("session_id"))}
            for m in messages
            if m.role == MessageRole.USER and m.content
            for part in note_texts(m.content, limit)
        ]
        if turns:
            await asyncio.to_thread(self.memory.remember_many, turns, user_id=self.user_id, agent_id=self.agent_id)


"""`AgentMemBlock`: agentmem as a LlamaIndex memory block (`pip install agentmem[llamaindex]`).

`llama_index.core.memory.Memory.from_defaults(memory_blocks=[AgentMemBlock(memory=mem, user_id="maya")])`
gives a LlamaIndex agent agentmem's long-term memory: before each reply the block recalls notes for
the latest messages (across all of the user's sessions), and the messages LlamaIndex flushes out of
its short-term memory reach the block, which remembers the user's turns as notes, as `MemoryChat`
does (the assistant's words are not facts the user gave; they stay in LlamaIndex's chat store).

Nothing a chat hands over makes the block raise for its size: the recall query is the tail of the
latest messages that fits the memory's text limit (the latest words matter most), and a user turn
longer than the limit is remembered as several notes, split at whitespace.
"""
from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.memory import BaseMemoryBlock
from pydantic import Field, ValidationInfo, field_validator

from .. import validation
from ..memory import Memory
from .chat import MEMORY_HEADER
from .turns import note_texts


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
        hits = await asyncio.to_thread(
            self.memory.recall, query, k=self.k, user_id=self.user_id, agent_id=self.agent_id
        )
        if not hits:
            return ""
        return MEMORY_HEADER + "\n" + "\n".join(f"- {hit.note.text}" for hit in hits)

    async def _aput(self, messages: list[ChatMessage]) -> None:
        """Remember the user's turns, all in one transaction (all or none), in LlamaIndex's session."""
        limit = self.memory.config.max_text_chars
        turns = [
            {"text": part, "session_id": m.additional_kwargs.get("session_id")}
            for m in messages
            if m.role == MessageRole.USER and m.content
            for part in note_texts(m.content, limit)
        ]
        if turns:
            await asyncio.to_thread(self.memory.remember_many, turns, user_id=self.user_id, agent_id=self.agent_id)


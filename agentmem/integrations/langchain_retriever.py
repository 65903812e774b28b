"""`AgentMemRetriever`: agentmem's recall as a LangChain retriever (`pip install agentmem[langchain]`).

`AgentMemRetriever(memory=mem, user_id="maya", k=5)` returns a `Document` per recalled note. Scope, `k`
and `filters` are set at construction and can be overridden per call
(`retriever.invoke("where does she live?", k=3)`). Each document carries what agentmem knows about the
hit in its metadata (note id, score, `why`, timestamps), so a chain can cite or explain what it used.
Recalling is rehearsal here too: each returned note counts as recalled unless `reinforce=False`.
"""
from __future__ import annotations

from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from .. import validation
from ..errors import InvalidInputError
from ..memory import Memory
from ..notes import Hit

OVERRIDES = ("k", "user_id", "agent_id", "session_id", "filters")  # what a call may set for itself


def hit_document(hit: Hit) -> Document:
    """One recalled note as a LangChain document: its text, and everything about the hit as metadata."""
    note = hit.note
    return Document(
        id=note.id,
        page_content=note.text,
        metadata={
            "id": note.id,
            "score": hit.score,
            "why": hit.why.model_dump(),
            "created_at": note.created_at.isoformat(),
            "updated_at": note.updated_at.isoformat(),
            "last_recalled": note.last_recalled.isoformat(),
            "recall_count": note.recall_count,
            "user_id": note.user_id,
            "agent_id": note.agent_id,
            "session_id": note.session_id,
            "tags": list(note.tags),
            "metadata": dict(note.metadata),
        },
    )


class AgentMemRetriever(BaseRetriever):
    """Recall from a `Memory` as LangChain documents, best first.

    Per call, `k`, `user_id`, `agent_id`, `session_id` and `filters` replace the retriever's own
    (one left as None keeps the retriever's). Bad values, and other names, raise agentmem's
    `InvalidInputError`; bad fields at construction, pydantic's `ValidationError`.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    memory: Memory
    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None
    k: int = Field(5, ge=1, le=validation.MAX_K, strict=True)
    filters: dict[str, str | int | float | bool] | None = None
    include_archived: bool = False
    reinforce: bool = True

    @field_validator("user_id", "agent_id", "session_id")
    @classmethod
    def _scope_is_valid(cls, value: str | None, info: ValidationInfo) -> str | None:
        return validation.scope(info.field_name, value)

    @field_validator("filters")
    @classmethod
    def _filters_are_valid(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else validation.filters(value)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **overrides: Any
    ) -> list[Document]:
        unknown = sorted(set(overrides) - set(OVERRIDES))
        if unknown:
            raise InvalidInputError(f"unknown argument {unknown[0]!r}; a call may set {', '.join(OVERRIDES)}")
        chosen = {name: getattr(self, name) if overrides.get(name) is None else overrides[name] for name in OVERRIDES}
        hits = self.memory.recall(query, **chosen, include_archived=self.include_archived, reinforce=self.reinforce)
        return [hit_document(hit) for hit in hits]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **overrides: Any
    ) -> list[Document]:
        """The same recall in a worker thread (embedding and SQLite are blocking); overrides pass through."""
        return await run_in_executor(
            None, self._get_relevant_documents, query, run_manager=run_manager.get_sync(), **overrides
        )

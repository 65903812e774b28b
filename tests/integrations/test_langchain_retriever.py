"""AgentMemRetriever: LangChain's own standard retriever suite, plus what agentmem adds to each document."""
from __future__ import annotations

from datetime import datetime

import pytest
from pydantic import ValidationError
from langchain_core.documents import Document
from langchain_tests.integration_tests import RetrieversIntegrationTests

from agentmem import InvalidInputError, Memory
from agentmem.integrations.langchain_retriever import AgentMemRetriever
from tests.conftest import T0

FACTS = [
    "Maya moved to Lisbon in 2024.",
    "Maya works as a marine biologist.",
    "Maya's sister Ana lives in Porto.",
    "Maya is allergic to peanuts.",
    "Maya plays the cello on weekends.",
]


@pytest.fixture(scope="class")
def maya_memory(tmp_path_factory, embedder):
    with Memory(tmp_path_factory.mktemp("retriever") / "mem", embedder=embedder) as mem:
        mem.remember_many(FACTS, user_id="maya", at=T0)
        mem.remember("Ben lives in Oslo.", user_id="ben", at=T0)
        yield mem


@pytest.mark.anyio  # the suite's async test runs on anyio's plugin (pytest-asyncio is in strict mode here)
class TestStandardSuite(RetrieversIntegrationTests):
    """LangChain's suite, unchanged: k at construction and per call, invoke and ainvoke return documents."""

    @pytest.fixture(autouse=True)
    def _memory(self, maya_memory):
        self.memory = maya_memory

    @property
    def retriever_constructor(self) -> type[AgentMemRetriever]:
        return AgentMemRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"memory": self.memory, "user_id": "maya"}

    @property
    def retriever_query_example(self) -> str:
        return "Where does Maya live?"


def test_documents_carry_the_note_id_score_why_and_timestamps(maya_memory):
    [doc] = AgentMemRetriever(memory=maya_memory, user_id="maya", k=1).invoke("Which city did Maya move to?")
    note = maya_memory.get(doc.id)
    assert doc.page_content == "Maya moved to Lisbon in 2024." == note.text
    assert doc.metadata["id"] == note.id and doc.metadata["score"] > 0
    assert set(doc.metadata["why"]) >= {"similarity", "lexical", "retention"}
    assert datetime.fromisoformat(doc.metadata["created_at"]) == T0 and doc.metadata["user_id"] == "maya"
    assert note.recall_count >= 1   # recalling through LangChain is rehearsal too


def test_scope_and_filters_set_at_construction_can_be_overridden_per_call(maya_memory):
    retriever = AgentMemRetriever(memory=maya_memory, user_id="maya", k=5)
    assert all(d.metadata["user_id"] == "maya" for d in retriever.invoke("Who lives in Oslo?"))
    [ben] = retriever.invoke("Who lives in Oslo?", user_id="ben")
    assert ben.page_content == "Ben lives in Oslo."
    assert retriever.invoke("Who lives where?", filters={"missing": "x"}) == []


@pytest.mark.anyio
async def test_ainvoke_takes_the_same_per_call_overrides(maya_memory):
    retriever = AgentMemRetriever(memory=maya_memory, user_id="maya", k=5)
    docs = await retriever.ainvoke("What does Maya do for work?", k=2)
    assert len(docs) == 2 and all(isinstance(d, Document) for d in docs)
    assert docs[0].page_content == "Maya works as a marine biologist."


def test_bad_input_raises_typed_errors_and_changes_nothing(maya_memory):
    before = maya_memory.stats()
    retriever = AgentMemRetriever(memory=maya_memory, user_id="maya")
    with pytest.raises(InvalidInputError):
        retriever.invoke("", k=2)
    with pytest.raises(InvalidInputError):
        retriever.invoke("Where does Maya live?", k=0)
    with pytest.raises(InvalidInputError):
        retriever.invoke("Where does Maya live?", filters={"nested": {"no": 1}})
    with pytest.raises(ValueError):   # pydantic's contract for the constructor
        AgentMemRetriever(memory=maya_memory, k=0)
    with pytest.raises(ValueError):
        AgentMemRetriever(memory="not a memory")
    with pytest.raises(ValueError):
        AgentMemRetriever(memory=maya_memory, user_id="")
    for field in ({"filters": {"v": float("nan")}}, {"filters": {"a\x00": 1}}, {"filters": {"big": 2**70}},
                  {"k": True}, {"k": "3"}):   # refused when made, not at the first invoke
        with pytest.raises(ValidationError):
            AgentMemRetriever(memory=maya_memory, **field)
    with pytest.raises(InvalidInputError):   # an empty user is refused, not taken for the retriever's own
        retriever.invoke("Where does Maya live?", user_id="")
    with pytest.raises(InvalidInputError, match="unknown argument 'usr'"):   # a misspelt override
        retriever.invoke("Where does Maya live?", usr="ben")
    assert maya_memory.stats() == before

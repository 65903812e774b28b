"""AgentMemBlock inside LlamaIndex's own `Memory`: recalled text comes back, user turns become notes."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from llama_index.core.llms import ChatMessage
from llama_index.core.memory import Memory as LlamaMemory

from agentmem.integrations.chat import MEMORY_HEADER, MemoryChat
from agentmem.integrations.llamaindex_block import ORIGINAL_SESSION, AgentMemBlock, session_for
from tests.conftest import T0


def words(text: str) -> list[str]:
    """A whitespace tokenizer: LlamaIndex's default (tiktoken) would download its vocabulary."""
    return text.split()


def llama_memory(block: AgentMemBlock, session_id: str, token_limit: int = 30_000) -> LlamaMemory:
    return LlamaMemory.from_defaults(
        session_id=session_id, memory_blocks=[block], token_limit=token_limit, tokenizer_fn=words,
    )


def test_get_returns_recalled_notes_in_the_system_message(memory):
    memory.remember("Maya is allergic to peanuts.", user_id="maya", at=T0)
    memory.remember("Ben is allergic to cats.", user_id="ben", at=T0)
    chat = llama_memory(AgentMemBlock(memory=memory, user_id="maya"), "s1")
    chat.put(ChatMessage(role="user", content="Can you suggest a snack for me?"))
    messages = chat.get(input="What am I allergic to?")
    assert messages[0].role == "system"
    system = messages[0].content
    assert MEMORY_HEADER in system and "- Maya is allergic to peanuts." in system and "Ben" not in system
    assert messages[-1].content == "Can you suggest a snack for me?"


def test_turns_flushed_from_short_term_memory_are_remembered_and_recalled_in_a_later_session(memory):
    block = AgentMemBlock(memory=memory, user_id="maya")
    first = llama_memory(block, "s1", token_limit=20)
    turns = [
        ("user", "My daughter Lea starts school in Lyon this September."),
        ("assistant", "Congratulations! Lyon has lovely schools."),
        ("user", "I also adopted a greyhound called Pixel."),
        ("assistant", "Pixel is a great name for a greyhound."),
        ("user", "Thanks, that is all for today."),
        ("assistant", "Goodbye!"),
    ]
    for role, text in turns:
        first.put(ChatMessage(role=role, content=text))
    remembered = memory.notes(user_id="maya")
    assert [n.text for n in remembered][:2] == [turns[0][1], turns[2][1]]   # flushed out of short-term memory
    assert {n.text for n in remembered} <= {text for role, text in turns if role == "user"}   # never the assistant's
    assert all(n.session_id == "s1" for n in remembered)

    later = llama_memory(block, "s2")
    [system, *_] = later.get(input="What is my dog called?")
    assert "- I also adopted a greyhound called Pixel." in system.content


def test_get_injects_and_counts_only_the_related_notes_memorychat_would(memory):
    memory.remember("Maya is allergic to peanuts.", user_id="maya", at=T0)
    memory.remember("Maya's car is a blue Volvo estate.", user_id="maya", at=T0)
    memory.remember("The Q3 budget review moved to Thursday.", user_id="maya", at=T0)
    question = "Which foods is Maya allergic to?"
    floor = memory.config.answer_min_similarity
    similar = {h.note.text: h.why.similarity for h in memory.recall(question, k=3, user_id="maya", reinforce=False)}
    related = {text for text, similarity in similar.items() if similarity >= floor}
    # the premise: the allergy is related, the budget review is not (the model's similarity -0.04 < the floor)
    assert "Maya is allergic to peanuts." in related and "The Q3 budget review moved to Thursday." not in related
    chat = llama_memory(AgentMemBlock(memory=memory, user_id="maya", k=3), "s1")
    for _ in range(3):   # LlamaIndex calls get on every agent step
        [system, *_] = chat.get(input=question)
    lines = {line[2:] for line in system.content.splitlines() if line.startswith("- ")}
    assert lines == related
    counts = {n.text: n.recall_count for n in memory.notes(user_id="maya")}
    assert counts == {text: 3 if text in related else 0 for text in similar}   # the budget note: 0, not 3
    reply = MemoryChat(memory, chat=lambda messages: "ok", user_id="maya").reply(question)
    assert {h.note.text for h in reply.recalled} == lines   # the same selection as MemoryChat's


def test_a_note_dated_after_now_is_injected_but_not_counted_and_the_others_are(memory):
    """A note made by a host whose clock runs ahead is found; counting it now would be a recall before it was made,
    which reinforce refuses, and the refusal left every note of the step uncounted."""
    now = memory.remember("Maya is allergic to peanuts.", user_id="maya", at=T0)
    ahead = memory.remember("Maya is allergic to shellfish too.", user_id="maya",
                            at=datetime.now(timezone.utc) + timedelta(minutes=2))
    chat = llama_memory(AgentMemBlock(memory=memory, user_id="maya"), "s1")
    [system, *_] = chat.get(input="Which foods is Maya allergic to?")
    assert "- Maya is allergic to peanuts." in system.content and "- Maya is allergic to shellfish too." in system.content
    assert memory.get(now.id).recall_count == 1 and memory.get(ahead.id).recall_count == 0


def test_no_messages_or_no_hits_give_an_empty_block(memory):
    chat = llama_memory(AgentMemBlock(memory=memory, user_id="maya"), "s1")
    assert chat.get() == []
    assert chat.get(input="anything at all?") == []   # nothing recalled: no system message added


def test_bad_input_raises_and_writes_nothing(memory):
    with pytest.raises(ValueError):   # pydantic's contract for the block's fields
        AgentMemBlock(memory=memory, k=0)
    with pytest.raises(ValueError):
        AgentMemBlock(memory="not a memory")
    with pytest.raises(ValueError):
        AgentMemBlock(memory=memory, user_id="\x00")
    assert memory.stats().notes == 0


def test_an_over_long_turn_is_remembered_in_parts_and_an_over_long_query_still_recalls(memory):
    limit = memory.config.max_text_chars
    block = AgentMemBlock(memory=memory, user_id="maya", query_messages=2)
    chat = llama_memory(block, "s1", token_limit=20)
    long_turn = "My daughter Lea starts school in Lyon this September. " + " ".join(f"w{i}" for i in range(limit // 2))
    for role, text in [("user", long_turn), ("assistant", "Congratulations!"), ("user", "I adopted Pixel."),
                       ("assistant", "Nice."), ("user", "Bye\x00"), ("assistant", "Goodbye!")]:
        chat.put(ChatMessage(role=role, content=text))   # an error here would surface on a later, unrelated put
    parts = [n.text for n in memory.notes(user_id="maya") if n.text not in ("I adopted Pixel.", "Bye")]
    assert len(parts) > 1 and all(len(t) <= limit for t in parts) and " ".join(parts) == long_turn.strip()
    [system, *_] = chat.get(input="x " * limit + "Where does Lea go to school?")   # the query keeps the tail
    assert "Lea starts school in Lyon" in system.content


@pytest.mark.parametrize("session_id", ["x" * 300, "tab\tsession", "   ", "line\nbreak", "nul\x00"])
def test_a_session_id_agentmem_refuses_loses_no_flushed_turn(memory, session_id):
    """LlamaIndex takes any session id, and moves the flushed turns out of short-term memory first."""
    chat = llama_memory(AgentMemBlock(memory=memory, user_id="maya"), session_id, token_limit=20)
    turns = [("user", "I moved to Lisbon last spring."), ("assistant", "Lovely."),
             ("user", "My sister Ana lives in Porto."), ("assistant", "Nice."), ("user", "Bye."), ("assistant", "Bye!")]
    for role, text in turns:
        chat.put(ChatMessage(role=role, content=text))
    remembered = memory.notes(session_id=session_for(session_id))
    assert [n.text for n in remembered][:2] == ["I moved to Lisbon last spring.", "My sister Ana lives in Porto."]
    assert session_for(session_id) == session_for(session_id) != session_id
    kept = {n.metadata.get(ORIGINAL_SESSION) for n in remembered}
    assert kept == ({None} if "\x00" in session_id else {session_id})

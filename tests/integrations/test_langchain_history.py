"""AgentMemChatHistory behind LangChain's RunnableWithMessageHistory, with a real (local, no network) runnable."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage, message_to_dict
from langchain_core.runnables import RunnableLambda
from langchain_core.runnables.history import RunnableWithMessageHistory

from agentmem import InvalidInputError
from agentmem.integrations.langchain_history import CARRIER_TEXT, NO_TEXT, AgentMemChatHistory
from agentmem.integrations.langchain_retriever import AgentMemRetriever

# langchain-core 1.x deprecates RunnableWithMessageHistory (for LangGraph persistence) but still ships it,
# and BaseChatMessageHistory is what it and other chat-history users call.
pytestmark = pytest.mark.filterwarnings("ignore:RunnableWithMessageHistory is deprecated")


def chain_over(memory, replies: list[dict]):
    """A chain whose model is a function: it records what it saw and answers from recalled notes."""
    retriever = AgentMemRetriever(memory=memory, user_id="maya", k=1)

    def model(inputs: dict) -> AIMessage:
        replies.append(inputs)
        recalled = retriever.invoke(inputs["input"])
        return AIMessage(f"From memory: {recalled[0].page_content}" if recalled else "Noted.")

    return RunnableWithMessageHistory(
        RunnableLambda(model),
        lambda session_id: AgentMemChatHistory(memory=memory, session_id=session_id, user_id="maya"),
        input_messages_key="input",
        history_messages_key="history",
    )


def session(session_id: str) -> dict:
    return {"configurable": {"session_id": session_id}}


def test_a_session_is_kept_and_its_user_turns_are_recalled_in_another_session(memory):
    seen: list[dict] = []
    chain = chain_over(memory, seen)
    first = chain.invoke({"input": "I adopted a greyhound called Pixel."}, config=session("s1"))
    assert first.content in ("Noted.", "From memory: I adopted a greyhound called Pixel.")
    chain.invoke({"input": "Yes."}, config=session("s1"))
    chain.invoke({"input": "Yes."}, config=session("s1"))   # a repeated turn is a turn, not a duplicate
    assert [type(m) for m in seen[2]["history"]] == [HumanMessage, AIMessage] * 2

    history = AgentMemChatHistory(memory=memory, session_id="s1", user_id="maya")   # read back from the store
    assert [m.content for m in history.messages if isinstance(m, HumanMessage)] == [
        "I adopted a greyhound called Pixel.", "Yes.", "Yes."
    ]
    assert len(history.messages) == 6 and history.messages[1] == AIMessage(first.content)
    turns = memory.notes(user_id="maya", session_id="s1")
    assert [n.text for n in turns] == ["I adopted a greyhound called Pixel.", "Yes.", "Yes."]   # no assistant notes

    answer = chain.invoke({"input": "What is my dog called?"}, config=session("s2"))
    assert answer.content == "From memory: I adopted a greyhound called Pixel."
    assert seen[-1]["history"] == []   # a new session starts empty; long-term memory carried the fact


@pytest.mark.anyio
async def test_the_chain_works_asynchronously(memory):
    seen: list[dict] = []
    chain = chain_over(memory, seen)
    await chain.ainvoke({"input": "My sister Ana lives in Porto."}, config=session("s1"))
    await chain.ainvoke({"input": "Where does Ana live?"}, config=session("s1"))
    assert seen[-1]["history"][0] == HumanMessage("My sister Ana lives in Porto.")
    messages = await AgentMemChatHistory(memory=memory, session_id="s1", user_id="maya").aget_messages()
    assert len(messages) == 4 and messages[-1].content == "From memory: My sister Ana lives in Porto."


def test_messages_before_the_first_user_turn_and_between_turns_keep_their_order(memory):
    history = AgentMemChatHistory(memory=memory, session_id="s1", user_id="maya")
    greeting = [SystemMessage("Be brief."), AIMessage("Hi! How can I help?")]
    history.add_messages(greeting)
    assert history.messages == greeting
    assert [n.text for n in memory.notes()] == [CARRIER_TEXT]   # kept in the memory, not in this object
    history.add_messages(m for m in [HumanMessage("I start at the lab on Monday."), AIMessage("Good luck!")])
    history.add_message(AIMessage("Anything else?"))
    history.add_user_message("No, thanks.")
    expected = [*greeting, HumanMessage("I start at the lab on Monday."), AIMessage("Good luck!"),
                AIMessage("Anything else?"), HumanMessage("No, thanks.")]
    assert history.messages == expected
    assert AgentMemChatHistory(memory=memory, session_id="s1", user_id="maya").messages == expected
    assert AgentMemChatHistory(memory=memory, session_id="s2", user_id="maya").messages == []


def test_turns_faded_by_decay_stay_in_the_transcript(memory):
    history = AgentMemChatHistory(memory=memory, session_id="s1", user_id="maya")
    history.add_messages([HumanMessage("I moved to Lisbon."), AIMessage("Noted.")])
    assert memory.decay(at=datetime.now(timezone.utc) + timedelta(days=365)).archived
    assert history.messages == [HumanMessage("I moved to Lisbon."), AIMessage("Noted.")]


def test_clear_forgets_the_session_and_nothing_else(memory):
    memory.remember("Maya is allergic to peanuts.", user_id="maya")
    history = AgentMemChatHistory(memory=memory, session_id="s1", user_id="maya")
    history.add_messages([HumanMessage("I moved to Lisbon."), AIMessage("Noted.")])
    history.clear()
    assert history.messages == [] and [n.text for n in memory.notes(user_id="maya")] == ["Maya is allergic to peanuts."]


def test_histories_of_one_session_id_in_other_scopes_share_nothing(memory):
    """As InMemoryChatMessageHistory objects share no state: no user is not every user, nor a user every agent."""
    scopes = [{}, {"user_id": "maya"}, {"user_id": "ben"}, {"user_id": "maya", "agent_id": "planner"}]
    histories = [AgentMemChatHistory(memory=memory, session_id="default", **scope) for scope in scopes]
    for n, history in enumerate(histories):
        history.add_messages([HumanMessage(f"turn of history {n}"), AIMessage(f"reply {n}")])
    anonymous, maya, ben, planner = histories
    anonymous.add_messages([AIMessage("a later reply")])
    assert anonymous.messages == [HumanMessage("turn of history 0"), AIMessage("reply 0"), AIMessage("a later reply")]
    assert [h.messages for h in (maya, ben, planner)] == [
        [HumanMessage(f"turn of history {n}"), AIMessage(f"reply {n}")] for n in (1, 2, 3)
    ]
    anonymous.clear()
    maya.clear()
    assert [h.messages for h in histories] == [[], [], [HumanMessage("turn of history 2"), AIMessage("reply 2")],
                                               [HumanMessage("turn of history 3"), AIMessage("reply 3")]]


def test_bad_input_raises_typed_errors_and_writes_nothing(memory):
    history = AgentMemChatHistory(memory=memory, session_id="s1", user_id="maya")
    history.add_messages([HumanMessage("I moved to Lisbon."), AIMessage("Noted.")])
    before = history.messages
    with pytest.raises(InvalidInputError):
        history.add_messages([HumanMessage("ok"), "not a message"])
    with pytest.raises(InvalidInputError):
        history.add_messages(HumanMessage("one message, not a sequence"))
    assert history.messages == before and memory.stats().notes == 1
    with pytest.raises(InvalidInputError):
        AgentMemChatHistory(memory="not a memory", session_id="s1")
    with pytest.raises(InvalidInputError):
        AgentMemChatHistory(memory=memory, session_id="")


@pytest.mark.parametrize("message", [
    AIMessage("ok", additional_kwargs={"at": datetime(2024, 5, 1)}),
    AIMessage("ok", response_metadata={"raw": b"bytes"}),
    AIMessage("ok", additional_kwargs={"seen": {1, 2}}),
])
def test_a_message_with_a_field_json_cannot_hold_is_refused_typed_and_its_batch_not_written(memory, message):
    history = AgentMemChatHistory(memory=memory, session_id="s1", user_id="maya")
    history.add_messages([HumanMessage("I moved to Lisbon."), AIMessage("Noted.")])
    with pytest.raises(InvalidInputError, match="message 1 .AIMessage. cannot be kept: its fields must be JSON"):
        history.add_messages([HumanMessage("I adopted a cat."), message])
    assert history.messages == [HumanMessage("I moved to Lisbon."), AIMessage("Noted.")] and memory.stats().notes == 1


def test_a_long_reply_in_a_chain_is_kept_with_its_turn(memory):
    chain = RunnableWithMessageHistory(
        RunnableLambda(lambda messages: AIMessage("reply " + "z" * 70_000)),
        lambda session_id: AgentMemChatHistory(memory=memory, session_id=session_id, user_id="maya"),
    )
    chain.invoke([HumanMessage("hello there")], config=session("s1"))   # a failed write would only be logged
    messages = AgentMemChatHistory(memory=memory, session_id="s1", user_id="maya").messages
    assert messages == [HumanMessage("hello there"), AIMessage("reply " + "z" * 70_000)]
    assert [h.note.text for h in memory.recall("hello", user_id="maya")][:1] == ["hello there"]


def test_no_message_is_refused_for_its_size_or_lack_of_text(memory):
    limit = memory.config.max_text_chars
    long_turn = " ".join(f"word{i}" for i in range(limit // 3))
    turns = [
        [HumanMessage("look up the weather"), AIMessage("", tool_calls=[{"name": "w", "args": {}, "id": "1"}]),
         ToolMessage("x" * 70_000, tool_call_id="1"), AIMessage("sunny")],
        [HumanMessage(content=[{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]), AIMessage("nice")],
        [HumanMessage("   "), AIMessage("?")],
        [HumanMessage(long_turn), AIMessage("ok")],
        [HumanMessage("ünïcödé \u2603 \"quoted\" \\ " * 3000), AIMessage("ok")],
    ]
    history = AgentMemChatHistory(memory=memory, session_id="s1", user_id="maya")
    for turn in turns:
        history.add_messages(turn)
    for _ in range(40):
        history.add_message(AIMessage("a" * 2000))
    expected = [m for turn in turns for m in turn] + [AIMessage("a" * 2000)] * 40
    assert AgentMemChatHistory(memory=memory, session_id="s1", user_id="maya").messages == expected
    texts = [n.text for n in memory.notes(user_id="maya") if n.text != CARRIER_TEXT]
    assert texts[:3] == ["look up the weather", NO_TEXT, NO_TEXT]
    parts = [t for t in texts if t.startswith("word")]   # the long turn: the user's words, in notes that fit
    assert len(parts) > 1 and all(len(t) <= limit for t in parts) and " ".join(parts) == long_turn


def test_messages_before_the_first_turn_outlive_the_history_object(memory):
    AgentMemChatHistory(memory=memory, session_id="s1", user_id="maya").add_messages([SystemMessage("Be a pirate.")])
    AgentMemChatHistory(memory=memory, session_id="s1", user_id="maya").add_messages([HumanMessage("hi"), AIMessage("arr")])
    assert AgentMemChatHistory(memory=memory, session_id="s1", user_id="maya").messages == [
        SystemMessage("Be a pirate."), HumanMessage("hi"), AIMessage("arr")
    ]


def test_a_note_with_broken_chat_metadata_is_skipped(memory, caplog):
    history = AgentMemChatHistory(memory=memory, session_id="s1", user_id="maya")
    history.add_messages([HumanMessage("I moved to Lisbon."), AIMessage("Noted.")])
    memory.remember_many([
        {"text": "planted", "metadata": {"langchain.turn": 5}},
        {"text": "planted", "metadata": {"langchain.turn": 6, "langchain.pieces": [["{not json", True]]}},
        {"text": "planted", "metadata": {"langchain.turn": 7, "langchain.pieces": [['{"type": "nope"}', True]]}},
    ], user_id="maya", session_id="s1", deduplicate=False)
    assert history.messages == [HumanMessage("I moved to Lisbon."), AIMessage("Noted.")]
    assert caplog.text.count("skipped") == 3
    history.add_messages([HumanMessage("I start on Monday.")])   # after every note of the session, planted or not
    assert history.messages[-1] == HumanMessage("I start on Monday.")


def test_a_transcript_written_whole_by_an_earlier_release_still_reads_and_goes_on(memory):
    """Histories written before the pieces kept each turn's messages whole in its note's metadata."""
    said, replied = HumanMessage("I moved to Lisbon."), AIMessage("Noted!")
    memory.remember("I moved to Lisbon.", user_id="maya", session_id="old", deduplicate=False, metadata={
        "langchain.turn": 0, "langchain.message": message_to_dict(said), "langchain.replies": [message_to_dict(replied)],
        "langchain.before": [message_to_dict(SystemMessage("Be brief."))],
    })
    history = AgentMemChatHistory(memory=memory, session_id="old", user_id="maya")
    assert [m.content for m in history.messages] == ["Be brief.", "I moved to Lisbon.", "Noted!"]
    history.add_messages([AIMessage("Anything else?"), HumanMessage("My cat is Miso.")])
    assert [m.content for m in history.messages] == ["Be brief.", "I moved to Lisbon.", "Noted!", "Anything else?",
                                                     "My cat is Miso."]


def test_two_writers_of_one_session_in_one_process_lose_no_message(memory):
    def write(name: str) -> None:
        history = AgentMemChatHistory(memory=memory, session_id="shared-session", user_id="maya")
        for i in range(8):
            history.add_messages([AIMessage(f"{name} reply {i}")])

    writers = [threading.Thread(target=write, args=(name,)) for name in ("first", "second")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    said = [m.content for m in AgentMemChatHistory(memory=memory, session_id="shared-session", user_id="maya").messages]
    assert sorted(said) == sorted(f"{name} reply {i}" for name in ("first", "second") for i in range(8))

"""MemoryChat: recall before each reply, remember each user turn, consolidate between sessions."""
from __future__ import annotations

from datetime import timedelta

import pytest

from agentmem import InvalidInputError, Memory
from agentmem.consolidation.answering import NOTES_BUDGET_CHARS
from agentmem.integrations import MemoryChat
from agentmem.integrations.chat import MEMORY_HEADER
from tests.conftest import T0
from tests.editors.conftest import smollm, smollm_grace_config, tiny_config, tiny_lm, tiny_tokenizer  # noqa: F401


class Recorder:
    """A chat function that records what it was sent and answers with a fixed text."""

    def __init__(self) -> None:
        self.calls: list[list[dict[str, str]]] = []

    def __call__(self, messages):
        self.calls.append(messages)
        return "Noted."


def test_each_reply_sees_what_was_recalled_and_each_user_turn_is_remembered(memory):
    recorder = Recorder()
    chat = MemoryChat(memory, recorder, user_id="maya")
    first = chat.reply("Alice lives in Lisbon.", at=T0)
    assert first.recalled == [] and first.remembered.fact.target == "Lisbon" and first.remembered.user_id == "maya"
    assert [m["role"] for m in recorder.calls[0]] == ["system", "user"]
    second = chat.reply("Where does Alice live?", at=T0 + timedelta(hours=1))
    assert second.recalled[0].note.id == first.remembered.id
    memory_message = recorder.calls[1][1]
    assert memory_message["role"] == "system" and "Alice lives in Lisbon." in memory_message["content"]
    assert recorder.calls[1][-3:] == [
        {"role": "user", "content": "Alice lives in Lisbon."}, {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "Where does Alice live?"},
    ]
    assert memory.stats().notes == 2 and all(n.session_id == chat.session_id for n in (first.remembered, second.remembered))
    assert memory.get(first.remembered.id).recall_count == 1   # recalling is rehearsal: it counts toward consolidation


def test_a_turn_dated_before_a_recalled_note_was_made_counts_only_the_notes_that_existed(memory):
    """A replayed turn recalls every note held now; a recall of a note made later than the turn was counted at a time
    before the note existed (then, once reinforce refused such a time, the turn counted nothing)."""
    older = memory.remember("Alice lives in Lisbon.", user_id="maya", at=T0)
    later = memory.remember("Alice works in Lisbon at a bakery.", user_id="maya", at=T0 + timedelta(days=2))
    reply = MemoryChat(memory, Recorder(), user_id="maya").reply("Where does Alice live in Lisbon?",
                                                                 at=T0 + timedelta(days=1))
    assert {hit.note.id for hit in reply.recalled} == {older.id, later.id}
    assert memory.get(older.id).recall_count == 1 and memory.get(later.id).recall_count == 0
    assert {hit.note.id: hit.note.recall_count for hit in reply.recalled} == {older.id: 1, later.id: 0}


def test_a_note_forgotten_while_the_reply_is_written_leaves_the_other_recalled_notes_counted(memory):
    """The recalled notes are counted once the turn is stored; one forgotten meanwhile (here by the chat function)
    is skipped, as a recall skips it: before, the whole count was refused and nothing was counted."""
    kept = memory.remember("Alice lives in Lisbon.", user_id="maya", at=T0)
    gone = memory.remember("Alice works in Lisbon at a bakery.", user_id="maya", at=T0)

    def forgetting_chat(messages):
        memory.forget(gone.id)
        return "Noted."

    reply = MemoryChat(memory, forgetting_chat, user_id="maya").reply("Where does Alice live in Lisbon?",
                                                                      at=T0 + timedelta(days=1))
    assert {hit.note.id: hit.note.recall_count for hit in reply.recalled} == {kept.id: 1, gone.id: 0}
    assert memory.get(kept.id).recall_count == 1


def test_sessions_end_with_an_optional_consolidation(tmp_path, embedder, tiny_lm, tiny_config):
    with Memory(tmp_path / "m", embedder=embedder, model=tiny_lm, editor=tiny_config) as mem:
        chat = MemoryChat(mem, Recorder())
        chat.reply("Alice lives in Lisbon.", at=T0)
        for hour in (1, 2, 3):
            chat.reply("Tell me where Alice lives in", at=T0 + timedelta(hours=hour))
        session = chat.session_id
        assert chat.end_session() is None and chat.history == [] and chat.session_id != session
        report = chat.end_session(consolidate=True, at=T0 + timedelta(days=1))
        assert report.applied == 1 and mem.answer("Alice lives in", retrieval=False).source == "weights"


def test_bad_input_is_refused_and_nothing_is_remembered(memory):
    with pytest.raises(InvalidInputError):
        MemoryChat("not a memory")
    with pytest.raises(InvalidInputError):
        MemoryChat(memory, chat="not callable")
    for turns in (-1, 1.5, True):
        with pytest.raises(InvalidInputError):
            MemoryChat(memory, Recorder(), history_turns=turns)
    for bad in ({"user_id": ""}, {"agent_id": "a\x00b"}, {"k": 5000}, {"k": 0}):   # at once, not at the first reply
        with pytest.raises(InvalidInputError):
            MemoryChat(memory, Recorder(), **bad)
    chat = MemoryChat(memory, lambda messages: None)
    with pytest.raises(InvalidInputError):
        chat.reply("   ")
    with pytest.raises(InvalidInputError, match="message has 10001 characters"):   # it was called a "query"
        chat.reply("x" * 10_001)
    with pytest.raises(InvalidInputError):
        chat.reply("Alice lives in Lisbon.")   # the chat function broke its contract: no reply, no note
    assert memory.stats().notes == 0


@pytest.mark.parametrize("turns", [0, 1, 2])
def test_history_turns_bounds_the_earlier_turns_each_reply_sees(memory, turns):
    recorder = Recorder()
    chat = MemoryChat(memory, recorder, user_id="maya", history_turns=turns)
    for i in range(4):
        chat.reply(f"Reminder number {i}: water the plants.", at=T0 + timedelta(minutes=i))
    earlier = [m for m in recorder.calls[-1][:-1] if m["role"] != "system"]
    assert len(earlier) == 2 * turns
    assert [m["content"] for m in earlier if m["role"] == "user"] == [f"Reminder number {i}: water the plants."
                                                                     for i in range(3 - turns, 3)]


def test_a_turn_that_fails_counts_no_recall(memory, monkeypatch):
    """The notes a turn recalls count as recalled only once the turn is stored: a failing turn changes nothing."""
    told = MemoryChat(memory, Recorder(), user_id="maya").reply("Alice lives in Lisbon.", at=T0).remembered

    def broken(messages):
        raise RuntimeError("the chat model is down")

    with pytest.raises(RuntimeError):
        MemoryChat(memory, broken, user_id="maya").reply("Where does Alice live?", at=T0)
    def refused(*args, **kwargs):
        raise InvalidInputError("the turn cannot be stored")

    with monkeypatch.context() as storing:   # recalled and answered, then refused as a note
        storing.setattr(memory, "remember", refused)
        with pytest.raises(InvalidInputError):
            MemoryChat(memory, Recorder(), user_id="maya").reply("Where does Alice live?", at=T0)
    assert memory.get(told.id).recall_count == 0 and memory.stats().notes == 1
    reply = MemoryChat(memory, Recorder(), user_id="maya").reply("Where does Alice live?", at=T0)
    assert reply.recalled[0].note.recall_count == memory.get(told.id).recall_count == 1


@pytest.mark.slow
def test_the_default_chat_is_the_bundled_local_model(tmp_path, embedder, smollm, smollm_grace_config):
    with Memory(tmp_path / "m", embedder=embedder, model=smollm, editor=smollm_grace_config) as mem:
        chat = MemoryChat(mem, user_id="maya")
        chat.reply("The project deadline is March 3.", at=T0)
        reply = chat.reply("When is the project deadline?", at=T0 + timedelta(hours=1))
        assert reply.recalled and reply.text.strip()


def test_only_related_notes_reach_the_prompt(memory):
    """An unrelated note would mislead the model and keep an edited fact from answering closed-book."""
    recorder = Recorder()
    chat = MemoryChat(memory, recorder, user_id="maya")
    stored = chat.reply("Alice lives in Lisbon.", at=T0).remembered
    unrelated = chat.reply("How many legs does a spider have?", at=T0 + timedelta(hours=1))
    assert unrelated.recalled == [] and [m["role"] for m in recorder.calls[1]][:2] == ["system", "user"]
    related = chat.reply("Where does Alice live?", at=T0 + timedelta(hours=2))
    assert [hit.note.id for hit in related.recalled][:1] == [stored.id]
    assert memory.get(stored.id).recall_count == 1   # only the related turn counted it


def test_long_notes_reach_the_prompt_cut_to_the_notes_budget_and_only_those_count(memory):
    """Two notes of 10,000 characters before a question held the local model (and every other caller's turn
    behind it) for six minutes."""
    recorder = Recorder()
    chat = MemoryChat(memory, recorder, user_id="maya")
    long_notes = [memory.remember(f"Maya's garden plan, part {part}: " + "tomatoes basil and beans " * 300,
                                  user_id="maya", at=T0) for part in (1, 2)]
    reply = chat.reply("What is in Maya's garden plan?", at=T0 + timedelta(hours=1))
    notes = [m["content"] for m in recorder.calls[0] if m["content"].startswith(MEMORY_HEADER)]
    assert [len(block) for block in notes] == [len(f"{MEMORY_HEADER}\n- ") + NOTES_BUDGET_CHARS]
    assert len(reply.recalled) == 1   # the second did not fit: not shown, not counted
    assert sorted(memory.get(n.id).recall_count for n in long_notes) == [0, 1]

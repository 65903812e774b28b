"""`AgentMemChatHistory`: a LangChain chat message history kept in agentmem (`pip install agentmem[langchain]`).

`RunnableWithMessageHistory(chain, lambda sid: AgentMemChatHistory(memory=mem, session_id=sid, user_id="maya"))`
keeps each session's transcript in the memory, and what the user says becomes long-term memory on the way.

Each user turn is remembered as a note, as `MemoryChat` does: the user's text, in the user's scope and
the session, so it is recalled later (in any session), extracted into a fact, and can be consolidated.
The other messages of the session (the assistant's replies, tool results, system messages) are not
facts the user gave: they never become notes of their own, but ride in the metadata of the user turn
they follow, so the transcript reads back whole and in order. Messages added before the session's
first user turn are held by this object until that turn arrives. Turns archived by `decay()` stay in
the transcript; `clear()` forgets the session's turns for good.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import BaseMessage, HumanMessage, message_to_dict, messages_from_dict

from .. import validation
from ..errors import InvalidInputError
from ..memory import Memory
from ..notes import Note

TURN = "langchain.turn"            # the turn's position in the session
MESSAGE = "langchain.message"      # the user's message as LangChain serialises it
BEFORE = "langchain.before"        # messages that came before the session's first user turn
REPLIES = "langchain.replies"      # the messages that followed the turn, until the next one


class AgentMemChatHistory(BaseChatMessageHistory):
    """The messages of one session of a `Memory`, user turns kept as notes.

    >>> history = AgentMemChatHistory(memory=mem, session_id="s1", user_id="maya")
    >>> history.add_messages([HumanMessage("I moved to Lisbon."), AIMessage("Noted!")])
    """

    def __init__(
        self, *, memory: Memory, session_id: str, user_id: str | None = None, agent_id: str | None = None
    ) -> None:
        if not isinstance(memory, Memory):
            raise InvalidInputError("AgentMemChatHistory keeps its messages in a Memory: pass memory=Memory(...)")
        if session_id is None:
            raise InvalidInputError("a chat history needs a session_id")
        self.memory = memory
        self.session_id = validation.scope("session_id", session_id)
        self.user_id = validation.scope("user_id", user_id)
        self.agent_id = validation.scope("agent_id", agent_id)
        self.waiting: list[BaseMessage] = []   # added before the first user turn

    @property
    def messages(self) -> list[BaseMessage]:
        turns = self._turns()
        if not turns:
            return list(self.waiting)
        messages: list[BaseMessage] = []
        for note in turns:
            meta = note.metadata
            messages += messages_from_dict([*meta.get(BEFORE, []), meta[MESSAGE], *meta.get(REPLIES, [])])
        return messages

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Remember each user message as a note carrying the messages that follow it.

        Everything is checked before anything is written, and the batch's user turns are written in one
        transaction (a repeated "Yes." is a turn of its own, not a duplicate).
        """
        if isinstance(messages, (BaseMessage, str)) or not isinstance(messages, Iterable):
            raise InvalidInputError("add_messages takes a sequence of LangChain messages")
        messages = list(messages)
        if not all(isinstance(m, BaseMessage) for m in messages):
            raise InvalidInputError("add_messages takes a sequence of LangChain messages")
        leading, groups = _split_at_user_turns(messages)
        for user, _ in groups:
            validation.text(user.text, self.memory.config.max_text_chars, "a user message's text")
        turns = self._turns()
        planned = [self._turn_metadata(len(turns) + i, user, replies) for i, (user, replies) in enumerate(groups)]
        if not turns and not groups:
            self.waiting += leading
            return
        if not turns:
            before = [message_to_dict(m) for m in self.waiting + leading]
            planned[0] = validation.metadata({**planned[0], BEFORE: before})
        elif leading:
            last = turns[-1]
            replies = [*last.metadata[REPLIES], *map(message_to_dict, leading)]
            self.memory.update(last.id, metadata=validation.metadata({**last.metadata, REPLIES: replies}))
        if groups:
            self.memory.remember_many(
                [{"text": user.text, "metadata": metadata} for (user, _), metadata in zip(groups, planned)],
                user_id=self.user_id, agent_id=self.agent_id, session_id=self.session_id, deduplicate=False,
            )
            self.waiting = []

    def clear(self) -> None:
        """Forget the session's turns (their notes) and any message still waiting for a first turn."""
        for note in self._turns():
            self.memory.forget(note.id)
        self.waiting = []

    def _turns(self) -> list[Note]:
        notes = self.memory.notes(
            user_id=self.user_id, agent_id=self.agent_id, session_id=self.session_id, include_archived=True
        )
        return sorted((n for n in notes if TURN in n.metadata), key=lambda n: n.metadata[TURN])

    @staticmethod
    def _turn_metadata(turn: int, user: HumanMessage, replies: list[BaseMessage]) -> dict[str, Any]:
        return validation.metadata(
            {TURN: turn, MESSAGE: message_to_dict(user), REPLIES: [message_to_dict(m) for m in replies]}
        )


def _split_at_user_turns(
    messages: list[BaseMessage],
) -> tuple[list[BaseMessage], list[tuple[HumanMessage, list[BaseMessage]]]]:
    """The messages before the first user message, then each user message with the ones that follow it."""
    leading: list[BaseMessage] = []
    groups: list[tuple[HumanMessage, list[BaseMessage]]] = []
    for message in messages:
        if isinstance(message, HumanMessage):
            groups.append((message, []))
        elif groups:
            groups[-1][1].append(message)
        else:
            leading.append(message)
    return leading, groups

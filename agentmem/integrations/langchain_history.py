"""`AgentMemChatHistory`: a LangChain chat message history kept in agentmem (`pip install agentmem[langchain]`).

`RunnableWithMessageHistory(chain, lambda sid: AgentMemChatHistory(memory=mem, session_id=sid, user_id="maya"))`
keeps each session's transcript in the memory, and what the user says becomes long-term memory on the way.

Each user turn is remembered as a note, as `MemoryChat` does: the user's text, in the user's scope and
the session, so it is recalled later (in any session), extracted into a fact, and can be consolidated.
A turn longer than the memory's text limit is several notes, split at whitespace; a turn without text
(an image, say) is a note that says so.

Nothing the chain hands over is lost, and nothing is refused for its size: every message, as LangChain
serialises it, is kept in note metadata, cut into pieces that fit it. The other messages of the session
(the assistant's replies, tool results, system messages) are not facts the user gave, so they ride in
the metadata of the user turn they follow; only what does not fit there — or what comes before the
session's first user turn — goes to a carrier note whose text says no more than that the transcript
continues (`CARRIER_TEXT`: it can still be recalled, as any note can, but says nothing). Turns archived
by `decay()` stay in the transcript; `clear()` forgets the session's notes for good.

A history is the session id in exactly its scope: one with no `user_id` (or no `agent_id`) is the
session of no user (or of no agent), not every user's session of that id, so two histories never
share messages unless they name the same user, agent and session (as LangChain's persistent
histories keep one transcript per key).

A message whose fields are not JSON (a datetime or bytes in `additional_kwargs`, say) is refused
with `InvalidInputError`, as LangChain's persistent histories (SQL, Redis, file) cannot store it
either, and nothing of its batch is written.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import BaseMessage, HumanMessage, message_to_dict, messages_from_dict

from .. import validation
from ..errors import InvalidInputError, NoteNotFoundError
from ..memory import Memory
from ..notes import Note
from .turns import note_texts

log = logging.getLogger(__name__)

TURN = "langchain.turn"          # the note's position in the session
PIECES = "langchain.pieces"      # [[piece of a message's JSON, whether it is the message's last piece], ...]
# how histories written before the pieces kept whole messages (read, never written)
MESSAGE, BEFORE, REPLIES = "langchain.message", "langchain.before", "langchain.replies"
CARRIER_TEXT = "(the chat transcript continues here)"
NO_TEXT = "(a message without text)"
_SESSION_LOCKS = [threading.Lock() for _ in range(64)]  # a session's writers in this process take turns (striped)
ROOM = 60_000                    # JSON characters of pieces per note: metadata holds at most 65,536
PIECE_CHARS = 20_000             # a piece is ASCII JSON, whose own JSON is at most twice as long


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

    @property
    def messages(self) -> list[BaseMessage]:
        dicts: list[dict[str, Any]] = []
        pending = ""
        for note in self._notes():
            meta = note.metadata
            if PIECES not in meta:  # written whole, before the pieces
                dicts += [*meta.get(BEFORE, []), meta[MESSAGE], *meta.get(REPLIES, [])]
                continue
            for piece, last in meta[PIECES]:
                pending += piece
                if last:
                    try:
                        dicts.append(json.loads(pending))
                    except ValueError:
                        log.warning("a message of chat session %r does not parse; it is skipped", self.session_id)
                    pending = ""
        messages: list[BaseMessage] = []
        for message in dicts:
            try:
                messages += messages_from_dict([message])
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("a message of chat session %r is not LangChain's (%s); it is skipped", self.session_id, exc)
        return messages

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Remember each user message as note(s) of its text; keep every message in note metadata.

        The batch's new notes are written in one transaction (a repeated "Yes." is a turn of its own,
        not a duplicate); messages that fit after the session's last note are added to it first.
        """
        if isinstance(messages, (BaseMessage, str)) or not isinstance(messages, Iterable):
            raise InvalidInputError("add_messages takes a sequence of LangChain messages")
        messages = list(messages)
        if not all(isinstance(m, BaseMessage) for m in messages):
            raise InvalidInputError("add_messages takes a sequence of LangChain messages")
        with _SESSION_LOCKS[hash((id(self.memory), self.user_id, self.agent_id, self.session_id)) % len(_SESSION_LOCKS)]:
            self._add(messages)

    def _add(self, messages: list[BaseMessage]) -> None:
        """`add_messages` once this process's other writers of the session are done: each reads the session's
        last note and appends after it, and two at once would both append to it (one's messages lost)."""
        stored = self._notes()
        last = stored[-1] if stored else None
        # after a note written whole (before the pieces), what follows goes to new notes
        plan = _Plan(list(last.metadata[PIECES]) if last is not None and PIECES in last.metadata else None)
        for position, message in enumerate(messages):
            pieces = _pieces(_serialised(message, position))
            if isinstance(message, HumanMessage):
                plan.user_turn(self._texts(message), pieces)
            else:
                plan.follow(pieces)
        if last is not None and plan.appended:
            try:
                self.memory.update(last.id, metadata={**last.metadata, PIECES: plan.last})
            except NoteNotFoundError:   # cleared meanwhile: what followed it starts the session again
                plan.new.insert(0, (CARRIER_TEXT, plan.last[len(last.metadata[PIECES]):]))
        if plan.new:
            first = last.metadata[TURN] + 1 if last is not None else 0
            self.memory.remember_many(
                [{"text": text, "metadata": {TURN: first + i, PIECES: pieces}}
                 for i, (text, pieces) in enumerate(plan.new)],
                user_id=self.user_id, agent_id=self.agent_id, session_id=self.session_id, deduplicate=False,
            )

    def clear(self) -> None:
        """Forget the session's notes, the newest first: a forget mixes the notes after it in its
        session again without it, and after the newest there are none (oldest first, each forget
        re-mixed every later note: quadratic in the session's length)."""
        for note in reversed(self._notes()):
            try:
                self.memory.forget(note.id)
            except NoteNotFoundError:
                pass

    def _notes(self) -> list[Note]:
        """The session's notes written by a chat history, in order; a malformed one is skipped.
        The memory reads None as "any user" (or agent); the history keeps exactly its own scope."""
        notes = self.memory.notes(
            user_id=self.user_id, agent_id=self.agent_id, session_id=self.session_id, include_archived=True
        )
        kept = []
        for note in notes:
            if (note.user_id, note.agent_id) != (self.user_id, self.agent_id):
                continue   # another scope's session of the same id
            if TURN not in note.metadata:
                continue   # a note of the session written otherwise (MemoryChat, an agent's remember)
            if _well_formed(note.metadata):
                kept.append(note)
            else:
                log.warning("note %s is skipped by the chat history: its langchain.* metadata is malformed", note.id)
        return sorted(kept, key=lambda n: n.metadata[TURN])

    def _texts(self, message: HumanMessage) -> list[str]:
        """The notes' texts for a user message: its words, split to the memory's text limit."""
        return note_texts(message.text, self.memory.config.max_text_chars) or [NO_TEXT]


class _Plan:
    """Where each message's pieces go: after the session's last note (`last`) while they fit, else new notes."""

    def __init__(self, last: list[list[Any]] | None) -> None:
        self.last = last                  # the pieces of the session's last stored note (None: no note yet)
        self.appended = False
        self.new: list[tuple[str, list[list[Any]]]] = []

    def user_turn(self, texts: list[str], pieces: list[list[Any]]) -> None:
        """New notes for the turn's text; the message rides on the last, where what follows it goes too."""
        self.new += [(text, []) for text in texts]
        self._place(pieces, self.new[-1][1])

    def follow(self, pieces: list[list[Any]]) -> None:
        self._place(pieces, self.new[-1][1] if self.new else self.last)

    def _place(self, pieces: list[list[Any]], into: list[list[Any]] | None) -> None:
        """Fill `into` (the current note's pieces, or the user turn's first note), then carrier notes."""
        if into is None:   # nothing stored and nothing planned: a carrier opens the session
            self.new.append((CARRIER_TEXT, []))
            into = self.new[-1][1]
        for piece in pieces:
            if len(json.dumps([*into, piece])) > ROOM:
                self.new.append((CARRIER_TEXT, []))
                into = self.new[-1][1]
            into.append(piece)
            self.appended |= into is self.last


def _serialised(message: BaseMessage, position: int) -> str:
    """The message as LangChain serialises it, in JSON; refused, typed, if a field is not JSON."""
    try:
        return json.dumps(message_to_dict(message))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"message {position} ({type(message).__name__}) cannot be kept: its fields must be JSON ({exc}); "
            "nothing of the batch was written"
        ) from None


def _pieces(serialised: str) -> list[list[Any]]:
    """A message's JSON (ASCII) in pieces, each flagged whether it ends the message."""
    cuts = range(0, max(len(serialised), 1), PIECE_CHARS)
    return [[serialised[i: i + PIECE_CHARS], i + PIECE_CHARS >= len(serialised)] for i in cuts]


def _well_formed(meta: dict[str, Any]) -> bool:
    if not isinstance(meta.get(TURN), int) or isinstance(meta.get(TURN), bool):
        return False
    if PIECES not in meta:  # written whole, before the pieces
        return isinstance(meta.get(MESSAGE), dict) and all(
            isinstance(meta.get(key, []), list) and all(isinstance(m, dict) for m in meta.get(key, []))
            for key in (BEFORE, REPLIES)
        )
    pieces = meta[PIECES]
    return isinstance(pieces, list) and all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], bool) for p in pieces
    )

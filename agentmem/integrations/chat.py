"""`MemoryChat`: any chat function, with long-term memory around each reply.

Before each reply the user's message is used to recall notes, which go to the chat function
as a system message; after it, the user's turn is remembered (a note, with a fact if it states
one). The assistant's own replies stay in the session's history only: they are the model's
words, not facts the user gave, so they never become notes or edits. Between sessions
`end_session()` can run a consolidation job, so what keeps coming up moves into the weights.
"""
from __future__ import annotations

import logging
import uuid
from datetime import datetime

from pydantic import BaseModel

from .. import validation
from ..consolidation.answering import fitting, notes_block
from ..errors import AgentMemError, InvalidInputError
from ..facts import ChatFunction
from ..memory import Memory
from ..notes import ConsolidationReport, Hit, Note

log = logging.getLogger(__name__)

Message = dict[str, str]

SYSTEM = "You are a helpful assistant. Answer briefly."
MEMORY_HEADER = "What you remember about this user (most relevant first):"


class ChatReply(BaseModel):
    """One exchange: the reply, the notes recalled for it, and the note the user's turn became."""

    text: str
    recalled: list[Hit]
    remembered: Note


def local_chat(memory: Memory, max_new_tokens: int = 96, *, user_id: str | None = None,
               agent_id: str | None = None) -> ChatFunction:
    """The bundled local model (with the memory's edits) as a chat function for one user (and agent).

    The model gets the chat in its own template: one system message (the system prompt and the
    recalled notes) and the last user message. Earlier turns are left out, since a written-out
    transcript makes a 135M model echo it instead of answering. Only the edits of this user's
    (and agent's) scope and the shared ones fire: another user's consolidated facts stay silent.
    """

    def chat(messages: list[Message]) -> str:
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        turns = ([{"role": "system", "content": system}] if system else []) + [messages[-1]]
        with memory.generating(user_id=user_id, agent_id=agent_id) as lm:
            return lm.reply(turns, max_new_tokens)

    return chat


class MemoryChat:
    """A chat session that recalls before it replies and remembers what the user says.

    >>> chat = MemoryChat(Memory("memdata"), user_id="maya")
    >>> chat.reply("My flight lands on 12 April.").text
    """

    def __init__(
        self,
        memory: Memory,
        chat: ChatFunction | None = None,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        k: int = 5,
        system: str = SYSTEM,
        history_turns: int = 6,
    ) -> None:
        if not isinstance(memory, Memory):
            raise InvalidInputError("MemoryChat wraps a Memory")
        if chat is not None and not callable(chat):
            raise InvalidInputError("chat must be a callable taking a list of messages and returning text")
        validation.count(k, "k")  # each checked now, not at the first reply
        validation.scope("user_id", user_id)
        validation.scope("agent_id", agent_id)
        if isinstance(history_turns, bool) or not isinstance(history_turns, int) or history_turns < 0:
            raise InvalidInputError(f"history_turns must be an integer >= 0, got {history_turns!r}")
        self.memory = memory
        self.chat = chat or local_chat(memory, user_id=user_id, agent_id=agent_id)
        self.user_id, self.agent_id = user_id, agent_id
        self.k, self.system, self.history_turns = k, system, history_turns
        self.session_id = uuid.uuid4().hex[:12]
        self.history: list[Message] = []

    def reply(self, message: str, *, at: datetime | None = None) -> ChatReply:
        """Recall, reply with the related notes found (`answer_min_similarity`) in the system message, then
        remember the user's turn.

        The recalled notes count as recalled once the turn is remembered: a turn that fails (the
        chat function raises, or the message cannot be stored) changes nothing. Should only that
        count fail afterwards, the reply still stands (it is bookkeeping; the failure is logged)."""
        validation.text(message, self.memory.config.max_text_chars, "message")  # checked as the note it becomes
        scope = {"user_id": self.user_id, "agent_id": self.agent_id}
        when = validation.time(at)
        hits = self.memory.recall(message, k=self.k, at=when, reinforce=False, **scope)
        # as `answer` does: an unrelated note in the prompt misleads a small model, and keeps a question that an
        # edit answers from reaching the model closed-book
        hits = fitting([hit for hit in hits if hit.why.similarity >= self.memory.config.answer_min_similarity])
        messages = [{"role": "system", "content": self.system}]
        if hits:
            messages.append({"role": "system", "content": f"{MEMORY_HEADER}\n{notes_block(hits)}"})
        messages += self.history + [{"role": "user", "content": message}]
        text = self.chat(messages)
        if not isinstance(text, str):
            raise InvalidInputError(f"the chat function returned {type(text).__name__}, not text")
        note = self.memory.remember(message, session_id=self.session_id, at=when, **scope)
        self.history += [{"role": "user", "content": message}, {"role": "assistant", "content": text}]
        del self.history[: len(self.history) - 2 * self.history_turns]  # the last turns go with the next message
        # counted as a recall counts what it found: not one forgotten meanwhile, nor one made after `when`
        found = [hit.note.id for hit in hits]
        try:
            recalled = {counted.id: counted for counted in self.memory.reinforce(found, at=when, strict=False)}
        except AgentMemError:  # the store unreachable: the turn itself is stored
            log.warning("the recalled notes of a chat turn were not counted as recalled", exc_info=True)
        else:
            hits = [hit.model_copy(update={"note": recalled.get(hit.note.id, hit.note)}) for hit in hits]
        return ChatReply(text=text, recalled=hits, remembered=note)

    def end_session(self, *, consolidate: bool = False, at: datetime | None = None) -> ConsolidationReport | None:
        """Close the session (a new one starts with the next message); optionally run a consolidation job."""
        self.history = []
        self.session_id = uuid.uuid4().hex[:12]
        return self.memory.consolidate(at=at) if consolidate else None

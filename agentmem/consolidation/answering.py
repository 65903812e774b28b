"""Answering a question with parametric memory first: which memory answers, and the prompt the local model gets.

`Memory.answer` delegates here. The caller has set the model's scopes (`LanguageModel.scoped`)
to the asking user's, so the edits that can answer are that user's and the shared ones.
Replies go through the model's chat template. An editor that keys on the bare prompt (GRACE,
WISE: `Editor.chat_routing` False) does not fire inside a template, so a question its edits
cover is put to the model as the bare prompt instead.
"""
from __future__ import annotations

from collections.abc import Callable

from ..notes import Answer, Hit
from .parametric import ParametricMemory

NOTES_PROMPT = "Notes:\n{notes}\n\nUsing the notes, answer briefly: {question}"
# The recalled notes' text a prompt holds at most. The local model reads a prompt slowly and holds the one model
# lane meanwhile: two notes of 10,000 characters before a question held it for six minutes.
NOTES_BUDGET_CHARS = 2_000


def fitting(hits: list[Hit]) -> list[Hit]:
    """The best hits whose texts fit in the notes' budget together; the best one always (`notes_block` cuts it)."""
    kept, used = [], 0
    for hit in hits:
        used += len(hit.note.text)
        if kept and used > NOTES_BUDGET_CHARS:
            break
        kept.append(hit)
    return kept


def notes_block(hits: list[Hit]) -> str:
    """The hits' texts as "- text" lines for a prompt; a text over the notes' budget is cut to it."""
    return "\n".join(f"- {hit.note.text[:NOTES_BUDGET_CHARS]}" for hit in hits)


def answer_question(parametric: ParametricMemory, question: str, recall: Callable[[], list[Hit]],
                    max_new_tokens: int) -> Answer:
    """From the weights when the edits cover `question`; else from the notes `recall()` finds, as context;
    else from the model alone."""
    lm, editor = parametric.lm, parametric.editor
    if editor.covers(question):
        if editor.chat_routing:
            text = lm.reply([{"role": "user", "content": question}], max_new_tokens)
        else:
            text = lm.generate(question, max_new_tokens).strip()
        return Answer(question=question, text=text, source="weights")
    hits = recall()
    if not hits:
        return Answer(question=question, text=lm.reply([{"role": "user", "content": question}], max_new_tokens),
                      source="model")
    text = lm.reply([{"role": "user", "content": NOTES_PROMPT.format(notes=notes_block(hits), question=question)}],
                    max_new_tokens)
    return Answer(question=question, text=text, source="notes", hits=hits)

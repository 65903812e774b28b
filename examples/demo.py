"""A short dated conversation stored, recalled, left to fade, and consolidated into the weights: offline.

Run with `make demo`. Each step prints what the memory did. Steps 4-6 load the bundled
SmolLM2-135M-Instruct: a chat wrapped with memory states two facts and keeps coming back to
them, a consolidation job edits them into the model (GRACE), and the model then answers
them with retrieval switched off; forgetting a note takes its edit back out.
"""
from __future__ import annotations

import tempfile
from datetime import datetime, timedelta, timezone

from agentmem import Fact, Memory
from agentmem.integrations import MemoryChat
from agentmem.integrations.chat import local_chat

START = datetime(2024, 3, 4, 9, 0, tzinfo=timezone.utc)

CONVERSATION = [  # (day, speaker, text)
    (0, "maya", "Hi! I just moved to Lisbon for a new job at a design studio."),
    (0, "maya", "My sister Ines is visiting me in April."),
    (0, "maya", "I'm allergic to peanuts, so careful with restaurant tips."),
    (2, "maya", "The studio is in Alfama, I walk there along the river."),
    (2, "maya", "I adopted a grey cat and named her Nata."),
    (9, "maya", "Ines booked her flights: she lands on 12 April."),
    (9, "maya", "The weather today is rainy and grey."),
    (20, "maya", "Nata knocked my plant off the balcony again."),
]

CHAT = [  # (day, what maya says): two facts, then questions that keep recalling them
    (61, "Dana lives in Porto."),
    (61, "The project deadline is March 3."),
    (62, "Where does Dana live again?"),
    (62, "When is the project deadline?"),
    (63, "Is it a long trip to where Dana lives?"),
    (63, "How many days are left before the project deadline?"),
    (64, "Could Dana host the team near where she lives?"),
]
CLOSED_BOOK = {"Dana lives in": "Porto", "The project deadline is": "March 3"}

QUESTIONS = [
    (21, "When does my sister arrive?"),
    (21, "What should restaurants know about my diet?"),
    (21, "What is my cat called?"),
]


def show_hits(mem: Memory, day: int, question: str) -> None:
    hits = mem.recall(question, user_id="maya", k=2, at=START + timedelta(days=day))
    print(f"\n  Q (day {day}): {question}")
    for hit in hits:
        via = f", via link from {hit.why.via_link[:8]}" if hit.why.via_link else ""
        print(
            f"    {hit.score:.2f}  {hit.note.text}\n"
            f"          similarity {hit.why.similarity:.2f}, lexical {hit.why.lexical:.2f},"
            f" retention {hit.why.retention:.2f}{via}; now recalled {hit.note.recall_count}x"
        )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="agentmem-demo-") as folder, Memory(folder) as mem:
        print(f"Memory at {folder} (embedded Chroma + SQLite note graph, bundled MiniLM)\n")
        print("1. Remembering a dated conversation")
        for day, speaker, text in CONVERSATION:
            fact = Fact(prompt="Maya's cat is called", target="Nata") if "named her" in text else None
            note = mem.remember(text, user_id=speaker, session_id=f"day-{day}", at=START + timedelta(days=day), fact=fact)
            links = ", ".join(f"{link.note_id[:8]} ({link.weight:.2f})" for link in note.links) or "none"
            print(f"  day {day:>2}  {note.id[:8]}  keywords={note.keywords[:4]}  links={links}")
        repeat = mem.remember("I'm allergic to peanuts, so careful with restaurant tips.", user_id="maya",
                              session_id="day-0", at=START + timedelta(days=1))
        print(f"  a repeated sentence reinforced note {repeat.id[:8]} instead of duplicating it"
              f" (strength {mem.get(repeat.id).strength:.0f})")

        print("\n2. Recalling three weeks later (each returned note is reinforced)")
        for day, question in QUESTIONS:
            show_hits(mem, day, question)

        print("\n3. Letting time pass: decay() archives what faded")
        for day in (25, 60):
            report = mem.decay(at=START + timedelta(days=day))
            faded = [mem.get(i).text for i in report.archived]
            print(f"  day {day}: examined {report.examined}, archived {len(faded)}, kept {report.kept}")
            for text in faded:
                print(f"    archived: {text}")
        stats = mem.stats()
        print(f"\n  {stats.active} active, {stats.archived} archived (restorable), {stats.links} links")
        archived_hits = mem.recall("weather", user_id="maya", include_archived=True, k=1, at=START + timedelta(days=61))
        if archived_hits:
            restored = mem.restore(archived_hits[0].note.id, at=START + timedelta(days=61))
            print(f"  restored: {restored.text!r} (archived notes are never lost)")

        consolidation(mem)


def closed_book(mem: Memory, label: str) -> dict[str, str]:
    """What the model says after each fact prompt with retrieval switched off."""
    print(f"\n  closed book, retrieval off ({label}):")
    said = {}
    lm = mem.language_model
    for prompt, target in CLOSED_BOOK.items():  # as many tokens as the fact's target has
        answer = mem.answer(prompt, retrieval=False, user_id="maya",  # her facts are edits in her scope
                            max_new_tokens=len(lm.encode_pair(prompt, target)[1]))
        said[prompt] = answer.text
        print(f"    {prompt} ... {answer.text!r}   [answered from: {answer.source}]")
    return said


def consolidation(mem: Memory) -> None:
    print("\n4. A chat wrapped with memory (the bundled SmolLM2-135M-Instruct, loaded now)")
    chat = MemoryChat(mem, local_chat(mem, max_new_tokens=24), user_id="maya", k=3)
    for day, message in CHAT:
        reply = chat.reply(message, at=START + timedelta(days=day))
        fact = reply.remembered.fact
        print(f"\n  maya (day {day}): {message}" + (f"   -> fact: {fact.prompt!r} -> {fact.target!r}" if fact else ""))
        for hit in reply.recalled[:2]:
            print(f"    recalled: {hit.note.text}  (now {hit.note.recall_count}x)")
        print(f"  assistant: {reply.text}")
    before = closed_book(mem, "before consolidation")

    print("\n5. Between sessions: a consolidation job moves what keeps being recalled into the weights")
    report = chat.end_session(consolidate=True, at=START + timedelta(days=65))
    for decision in report.decisions:
        if decision.fact is None:
            continue
        numbers = ""
        if decision.verification:
            v = decision.verification
            numbers = f"; verified: target {v.produces_target}, probes unchanged {v.probe_agreement:.0%}, {v.seconds:.1f} s"
        print(f"  {decision.fact.prompt!r} -> {decision.fact.target!r}: {decision.action} ({decision.reason}"
              f"{', ' + decision.detail if decision.detail else ''}) -> {decision.outcome or 'nothing done'}{numbers}")
    print(f"  applied {report.applied}, failed {report.failed}, known {report.known}, in {report.seconds:.1f} s;"
          f" {len(mem.ledger())} ledger rows")
    closed_book(mem, "after consolidation")

    print("\n6. Forgetting a consolidated note retracts its edit")
    dana = next(e.note_id for e in mem.ledger() if e.prompt == "Dana lives in" and e.status == "applied")
    mem.forget(dana)
    after = closed_book(mem, "after forgetting Dana's note")
    print(f"  the model gives its pre-edit answer again: {after['Dana lives in'] == before['Dana lives in']}")


if __name__ == "__main__":
    main()

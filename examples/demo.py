"""A short dated conversation stored, recalled, and left to fade: agentmem end to end, offline.

Run with `make demo`. Each step prints what the memory did.
"""
from __future__ import annotations

import tempfile
from datetime import datetime, timedelta, timezone

from agentmem import Fact, Memory

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


if __name__ == "__main__":
    main()

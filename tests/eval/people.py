"""ZsRE-shaped records about made-up people, for the benchmarks' commands run end to end on the real model."""
from __future__ import annotations

from pathlib import Path

from agentmem.eval.zsre import ZsreRecord


def asked(subject: str, question: str, rephrase: str, target: str, answer: str) -> ZsreRecord:
    return ZsreRecord(subject=subject, src=question, rephrase=rephrase, alt=target, answers=(answer,),
                      loc="What is the capital of France?", loc_ans="Paris")


FOUR_PEOPLE = [
    asked("Alice Varga", "Which city does Alice Varga live in?", "Where does Alice Varga live?", "Lisbon", "Oslo"),
    asked("Bram Olsen", "What instrument does Bram Olsen play?", "Which instrument is played by Bram Olsen?",
          "the cello", "the flute"),
    asked("Eve Janssen", "In which town does Eve Janssen reside?", "What town is Eve Janssen in?", "Milan", "Gent"),
    asked("Dirk Maas", "In which town was Dirk Maas born?", "Where was Dirk Maas born?", "Turin", "Ghent"),
]
# one fact asked in both wordings, which links "reside" to "live in" (`zsre.Relations`)
CARLA_TWICE = [
    asked("Carla Ruiz", "Which city does Carla Ruiz live in?", "Where does Carla Ruiz live?", "Rome", "Bern"),
    asked("Carla Ruiz", "In which town does Carla Ruiz reside?", "What town is Carla Ruiz in?", "Porto", "Bern"),
]


def written(records: list[ZsreRecord], path: Path) -> Path:
    """The records as a ZsRE file."""
    path.write_text("[" + ",".join(r.model_dump_json() for r in records) + "]")
    return path

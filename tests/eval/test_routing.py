"""The routing ablation's scoring: where prompts go, counted over all records and over the unambiguous ones."""
from __future__ import annotations

import pytest

from agentmem.editors import EditRequest
from agentmem.eval import routing
from agentmem.eval.counterfact import CounterFactRecord
from agentmem.eval.zsre import ZsreRecord
from tests.editors.conftest import one_thread, smollm  # noqa: F401  (fixtures)
from tests.eval.people import FOUR_PEOPLE, written


def record(subject: str, src: str, alt: str, rephrase: str) -> ZsreRecord:
    return ZsreRecord(subject=subject, src=src, alt=alt, rephrase=rephrase, loc=f"unrelated to {src}", loc_ans="-")


RECORDS = [
    record("NGC 6604", "Which constellation is NGC 6604 in?", "Andromeda", "Which constellation does NGC 6604 belong to?"),
    record("NGC 6604", "What constellation does NGC 6604 belong to?", "Pegasus", "What constellation is NGC 6604 a part of?"),
    record("Alice", "Where does Alice live?", "Lisbon", "What city is Alice in?"),
]


class Routes:
    """A stand-in editor that routes prompts by a table (None: the base model answers)."""

    def __init__(self, table: dict[str, int]) -> None:
        self.table = table

    def edits(self) -> list[EditRequest]:
        return [EditRequest(prompt=r.src, target=r.alt, id=str(i)) for i, r in enumerate(RECORDS)]

    def route(self, prompt: str) -> str | None:
        return str(self.table[prompt]) if prompt in self.table else None


def test_rephrases_are_also_scored_over_the_records_no_sibling_makes_ambiguous():
    # both NGC 6604 rephrases reach the first edit (one of them is its sibling's): only one target can answer
    table = {RECORDS[0].rephrase: 0, RECORDS[1].rephrase: 0, RECORDS[2].rephrase: 2, "When was Alice born?": 2}
    table |= {r.src: i for i, r in enumerate(RECORDS)}
    scores = routing.scores("table", Routes(table), RECORDS, ["Where does Bob live?"], ["When was Alice born?"])
    assert scores.prompts_routed == 1.0 and scores.rephrases_routed == 2 / 3
    assert (scores.unambiguous, scores.rephrases_routed_unambiguous) == (1, 1.0)
    assert (scores.other_subject_kept, scores.other_relation_kept, scores.unrelated_kept) == (1.0, 0.0, 1.0)
    table_text = routing.markdown([scores], "python -m agentmem.eval.routing --n 3", "tiny")
    assert "| table | 3 | 1.000 | 0.667 | 1: 1.000 | 1: 1.000 | 1: 0.000 | 1.000 |" in table_text



class Recorder:
    """A stand-in editor that keeps the requests it is given."""

    def __init__(self) -> None:
        self.requests: list[EditRequest] = []

    def edit(self, requests: list[EditRequest]) -> None:
        self.requests += requests


def test_edits_name_the_records_subject_only_when_asked():
    derived, given = Recorder(), Recorder()
    routing.edit_all(derived, RECORDS)
    routing.edit_all(given, RECORDS, given_subject=True)
    assert [r.subject for r in derived.requests] == [None] * 3
    assert [r.subject for r in given.requests] == ["NGC 6604", "NGC 6604", "Alice"]
    assert [r.prompt for r in given.requests] == [r.src for r in RECORDS]


def case(subject: str, prompt: str, neighbour: str) -> CounterFactRecord:
    return CounterFactRecord(subject=subject, src=prompt, alt="green", rephrase="-", loc=neighbour, loc_ans="blue",
                             true="blue", neighbourhood=(neighbour,))


# two relations, each in two templates that a neighbourhood prompt joins
CASES = [case("Alice", "Alice grew up speaking", "Carol's first language is"),
         case("Eve", "Eve was born in", "Hal's birthplace is"),
         case("Carol", "Carol's first language is", "Dan grew up speaking"),
         case("Gina", "Gina's birthplace is", "Frank was born in")]


def test_counterfact_neighbours_ask_the_subject_in_a_template_of_another_relation():
    other_subject, other_relation = routing.counterfact_neighbours(CASES[:2], CASES[3:1:-1], CASES)
    assert other_subject == ["Carol's first language is", "Hal's birthplace is"]
    assert other_relation == ["Alice's birthplace is", "Eve's first language is"]
    # the template beside it asks the same relation in other words: no neighbour
    assert routing.counterfact_neighbours(CASES[:2], CASES[2:], CASES)[1] == []


@pytest.mark.slow   # edits the bundled SmolLM2
def test_the_command_end_to_end_on_the_bundled_model(tmp_path, monkeypatch, smollm):
    """`main` on SmolLM2 with records read from a file: every signal row, the edits' own prompts routed to them,
    the neighbours of both kinds built from the records after the N edited, and the report written."""
    data = written(FOUR_PEOPLE, tmp_path / "zsre.json")
    monkeypatch.setattr(routing, "load_model", lambda: smollm)
    rows = routing.main(["--data", str(data), "--n", "2", "--margins", "0.1", "--relation-radii", "0.75",
                         "--benchmarks", str(tmp_path / "B.md")])
    signals = [name for name, _ in routing.variants([0.1], [0.75])] + ["GRACE key"]
    assert [row.signal for row in rows] == signals
    for row in rows:
        # other subject: Alice's question about Eve, Bram's about Dirk; other relation: Eve's about Alice, Dirk's about Bram
        assert (row.edits, row.other_subject, row.other_relation) == (2, 2, 2), row
        assert row.prompts_routed == row.other_subject_kept == row.unrelated_kept == 1.0, row
    *semantic, grace = rows
    # MiniLM's key reaches the edits from their rephrases, and also from "In which town does Alice Varga reside?":
    # her own relation in other words, which this file never links to "live in", so it counts as another relation
    assert all((row.rephrases_routed, row.other_relation_kept) == (1.0, 0.5) for row in semantic), semantic
    assert (grace.rephrases_routed, grace.other_relation_kept) == (0.0, 1.0)  # GRACE's key: the edit prompt only
    table = (tmp_path / "B.md").read_text()
    assert "## Routing signals for neighbourhood safety" in table and "--n 2" in table
    assert all(f"| {signal} | 2 |" in table for signal in signals)

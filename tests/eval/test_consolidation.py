"""The consolidation benchmark: its scores on a model we control, its report, its command line."""
from __future__ import annotations

import pytest

from agentmem.consolidation import parametric
from agentmem.eval import consolidation
from agentmem.eval.zsre import Relations, ZsreRecord
from tests.editors.conftest import one_thread, smollm, tiny_config, tiny_lm, tiny_tokenizer  # noqa: F401  (fixtures)
from tests.eval.people import CARLA_TWICE, FOUR_PEOPLE, written

RECORDS = [
    ZsreRecord(src="Alice lives in", alt="Lisbon", rephrase="Where does Alice live?",
               loc="What is the capital of Australia?", loc_ans="Canberra"),
    ZsreRecord(src="Bob lives in", alt="Oslo", rephrase="Where does Bob live?",
               loc="Who painted the Mona Lisa?", loc_ans="Leonardo da Vinci"),
    ZsreRecord(src="The sky is", alt="green", rephrase="What colour is the sky?",
               loc="How many legs does a spider have?", loc_ans="eight"),
]


def test_facts_go_from_notes_into_the_weights_and_forgotten_ones_revert(tmp_path, tiny_lm, tiny_config):
    scores = consolidation.run(tiny_lm, RECORDS, tmp_path / "mem", tiny_config)
    assert (scores.facts, scores.notes, scores.consolidated, scores.failed) == (3, 3, 3, 0)
    assert scores.recalled == 1.0 and scores.em_before == 0.0
    assert scores.em_after == scores.em_after_consolidated == 1.0 and scores.locality == 1.0
    assert (scores.forgotten, scores.reverted) == (1, 1) and scores.kept_after_forgetting == 1.0
    table = consolidation.markdown([scores], "python -m agentmem.eval.consolidation --n 3", "tiny-llama", "grace")
    assert scores.not_consolidated == {}
    assert "| 3 | 3 | 3 / 0 / 0 | - | 0.000 -> 1.000 | 1.000 |" in table and "`python -m agentmem.eval.consolidation --n 3`" in table
    assert table.rstrip().endswith(f"| {scores.job_seconds / 3:.2f} |")


def test_no_prompt_the_benchmark_scores_beyond_the_fact_s_own_reaches_the_editor(tmp_path, tiny_lm, tiny_config,
                                                                                   monkeypatch):
    """The editor may key a fact on the question forms it derives itself ("Where does Alice live?" from "Alice
    lives in"), never on the data's own rephrase, which the benchmark scores."""
    records = [r.model_copy(update={"rephrase": f"In other words: {r.rephrase}"}) for r in RECORDS]
    requests = []
    make_request = parametric.edit_request
    monkeypatch.setattr(parametric, "edit_request", lambda *args: requests.append(make_request(*args)) or requests[-1])
    consolidation.run(tiny_lm, records, tmp_path / "mem", tiny_config)
    assert requests
    scored = {r.rephrase for r in records} | {r.loc for r in records}
    assert not scored & {key for request in requests for key in (*request.rephrases, *request.neighbours)}


def test_the_report_gives_the_job_seconds_per_landed_fact_not_per_planned_one():
    scores = consolidation.ConsolidationScores(
        facts=500, notes=480, recalled=1.0, consolidated=40, known=0, failed=5, not_consolidated={"budget": 435},
        em_before=0.0, em_after=0.08, em_after_consolidated=0.9, rephrase_em_before=0.0, rephrase_em_after=0.01,
        locality=0.9, forgotten=4, reverted=4, kept_after_forgetting=0.9, job_seconds=600.0, edit_seconds_median=1.5)
    assert scores.seconds_per_consolidated == 15.0
    table = consolidation.markdown([scores], "--n 500", "tiny", "alphaedit")
    assert "| budget 435 |" in table and table.rstrip().endswith("| 600 (1.50) | 15.00 |")
    none = scores.model_copy(update={"consolidated": 0})
    assert none.seconds_per_consolidated != none.seconds_per_consolidated   # nan: no fact landed


def test_the_command_line_refuses_impossible_sizes(tmp_path):
    data = tmp_path / "zsre.json"
    data.write_text("[" + ",".join(r.model_dump_json() for r in RECORDS) + "]")
    with pytest.raises(SystemExit):
        consolidation.main(["--data", str(data), "--n", "4", "--benchmarks", ""])


def test_consistent_facts_leave_room_for_neighbours(tmp_path, capsys):
    data = tmp_path / "zsre.json"
    restated = RECORDS[0].model_copy(update={"subject": "Alice", "answers": ("Porto",), "alt": "Oslo"})
    records = [RECORDS[0].model_copy(update={"subject": "Alice", "answers": ("Porto",)}), restated, *RECORDS[1:]]
    data.write_text("[" + ",".join(r.model_dump_json() for r in records) + "]")
    with pytest.raises(SystemExit):   # 3 consistent records: at most 2 edited, one left to give neighbours
        consolidation.main(["--data", str(data), "--chat", "--consistent", "--n", "3", "--benchmarks", ""])
    assert "between 1 and 2, for the 3 records available" in capsys.readouterr().err


def test_neighbours_swap_subjects_both_ways_and_never_ask_an_edited_question():
    edited = [ZsreRecord(subject="Alice", src="Where does Alice live?", alt="Lisbon", rephrase="-", loc="-", loc_ans="-"),
              ZsreRecord(subject="Bob", src="Where does Bob live?", alt="Oslo", rephrase="-", loc="-", loc_ans="-")]
    others = [ZsreRecord(subject="Carol", src="When was Carol born?", alt="1990", rephrase="-", loc="-", loc_ans="-"),
              ZsreRecord(subject="Alice", src="Where does Alice live?", alt="Porto", rephrase="-", loc="-", loc_ans="-")]
    near = consolidation.neighbours(edited, others, Relations([*edited, *others]))
    assert near.other_subject == [("Where does Carol live?", "Lisbon")]   # Bob's question about Alice is Alice's own
    assert near.other_relation == [("When was Alice born?", "1990")]      # Alice's question about Bob: same relation
    assert near.same_relation == []                                       # ... worded alike, so not counted as left out


def test_a_wording_the_data_asks_of_one_fact_is_no_other_relation_neighbour():
    def record(subject: str, question: str, target: str, answer: str) -> ZsreRecord:
        return ZsreRecord(subject=subject, src=question, alt=target, answers=(answer,), rephrase="-", loc="-", loc_ans="-")

    edited = [record("Alice", "Where does Alice live?", "Lisbon", "Porto")]
    others = [record("Carol", "In which city does Carol reside?", "Oslo", "Rome")]
    linked = record("Dan", "In which city does Dan reside?", "Paris", "Turin")
    unlinked_before = consolidation.neighbours(edited, others, Relations([*edited, *others, linked]))
    assert unlinked_before.other_relation == [("In which city does Alice reside?", "Oslo")]
    same_fact = record("Dan", "Where does Dan live?", "Bern", "Turin")   # Dan's one fact, asked in both wordings
    linked_after = consolidation.neighbours(edited, others, Relations([*edited, *others, linked, same_fact]))
    assert linked_after.other_relation == []
    assert linked_after.same_relation == [("Where does Alice live?", "In which city does Alice reside?")]


def test_the_chat_report_gives_the_unambiguous_facts_em_next_to_all():
    scores = consolidation.ChatScores(
        facts=4, notes=4, consolidated=4, failed=0, not_consolidated={}, failures=[], chat_em_before=0.0,
        chat_em_after=0.5, chat_em_after_consolidated=0.5, unambiguous=2, chat_em_after_unambiguous=1.0,
        prompt_em_after=1.0, other_subject=4, other_subject_locality=1.0, other_relation=3, other_relation_locality=1.0,
        unrelated_locality=1.0, unrelated_token_locality=1.0, job_seconds=8.0, edit_seconds_median=2.0)
    table = consolidation.chat_markdown([scores], "python -m agentmem.eval.consolidation --chat --n 4", "tiny", "semantic")
    assert "| 4 | 4 | 4 / 0 | - | 0.000 -> 0.500 | 0.500 | 2: 1.000 | 1.000 | 4: 1.000 | 3: 1.000 (+0) |" in table
    table = consolidation.chat_markdown([scores.model_copy(update={"consistent": True})], "--consistent", "tiny", "semantic")
    assert "| 4 consistent | 4 | 4 / 0 |" in table


def test_the_chat_command_consolidates_on_smollm_and_reports_the_neighbours_it_left_out(
    tmp_path, monkeypatch, smollm
):
    """`--chat` end to end on the bundled model, with the records read from a file: two facts edited, one neighbour
    of each kind asked before and after, and the one other-relation question the file links to a fact left out."""
    data = written([*FOUR_PEOPLE, *CARLA_TWICE], tmp_path / "zsre.json")  # the first two are edited
    monkeypatch.setattr(consolidation, "load_model", lambda: smollm)
    rows = consolidation.main(["--data", str(data), "--chat", "--n", "2", "--editor", "semantic",
                               "--benchmarks", str(tmp_path / "B.md")])
    scores = rows[0]
    assert (scores.facts, scores.notes, scores.consolidated, scores.failed) == (2, 2, 2, 0)
    assert scores.prompt_em_after == 1.0
    # Alice's question about Eve, Bram's about Dirk; Dirk's about Bram is another relation, Eve's about Alice is not
    assert scores.other_subject == 2 and scores.other_relation == 1
    assert scores.same_relation == [("Which city does Alice Varga live in?", "In which town does Alice Varga reside?")]
    table = (tmp_path / "B.md").read_text()
    assert f"| {scores.other_relation}: {scores.other_relation_locality:.3f} (+{len(scores.same_relation)}) |" in table

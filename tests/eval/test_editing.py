"""The sequential editing benchmark: its scores on a model we control, its report, its command line."""
from __future__ import annotations

import json
import math

import pytest
import torch

from agentmem.editors import AlphaEditConfig, EmmetConfig, GraceConfig, GraceEditor, SemanticConfig, SemanticEditor
from agentmem.errors import InvalidInputError
from agentmem.eval import editing
from agentmem.eval.zsre import ZsreRecord, ambiguous, load_zsre
from tests.editors.conftest import one_thread, tiny_config, tiny_lm, tiny_tokenizer  # noqa: F401  (fixtures)

RECORDS = [
    ZsreRecord(src="Alice lives in", alt="Lisbon", rephrase="Where does Alice live?",
               loc="What is the capital of Australia?", loc_ans="Canberra"),
    ZsreRecord(src="Bob lives in", alt="Oslo", rephrase="Where does Bob live?",
               loc="Who painted the Mona Lisa?", loc_ans="Leonardo da Vinci"),
]


@pytest.mark.parametrize("edits", [1, 2])
def test_sequential_scores_on_a_tiny_model(tiny_lm, tiny_config, edits):
    before = tiny_lm.target_argmax([(r.src, r.alt) for r in RECORDS])
    scores = editing.sequential_scores(tiny_lm, lambda: GraceEditor(tiny_lm, tiny_config), RECORDS, edits, latency_prompts=1)
    assert scores.edits == edits and scores.records == 2
    assert scores.reliability == scores.reliability_em == scores.edit_success == 1.0
    assert scores.locality == 1.0
    assert 0 < scores.edit_seconds_median <= scores.edit_seconds_p95
    assert scores.generation_seconds_base > 0 and scores.generation_seconds_edited > 0
    assert tiny_lm.target_argmax([(r.src, r.alt) for r in RECORDS]) == before  # every editor was removed


def test_a_semantic_editor_scores_rephrasings_it_was_not_shown(tiny_lm):
    """No full stop after the target: the tiny random model does not learn two tokens in a value's steps, so with
    the default the edit itself fails verification and nothing is left to score."""
    config = SemanticConfig(layer=2, margin=0.0, stop=False)
    make = lambda: SemanticEditor(tiny_lm, config, unrelated=[r.loc for r in RECORDS])  # noqa: E731
    scores = editing.sequential_scores(tiny_lm, make, RECORDS, 2, latency_prompts=1)
    assert scores.reliability == scores.generalization == scores.generalization_em == 1.0
    assert scores.locality == 1.0


def test_token_accuracy_counts_positions(tiny_lm):
    pair = ("The sky is", "blue blue blue")
    predicted = tiny_lm.target_argmax([pair])[0]
    expected = tiny_lm.encode_pair(*pair)[1]
    share = sum(p == e for p, e in zip(predicted, expected)) / 3
    assert editing.token_accuracy(tiny_lm, [pair]) == [share]


def test_the_report_shows_the_command_each_t_and_the_published_row():
    row = editing.EditingScores(
        edits=10, records=100, reliability=1.0, generalization=0.3, locality=1.0, reliability_em=0.99,
        generalization_em=0.1, unambiguous=80, generalization_em_unambiguous=0.125, edit_success=1.0, edit_seconds_median=0.5, edit_seconds_p95=1.0,
        generation_seconds_base=0.2, generation_seconds_edited=0.21,
    )
    text = editing.markdown("grace", GraceConfig(epsilon=3.0), [row], "python -m agentmem.eval.editing --n 10", "smol")
    assert "`python -m agentmem.eval.editing --n 10`" in text
    assert "| 10 | 100 | 1.000 | 0.300 | 1.000 | 0.990 | 0.100 | 80: 0.125 / - / - | - / - / - | - (-) | 0.50 / 1.00 | 0.200 / 0.210 (1.05x) |" in text
    assert "| 1000 (GRACE, LLaMA-2-7B (published)) | | 0.93 | 0.08 | 1.00 |" in text


def test_a_counterfact_report_ends_with_the_counterfact_published_row_not_the_zsre_one():
    row = editing.EditingScores(
        edits=100, records=100, reliability=0.99, generalization=0.24, locality=0.88, reliability_em=0.99,
        generalization_em=0.19, unambiguous=100, generalization_em_unambiguous=0.19, edit_success=0.99, edit_seconds_median=0.3,
        edit_seconds_p95=0.3, generation_seconds_base=1.0, generation_seconds_edited=0.9, neighbourhood_score=0.61,
        neighbourhood_score_unedited=0.62,
    )
    args = ("alphaedit", AlphaEditConfig(), [row], "python -m agentmem.eval.editing --editor alphaedit", "smol")
    counterfact, zsre = editing.markdown(*args, "CounterFact"), editing.markdown(*args)
    assert "## Knowledge editing: alphaedit on CounterFact (smol)" in counterfact and "| 0.610 (0.620) |" in counterfact
    assert "| 0.99 | 0.94 | 0.68 |" in counterfact and "| 0.94 | 0.91 | 0.33 |" not in counterfact
    assert "## Knowledge editing: alphaedit on ZsRE (smol)" in zsre and "| 0.94 | 0.91 | 0.33 |" in zsre
    assert "(published" not in editing.markdown("emmet", EmmetConfig(), [row], "python -m agentmem.eval.editing", "smol")


def test_records_asking_about_one_subject_with_different_targets_are_ambiguous():
    def record(subject: str, alt: str) -> ZsreRecord:
        return RECORDS[0].model_copy(update={"subject": subject, "alt": alt})

    group = [record("X", "Lisbon"), record("X", " Lisbon "), record("Y", "Oslo"), record("Y", "Rome"), record("", "a"), record("", "b")]
    assert ambiguous(group) == [False, False, True, True, False, False]


def test_unambiguous_scores_leave_out_records_that_conflict(tiny_lm, tiny_config):
    records = [r.model_copy(update={"subject": "same"}) for r in RECORDS]
    scores = editing.sequential_scores(tiny_lm, lambda: GraceEditor(tiny_lm, tiny_config), records, 2, latency_prompts=1)
    assert scores.unambiguous == 0
    unscored = (scores.generalization_em_unambiguous, scores.generalization_natural_unambiguous,
                scores.generalization_natural_chat_unambiguous)
    assert all(math.isnan(score) for score in unscored)  # both records conflict: nothing to average
    scores = editing.sequential_scores(tiny_lm, lambda: GraceEditor(tiny_lm, tiny_config), records, 1, latency_prompts=1)
    assert scores.unambiguous == 2 and scores.generalization_em_unambiguous == scores.generalization_em
    assert scores.generalization_natural_unambiguous == scores.generalization_natural
    assert scores.generalization_natural_chat_unambiguous == scores.generalization_natural_chat


def test_zsre_records_load_with_a_limit(tmp_path):
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps([{**r.model_dump(), "subject": "x", "pred": "ignored"} for r in RECORDS]))
    assert load_zsre(path, limit=1) == [RECORDS[0].model_copy(update={"subject": "x"})]
    path.write_text(json.dumps([{"src": "no target"}]))
    with pytest.raises(InvalidInputError):
        load_zsre(path)
    with pytest.raises(InvalidInputError):
        load_zsre(tmp_path / "missing.json")


def test_data_sources_are_read_in_turn_from_their_start_and_restated_facts_left_out(tmp_path):
    first, second = tmp_path / "edit.json", tmp_path / "train.json"
    alice = RECORDS[0].model_copy(update={"subject": "Alice", "answers": ("Paris",)})
    restated = alice.model_copy(update={"src": "Where is Alice's home?", "alt": "Rome"})  # Alice's home, another target
    carol = RECORDS[1].model_copy(update={"subject": "Carol", "answers": ("Oslo",), "src": "Carol lives in"})
    first.write_text(json.dumps([r.model_dump() for r in (alice, restated)]))
    no_target = carol.model_copy(update={"subject": "Dan", "src": "Dan lives in", "alt": " "})
    second.write_text(json.dumps([r.model_dump() for r in (RECORDS[1], carol, no_target)]))
    sources = [editing.data_source(str(first)), editing.data_source(f"{second}:1")]
    assert sources == [(first, 0), (second, 1)]
    assert editing.read_records(load_zsre, sources, 10, only_consistent=False) == [alice, restated, carol]
    assert editing.read_records(load_zsre, sources, 10, only_consistent=True) == [alice, carol]
    assert editing.read_records(load_zsre, sources, 1, only_consistent=True) == [alice]


@pytest.mark.slow
@pytest.mark.parametrize(("editor", "config"), [("grace", {"epsilon": 3.6}), ("semantic", {"max_radius": 0.8})])
def test_the_command_line_writes_json_and_its_benchmarks_section(tmp_path, editor, config):
    data, out, bench = tmp_path / "zsre.json", tmp_path / "results.json", tmp_path / "BENCHMARKS.md"
    data.write_text(json.dumps([r.model_dump() for r in RECORDS]))
    unrelated = tmp_path / "unrelated.json"  # another file's loc questions: the scored ones stay unseen
    unrelated.write_text(json.dumps([r.model_copy(update={"loc": f"What is unrelated fact {i}?"}).model_dump()
                                     for i, r in enumerate(RECORDS)]))
    threads = torch.get_num_threads()
    editing.main([
        "--editor", editor, "--data", str(data), "--unrelated", str(unrelated), "--n", "1", "2", "--records", "2",
        "--latency-prompts", "0", "--config", json.dumps(config), "--out", str(out), "--benchmarks", str(bench),
    ])  # no timing: half of the run's time, and the tiny model's test times generation
    assert torch.get_num_threads() == threads
    result = json.loads(out.read_text())
    assert [r["edits"] for r in result["rows"]] == [1, 2] and result["config"].items() >= config.items()
    assert all(r["reliability"] == 1.0 for r in result["rows"])
    text = bench.read_text()
    assert f"<!-- begin editing-{editor} -->" in text and "--records 2" in text
    assert "| - (not timed) |" in text and result["rows"][0]["generation_seconds_base"] is None


def test_a_negative_count_of_timed_prompts_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        editing.main(["--data", str(tmp_path / "absent.json"), "--latency-prompts", "-1", "--benchmarks", ""])
    assert "not a whole number >= 0: '-1'" in capsys.readouterr().err


def test_template_paraphrases_are_refused_for_a_zsre_file(tmp_path, capsys):
    data = tmp_path / "zsre.json"
    data.write_text(json.dumps([r.model_dump() for r in RECORDS]))
    with pytest.raises(SystemExit):
        editing.main(["--data", str(data), "--paraphrases", "template", "--benchmarks", ""])
    assert "CounterFact files only" in capsys.readouterr().err


def test_the_file_of_unrelated_prompts_is_refused_as_data_unless_the_editors_keep_their_defaults(tmp_path, capsys):
    data = tmp_path / "zsre.json"
    data.write_text(json.dumps([r.model_dump() for r in RECORDS]))
    with pytest.raises(SystemExit):
        editing.main(["--data", f"{data}:1", "--unrelated", str(data), "--benchmarks", ""])
    assert "would also be scored" in capsys.readouterr().err


@pytest.mark.slow
def test_a_counterfact_run_with_template_paraphrases_scores_them_in_a_section_of_its_own(tmp_path):
    data, out, bench = tmp_path / "counterfact-edit.json", tmp_path / "results.json", tmp_path / "BENCHMARKS.md"
    cases = [("Danielle Darrieux", "The mother tongue of {} is", "Michel Rocard is a native speaker of"),
             ("Léon Blum", "{} is a native speaker of", "The mother tongue of Jacques Chirac is")]
    data.write_text(json.dumps([
        {"prompt": prompt.format(subject), "subject": subject, "target_new": "Latin", "ground_truth": "French",
         "rephrase_prompt": "Unrelated.", "locality_prompt": neighbour, "locality_ground_truth": "French"}
        for subject, prompt, neighbour in cases]))
    editing.main(["--editor", "semantic", "--data", str(data), "--paraphrases", "template", "--n", "2", "--records", "2",
                  "--config", '{"relation_radius": null}', "--latency-prompts", "0", "--out", str(out),
                  "--benchmarks", str(bench)])  # no relation gate: the subject routes a paraphrase to its edit
    [row] = json.loads(out.read_text())["rows"]
    assert row["records"] == 2 and row["generalization_natural"] > 0.0  # "Unrelated." would score 0
    text = bench.read_text()
    assert "<!-- begin editing-semantic-counterfact-templates -->" in text and "CounterFact, template paraphrases" in text

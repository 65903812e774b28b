"""The locate-and-edit tuning study: cached target states stand in for the search, exactly (tiny random LLaMA)."""
from __future__ import annotations

import pytest
import torch

from agentmem.editors import AlphaEditConfig, AlphaEditEditor, EditRequest
from agentmem.eval.locate_study import StudyConfig, cached_targets, requests_of, run_configuration
from agentmem.eval.zsre import ZsreRecord

from ..editors.conftest import tiny_lm, tiny_tokenizer  # noqa: F401 (fixtures)

TINY = {"layers": [0, 1], "sample_tokens": 256, "margin": 0.0, "clamp": 100.0, "value_steps": 60}
RECORDS = [
    ZsreRecord(subject=name, src=f"The home of {name}", alt=city, rephrase=f"Where {name} lives", loc="The sky is", loc_ans="blue")
    for name, city in (("Alice", "Lisbon"), ("Bob", "Oslo"), ("Carol", "Rome"), ("Dave", "Paris"))
]


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "home"))


def test_shelved_target_states_give_the_update_the_editors_own_search_gives(tiny_lm):
    requests = [EditRequest(prompt=r.src, target=r.alt, subject=r.subject, id=r.subject) for r in RECORDS[:2]]
    searching = AlphaEditEditor(tiny_lm, AlphaEditConfig(**TINY))
    searching.edit(requests)
    searched = {layer: searching.delta(layer).clone() for layer in (0, 1)}
    searching.remove()

    shelving = AlphaEditEditor(tiny_lm, AlphaEditConfig(**TINY))
    states, _ = shelving.search_targets(requests)
    for request, state in zip(requests, states):
        shelving.shelve(request, state)
    results = shelving.edit(requests)
    assert [r.steps for r in results] == [0, 0]  # no search ran
    for layer in (0, 1):
        assert torch.equal(shelving.delta(layer), searched[layer])


def test_a_configuration_reuses_the_cached_target_states_and_scores_every_record(tiny_lm, tmp_path):
    unedited_loc = tiny_lm.target_argmax([(r.loc, r.loc_ans) for r in RECORDS])
    study = StudyConfig(name="tiny", editor="alphaedit", config=TINY, ablate=True)
    first = run_configuration(tiny_lm, study, RECORDS, 2, unedited_loc, tmp_path)
    [cache] = tmp_path.glob("targets-top2-*.safetensors")
    written = cache.stat().st_mtime_ns
    again = run_configuration(tiny_lm, study.model_copy(update={"ablate": False}), RECORDS, 2, unedited_loc, tmp_path)
    assert cache.stat().st_mtime_ns == written
    assert (again.reliability, again.locality, again.update_norms) == (first.reliability, first.locality, first.update_norms)
    assert first.reliability >= 0.5 and first.verified >= 0.5
    assert set(first.ablation) == {0, 1} and not again.ablation
    assert all(rel < first.reliability for rel, _ in first.ablation.values())  # each layer carries a share of the edits

    editor = AlphaEditEditor(tiny_lm, AlphaEditConfig(**TINY))
    cached = cached_targets(editor, requests_of(RECORDS), tmp_path, 2)
    editor.remove()
    assert sorted(cached) == [f"record-{i}" for i in range(4)]


def test_a_wrong_target_state_or_layer_is_refused_and_changes_nothing(tiny_lm):
    from agentmem import InvalidInputError

    editor = AlphaEditEditor(tiny_lm, AlphaEditConfig(**TINY))
    request = EditRequest(prompt=RECORDS[0].src, target=RECORDS[0].alt, subject="Alice", id="Alice")
    editor.edit([request])
    edited = {layer: editor.delta(layer).clone() for layer in (0, 1)}
    for state in (torch.zeros(3), torch.full((tiny_lm.model.config.hidden_size,), float("nan"))):
        with pytest.raises(InvalidInputError):
            editor.shelve(request.model_copy(update={"id": "Bob"}), state)
    assert not editor.shelved
    with pytest.raises(InvalidInputError):
        with editor.layers_restored([0, 7]):
            pass
    assert all(torch.equal(editor.delta(layer), edited[layer]) for layer in (0, 1))
    editor.remove()

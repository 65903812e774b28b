"""The editor protocol: validated requests, wrapper injection and removal, ids, saved editors."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from agentmem.editors import Editor, EditRequest, GraceConfig, GraceEditor
from agentmem.editors.base import CONFIG_FILE, STATE_FILE
from agentmem.errors import InvalidInputError, StoreCorruptedError


def down_proj(lm, layer=2):
    return lm.model.model.layers[layer].mlp.down_proj


def logits(lm, prompt):
    with torch.no_grad():
        return lm.model(**lm.tokenizer(prompt, return_tensors="pt")).logits


@pytest.mark.parametrize("fields", [
    {"prompt": "", "target": "Lisbon"},
    {"prompt": "Alice lives in", "target": "  "},
    {"prompt": "Alice lives in"},
    {"prompt": "Alice lives in", "target": "Lisbon", "colour": "red"},
])
def test_malformed_requests_raise_our_error(fields):
    with pytest.raises(InvalidInputError):
        EditRequest(**fields)


@pytest.mark.parametrize("config", [GraceConfig(layer=4), GraceConfig(layer=-5), GraceConfig(layer=2, module="mlp.nope")])
def test_a_bad_place_raises_and_leaves_the_model_alone(tiny_lm, config):
    before = [type(m) for m in tiny_lm.model.modules()]
    with pytest.raises(InvalidInputError):
        GraceEditor(tiny_lm, config)
    assert [type(m) for m in tiny_lm.model.modules()] == before


def test_grace_refuses_a_module_that_is_not_linear(tiny_lm):
    with pytest.raises(InvalidInputError, match="linear"):
        GraceEditor(tiny_lm, GraceConfig(layer=2, module="mlp.act_fn"))


def test_config_errors_are_ours():
    with pytest.raises(InvalidInputError):
        GraceConfig(epsilon=-1.0)


def test_one_module_carries_one_editor(tiny_lm, tiny_config):
    GraceEditor(tiny_lm, tiny_config)
    with pytest.raises(InvalidInputError, match="already carries"):
        GraceEditor(tiny_lm, tiny_config)
    GraceEditor(tiny_lm, tiny_config.model_copy(update={"layer": 1}))  # another module is free


def test_remove_gives_back_the_untouched_model(tiny_lm, tiny_config):
    original, before = down_proj(tiny_lm), logits(tiny_lm, "Alice lives in")
    editor = GraceEditor(tiny_lm, tiny_config)
    editor.edit([EditRequest(prompt="Alice lives in", target="Lisbon")])
    assert not torch.equal(logits(tiny_lm, "Alice lives in"), before)
    editor.remove()
    assert down_proj(tiny_lm) is original
    assert torch.equal(logits(tiny_lm, "Alice lives in"), before)
    with pytest.raises(InvalidInputError, match="removed"):
        editor.edit([EditRequest(prompt="Alice lives in", target="Lisbon")])
    GraceEditor(tiny_lm, tiny_config)  # the module is free again


def test_edits_get_ids_and_are_listed_in_order(tiny_lm, tiny_config):
    editor = GraceEditor(tiny_lm, tiny_config)
    results = editor.edit([
        EditRequest(prompt="Alice lives in", target="Lisbon", id="alice"),
        EditRequest(prompt="Bob lives in", target="Oslo"),
    ])
    assert results[0].edit_id == "alice" and results[1].edit_id
    assert [e.id for e in editor.edits()] == [r.edit_id for r in results]
    assert [e.target for e in editor.edits()] == ["Lisbon", "Oslo"]


@pytest.mark.parametrize("ids", [["a", "a"], ["a", "live"]])
def test_clashing_ids_apply_nothing(tiny_lm, tiny_config, ids):
    editor = GraceEditor(tiny_lm, tiny_config)
    editor.edit([EditRequest(prompt="The sky is", target="blue", id="live")])
    with pytest.raises(InvalidInputError):
        editor.edit([EditRequest(prompt="Alice lives in", target="Lisbon", id=i) for i in ids])
    assert [e.id for e in editor.edits()] == ["live"]
    assert not editor.covers("Alice lives in")


def test_rolling_back_an_unknown_edit_changes_nothing(tiny_lm, tiny_config):
    editor = GraceEditor(tiny_lm, tiny_config)
    editor.edit([EditRequest(prompt="Alice lives in", target="Lisbon", id="alice")])
    with pytest.raises(InvalidInputError, match="no edit"):
        editor.rollback("bob")
    assert [e.id for e in editor.edits()] == ["alice"] and editor.covers("Alice lives in")


def test_edit_takes_requests_only(tiny_lm, tiny_config):
    editor = GraceEditor(tiny_lm, tiny_config)
    with pytest.raises(InvalidInputError):
        editor.edit([{"prompt": "Alice lives in", "target": "Lisbon"}])


def test_editor_load_finds_the_saved_kind(tiny_lm, tiny_config, tmp_path):
    editor = GraceEditor(tiny_lm, tiny_config)
    editor.edit([EditRequest(prompt="Alice lives in", target="Lisbon", id="alice")])
    editor.save(tmp_path)
    editor.remove()
    loaded = Editor.load(tiny_lm, tmp_path)
    assert isinstance(loaded, GraceEditor) and [e.id for e in loaded.edits()] == ["alice"]
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["model"] == "tiny-llama"


def test_loading_nothing_or_a_foreign_kind_raises(tiny_lm, tiny_config, tmp_path):
    with pytest.raises(InvalidInputError, match="no saved editor"):
        GraceEditor.load(tiny_lm, tmp_path)
    GraceEditor(tiny_lm, tiny_config).save(tmp_path)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**meta, "kind": "no-such-editor"}))
    with pytest.raises(InvalidInputError, match="no-such-editor"):
        Editor.load(tiny_lm, tmp_path)


def test_a_save_whose_files_are_gone_is_damaged_and_one_whose_layer_this_model_lacks_does_not_fit(
        tiny_lm, tiny_config, tmp_path):
    GraceEditor(tiny_lm, tiny_config).save(tmp_path)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**meta, "config": {**meta["config"], "layer": 999}}))
    with pytest.raises(InvalidInputError, match="does not fit this model.*layer.*move it aside"):
        Editor.load(tiny_lm, tmp_path)
    (tmp_path / CONFIG_FILE).unlink()
    with pytest.raises(StoreCorruptedError, match="damaged"):
        Editor.load(tiny_lm, tmp_path)


def test_a_save_from_another_model_does_not_load(tiny_lm, tiny_config, tiny_tokenizer, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from agentmem.models import LanguageModel

    editor = GraceEditor(tiny_lm, tiny_config)
    editor.edit([EditRequest(prompt="Alice lives in", target="Lisbon")])
    editor.save(tmp_path)
    wider = LanguageModel(LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2,
    )), tiny_tokenizer, name="other")
    with pytest.raises(InvalidInputError, match="does not fit"):
        Editor.load(wider, tmp_path)
    assert isinstance(down_proj(wider), nn.Linear)  # the failed load took its wrapper out again


# Ways a saved editor.json can be damaged, each a change of the saved metadata into the file's new text.
DAMAGE = {
    "edit without id": lambda m: json.dumps({**m, "edits": [{k: v for k, v in e.items() if k != "id"} for e in m["edits"]]}),
    "edit with an empty target": lambda m: json.dumps({**m, "edits": [{**e, "target": ""} for e in m["edits"]]}),
    "edits twice": lambda m: json.dumps({**m, "edits": m["edits"] * 2}),
    "edits not a list": lambda m: json.dumps({**m, "edits": 3}),
    "no config": lambda m: json.dumps({k: v for k, v in m.items() if k != "config"}),
    "an unknown config field": lambda m: json.dumps({**m, "config": {**m["config"], "colour": "red"}}),
    "no kind": lambda m: json.dumps({k: v for k, v in m.items() if k != "kind"}),
    "a list": lambda m: json.dumps([m]),
    "not json": lambda m: '{"kind": "grace",',
    "fewer owners than entries": lambda m: json.dumps({**m, "state": {**m["state"], "owners": []}}),
    "a state record missing": lambda m: json.dumps({**m, "state": {k: v for k, v in m["state"].items() if k != "uids"}}),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_save_raises_our_error_and_leaves_the_model_unedited(tiny_lm, tiny_config, tmp_path, damage):
    before = logits(tiny_lm, "Alice lives in")
    editor = GraceEditor(tiny_lm, tiny_config)
    editor.edit([EditRequest(prompt="Alice lives in", target="Lisbon", id="alice")])
    editor.save(tmp_path)
    editor.remove()
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(DAMAGE[damage](meta))
    with pytest.raises(StoreCorruptedError, match="restore a backup"):
        Editor.load(tiny_lm, tmp_path)
    assert isinstance(down_proj(tiny_lm), nn.Linear) and torch.equal(logits(tiny_lm, "Alice lives in"), before)
    GraceEditor(tiny_lm, tiny_config)  # the module is free for a new editor


def test_a_damaged_state_file_raises_our_error(tiny_lm, tiny_config, tmp_path):
    editor = GraceEditor(tiny_lm, tiny_config)
    editor.save(tmp_path)
    editor.remove()
    (tmp_path / STATE_FILE).write_bytes(b"garbage")
    with pytest.raises(StoreCorruptedError):
        Editor.load(tiny_lm, tmp_path)
    assert isinstance(down_proj(tiny_lm), nn.Linear)


def test_editing_and_generating_use_the_cache_under_its_current_name(tiny_lm, tiny_config, monkeypatch):
    """transformers 5.24 warns on every process that reads or passes `past_key_values`: a user of
    `Memory.answer` saw that warning on stderr at the editor's first load."""
    import transformers.utils.generic

    warned = []
    monkeypatch.setattr(transformers.utils.generic.logger, "warning_once", lambda message, *a, **k: warned.append(message))
    editor = GraceEditor(tiny_lm, tiny_config)  # keys its calibration prompts through a cached prefix
    editor.edit([EditRequest(prompt="Alice lives in", target="Lisbon")])
    tiny_lm.generate("Alice lives in", max_new_tokens=3)
    tiny_lm.target_argmax([("Alice lives in", "Lisbon")])
    assert not [message for message in warned if "past_key_values" in str(message)]

"""MEMIT on the real SmolLM2: facts in one batch come out, survive save/load, and leave with remove()."""
from __future__ import annotations

import pytest

from agentmem.editors import Editor, EditRequest, MemitConfig, MemitEditor

from ..conftest import SHARED_DATA
from .conftest import answer
from .test_inplace import weights_hash

pytestmark = pytest.mark.usefixtures("private_home")  # key statistics are cached in this session's home

CORPUS = SHARED_DATA / "zsre" / "zsre_mend_train-1k.json"
FACTS = [
    EditRequest(prompt="Danielle Darrieux's mother tongue is", target="Swedish", id="darrieux"),
    EditRequest(prompt="The Eiffel Tower is located in the city of", target="Rome", subject="Eiffel Tower", id="eiffel"),
]


@pytest.mark.slow
def test_a_batch_of_facts_comes_out_and_survives_save_load_and_removal(smollm, tmp_path):
    if not CORPUS.is_file():
        pytest.skip(f"the statistics corpus {CORPUS} is absent (the shared data folder)")
    # Statistics from 8k tokens of a text file: a forward only, where sampling text from the model takes minutes.
    config = MemitConfig(sample_tokens=0, corpus=str(CORPUS), corpus_tokens=8192)
    original = weights_hash(smollm)
    assert [answer(smollm, f.prompt, f.target) for f in FACTS] != [f.target for f in FACTS]
    editor = MemitEditor(smollm, config)
    try:
        results = editor.edit(FACTS)
        assert all(r.success for r in results)
        assert [answer(smollm, f.prompt, f.target) for f in FACTS] == [f.target for f in FACTS]
        assert editor.covers("What language did Danielle Darrieux speak?")
        edited = weights_hash(smollm)
        editor.save(tmp_path / "edits")
    finally:
        editor.remove()
    assert weights_hash(smollm) == original
    loaded = Editor.load(smollm, tmp_path / "edits")
    try:
        assert weights_hash(smollm) == edited
        assert [answer(smollm, f.prompt, f.target) for f in FACTS] == [f.target for f in FACTS]
    finally:
        loaded.remove()
    assert weights_hash(smollm) == original

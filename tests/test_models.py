"""The local language model: loading (GGUF dequantized once, then cached), generation, teacher forcing."""
from __future__ import annotations

import threading

import pytest
import torch

from agentmem.editors import EditRequest, GraceEditor
from agentmem.errors import InvalidInputError, ModelUnavailableError
from agentmem.models import MAX_PROMPT_TOKENS, _dequantized_checkpoint, agentmem_home, bundled_gguf_path, load_model
from tests.editors.conftest import tiny_config, tiny_lm, tiny_tokenizer  # noqa: F401  (fixtures)

PAIRS = [("Alice lives in", "Lisbon"), ("The sky is", "blue blue blue"), ("What is the capital of Australia?", "Canberra")]


def test_a_batch_generates_what_each_prompt_generates_alone(tiny_lm):
    prompts = [p for p, _ in PAIRS]
    assert tiny_lm.generate_batch(prompts, max_new_tokens=4) == [tiny_lm.generate(p, max_new_tokens=4) for p in prompts]


def test_generation_refuses_an_empty_prompt(tiny_lm):
    with pytest.raises(InvalidInputError):
        tiny_lm.generate("", max_new_tokens=2)


def test_a_prompt_longer_than_the_local_model_takes_is_refused_before_it_runs(tiny_lm):
    """A chat of 20,000 characters held the model, and a server's lane behind it, for minutes."""
    words = " ".join(f"word{i}" for i in range(MAX_PROMPT_TOKENS))
    with pytest.raises(InvalidInputError, match=f"at most {MAX_PROMPT_TOKENS}"):
        tiny_lm.reply([{"role": "user", "content": words}], max_new_tokens=1)
    with pytest.raises(InvalidInputError, match="tokens"):
        tiny_lm.generate(words, max_new_tokens=1)
    assert tiny_lm.generate(" ".join(words.split()[:100]), max_new_tokens=1) is not None


def test_a_pair_splits_where_the_prompt_ends(tiny_lm):
    for prompt, target in PAIRS:
        prompt_ids, target_ids = tiny_lm.encode_pair(prompt, target)
        assert prompt_ids + target_ids == tiny_lm.tokenizer(prompt + " " + target).input_ids
        assert tiny_lm.tokenizer.decode(target_ids).strip() == target
    with pytest.raises(InvalidInputError):
        tiny_lm.encode_pair("Alice lives in", " ")


def test_teacher_forcing_through_the_cache_matches_one_full_forward(tiny_lm):
    expected = []
    for prompt, target in PAIRS:
        prompt_ids, target_ids = tiny_lm.encode_pair(prompt, target)
        with torch.no_grad():
            out = tiny_lm.model(torch.tensor([prompt_ids + target_ids])).logits[0]
        expected.append(out[len(prompt_ids) - 1 : -1].argmax(-1).tolist())
    assert tiny_lm.target_argmax(PAIRS) == expected


def test_the_cache_folder_follows_agentmem_home(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path))
    assert agentmem_home() == tmp_path


def test_no_model_at_a_path_raises(tmp_path):
    with pytest.raises(ModelUnavailableError):
        load_model(tmp_path / "missing")


@pytest.mark.slow
def test_the_bundled_model_loads_once_and_answers():
    lm = load_model()
    assert load_model() is lm
    assert lm.model.config.model_type == "llama" and lm.model.config.num_hidden_layers == 30
    assert "Paris" in lm.generate("The capital of France is", max_new_tokens=4)
    assert "Paris" in lm.generate("What is the capital of France?", max_new_tokens=12, chat=True)
    assert not any(p.requires_grad for p in lm.model.parameters())


@pytest.mark.slow
def test_the_dequantized_checkpoint_is_written_once_and_loads_on_its_own():
    load_model()
    checkpoint = _dequantized_checkpoint(bundled_gguf_path())
    written = (checkpoint / "model.safetensors").stat().st_mtime_ns
    assert _dequantized_checkpoint(bundled_gguf_path()) == checkpoint
    assert (checkpoint / "model.safetensors").stat().st_mtime_ns == written
    assert "quantization_config" not in (checkpoint / "config.json").read_text()
    plain = load_model(checkpoint)
    assert plain is not load_model()
    prompt = "The capital of France is"
    assert plain.generate(prompt, max_new_tokens=6) == load_model().generate(prompt, max_new_tokens=6)


def test_a_scope_holds_inside_its_block_only_and_is_checked(tiny_lm):
    assert tiny_lm.scopes == frozenset()
    with tiny_lm.scoped("user:alice"):
        assert tiny_lm.scopes == {"user:alice"}
        with tiny_lm.scoped(["user:bob", "agent:x"]):
            assert tiny_lm.scopes == {"user:bob", "agent:x"}
        assert tiny_lm.scopes == {"user:alice"}
    assert tiny_lm.scopes == frozenset()
    with pytest.raises(InvalidInputError):
        with tiny_lm.scoped(["user:alice", ""]):
            pass
    assert tiny_lm.scopes == frozenset()


def test_a_scope_is_the_calling_threads_own(tiny_lm):
    seen = []
    with tiny_lm.scoped("user:alice"):
        other = threading.Thread(target=lambda: seen.append(tiny_lm.scopes))
        other.start()
        other.join()
        assert tiny_lm.scopes == {"user:alice"}
    assert seen == [frozenset()]


def test_two_threads_generating_for_two_users_fire_only_their_own_edits(tiny_lm, tiny_config):
    editor = GraceEditor(tiny_lm, tiny_config)
    try:
        [result] = editor.edit([EditRequest(prompt="Alice lives in", target="Lisbon", scope="user:alice")])
        assert result.success
        alone = {scope: tiny_lm.generate("Alice lives in", 2, scope=scope) for scope in ("user:alice", "user:bob")}
        assert "Lisbon" in alone["user:alice"] and "Lisbon" not in alone["user:bob"]
        said: dict[str, list[str]] = {scope: [] for scope in alone}

        def ask(scope: str) -> None:
            for _ in range(40):
                said[scope].append(tiny_lm.generate("Alice lives in", 2, scope=scope))

        threads = [threading.Thread(target=ask, args=(scope,)) for scope in alone]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert {scope: set(texts) for scope, texts in said.items()} == {scope: {text} for scope, text in alone.items()}
        assert tiny_lm.scopes == frozenset()
    finally:
        editor.remove()


def test_a_model_without_a_chat_template_gets_plain_role_lines(tiny_lm):
    prompt = tiny_lm.chat_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}])
    assert prompt == "system: Be brief.\nuser: Hi?\nassistant:"
    assert tiny_lm.last_user_message(prompt) is None
    with pytest.raises(InvalidInputError):
        tiny_lm.reply([{"role": "user", "content": ""}])


@pytest.mark.slow
def test_the_last_user_message_is_found_whatever_came_before():
    lm = load_model()
    chat = [{"role": "system", "content": "Notes:\n- Alice lives in Lisbon"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Where does Alice live?"}]
    assert lm.last_user_message(lm.chat_prompt(chat)) == "Where does Alice live?"
    assert lm.last_user_message(lm.chat_prompt(chat[-1:])) == "Where does Alice live?"
    assert lm.last_user_message("Alice lives in") is None

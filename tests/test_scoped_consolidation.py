"""Scoped parametric memory end to end on SmolLM2: a user's consolidated fact comes out for that user only,
through `answer`, `MemoryChat` and a scoped `generate`; a shared fact for everyone; retraction per scope."""
from __future__ import annotations

from datetime import timedelta

import pytest

from agentmem import Memory
from agentmem.consolidation import ConsolidationPolicy
from agentmem.integrations.chat import MemoryChat
from tests.conftest import T0
from tests.editors.conftest import one_thread, one_torch_thread, smollm  # noqa: F401 (fixtures; one torch thread)

LATER = T0 + timedelta(days=1)
POLICY = ConsolidationPolicy(min_recalls=0, stable_for=timedelta(0))


def says(text: str, target: str) -> bool:
    return text.strip().casefold().startswith(target.casefold())


@pytest.fixture(scope="module")
def consolidated(smollm, tmp_path_factory, embedder):
    """One store: Alice's locker code and Bob's (same prompt), Alice's city, and a fact all users share."""
    mem = Memory(tmp_path_factory.mktemp("scoped") / "mem", embedder=embedder, model=smollm, editor="semantic",
                 policy=POLICY)
    notes = {
        "alice_code": mem.remember("Alice's locker code is 4471", user_id="alice", at=T0),
        "bob_code": mem.remember("Alice's locker code is 9032", user_id="bob", at=T0),
        "alice_city": mem.remember("Alice lives in Lisbon", user_id="alice", at=T0),
        "shared": mem.remember("The office wifi password is Falcon", user_id="carol", metadata={"shared": True}, at=T0),
    }
    with one_torch_thread():
        report = mem.consolidate(at=LATER)
    yield mem, notes, report
    mem.close()


@pytest.mark.slow
def test_each_fact_goes_in_under_its_owners_scope(consolidated):
    mem, notes, report = consolidated
    assert report.applied == 4, [(d.fact, d.outcome, d.detail) for d in report.decisions]
    scopes = mem._ledger.scopes()  # noqa: SLF001 (the test reads the ledger's own record)
    by_note = {e.note_id: scopes[e.edit_id] for e in mem.ledger() if e.status == "applied"}
    assert by_note == {notes["alice_code"].id: "user:alice", notes["bob_code"].id: "user:bob",
                       notes["alice_city"].id: "user:alice", notes["shared"].id: None}


@pytest.mark.slow
def test_alices_fact_comes_out_for_alice_and_never_for_bob(consolidated, smollm):
    mem, _, _ = consolidated
    for question in ("Alice lives in", "Where does Alice live?", "What city is Alice in?",
                     "Bob called me this morning. Where does Alice live?"):
        mine = mem.answer(question, user_id="alice", retrieval=False)
        theirs = mem.answer(question, user_id="bob", retrieval=False)
        nobody = mem.answer(question, retrieval=False)
        assert mine.source == "weights" and says(mine.text, "Lisbon"), (question, mine)
        assert theirs.source != "weights" and "Lisbon" not in theirs.text, (question, theirs)
        assert nobody.source != "weights" and "Lisbon" not in nobody.text
    assert "Lisbon" in smollm.generate("Where does Alice live?", 8, chat=True, scope="user:alice")
    assert "Lisbon" not in smollm.generate("Where does Alice live?", 8, chat=True, scope="user:bob")
    assert "Lisbon" not in smollm.generate("Where does Alice live?", 8, chat=True)
    with smollm.scoped("user:alice"):
        assert "Lisbon" in smollm.generate("Alice lives in", 4)


@pytest.mark.slow
def test_memory_chat_fires_the_users_own_edits_only(consolidated):
    mem, _, _ = consolidated
    alice = MemoryChat(mem, user_id="alice", k=1)
    bob = MemoryChat(mem, user_id="bob", k=1)
    # retrieval finds the users' own notes too; closed book is `answer(retrieval=False)`, checked above
    assert "Lisbon" in alice.reply("What city is Alice in?", at=LATER).text
    assert "Lisbon" not in bob.reply("What city is Alice in?", at=LATER).text


@pytest.mark.slow
def test_same_prompt_two_users_two_answers_and_a_shared_fact_for_all(consolidated):
    mem, _, _ = consolidated
    assert says(mem.answer("What is Alice's locker code?", user_id="alice", retrieval=False).text, "4471")
    assert says(mem.answer("What is Alice's locker code?", user_id="bob", retrieval=False).text, "9032")
    for user in ("alice", "bob", "dave", None):
        reply = mem.answer("What is the office wifi password?", user_id=user, retrieval=False)
        assert reply.source == "weights" and says(reply.text, "Falcon"), (user, reply)


@pytest.mark.slow
def test_retracting_alices_edit_leaves_bobs_same_prompt_edit(consolidated):
    mem, notes, _ = consolidated
    mem.forget(notes["alice_code"].id)
    assert "4471" not in mem.answer("What is Alice's locker code?", user_id="alice", retrieval=False).text
    assert says(mem.answer("What is Alice's locker code?", user_id="bob", retrieval=False).text, "9032")
    assert says(mem.answer("Where does Alice live?", user_id="alice", retrieval=False).text, "Lisbon")


@pytest.mark.slow
def test_a_fact_whose_note_stops_being_shared_stops_firing_for_others_at_once(consolidated):
    mem, notes, _ = consolidated
    mem.update(notes["shared"].id, metadata={"shared": False}, at=LATER)
    for user in ("alice", "dave", None):  # not at the next job: now
        reply = mem.answer("What is the office wifi password?", user_id=user, retrieval=False)
        assert reply.source != "weights" and "Falcon" not in reply.text, (user, reply)
    assert [e.status for e in mem.ledger(notes["shared"].id)] == ["retracted"]
    with one_torch_thread():
        assert mem.consolidate(at=LATER + timedelta(hours=1)).applied == 1  # again, in its owner's scope
    assert says(mem.answer("What is the office wifi password?", user_id="carol", retrieval=False).text, "Falcon")
    assert "Falcon" not in mem.answer("What is the office wifi password?", user_id="dave", retrieval=False).text

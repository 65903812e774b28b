"""`forget` leaves no trace: after forget and close, no file under the store holds the note's
text, its own words, its id or its metadata -- searched byte by byte."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from agentmem import Memory

from .conftest import T0

SECRET_TEXT = "Quentin hid the zylophrax keycard under the marmoset statue"
SECRET_WORDS = ["zylophrax", "marmoset", "keycard"]
SECRET_META = {"vaultcode": "pelicanXJ9"}


def store_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.rglob("*") if p.is_file())


def traces(path: Path, needles: list[str]) -> list[str]:
    """Needles found in any file, in UTF-8 or in SQLite FTS's lower-cased form."""
    data = store_bytes(path)
    return [n for n in needles if n.encode() in data or n.lower().encode() in data]


def test_forget_leaves_no_trace_in_any_file(tmp_path, embedder):
    path = tmp_path / "m"
    with Memory(path, embedder=embedder) as mem:
        for i in range(30):  # a store with some life in it
            mem.remember(f"Quentin's note number {i} is about the garden and the weather", user_id="quentin", at=T0)
        neighbour = mem.remember("Quentin guards the statue in the garden hall", user_id="quentin", at=T0)
        secret = mem.remember(SECRET_TEXT, user_id="quentin", at=T0 + timedelta(minutes=1),
                              metadata=SECRET_META, tags=["hidden"])
        absorbed = set(mem.get(neighbour.id).keywords) - set(neighbour.keywords)
        assert absorbed & set(SECRET_WORDS), "the neighbour absorbed the secret's words (the case to undo)"
        assert any(change == f"evolved:{secret.id}" for _, change, _ in mem.history(neighbour.id))
        mem.update(secret.id, text=SECRET_TEXT + " near the fountain", at=T0 + timedelta(minutes=2))
        mem.recall("zylophrax keycard", user_id="quentin", at=T0 + timedelta(minutes=3))
        assert traces(path, [SECRET_WORDS[0], secret.id]) != []  # the search can find them while they exist

        remaining = mem.stats().notes - 1
        mem.forget(secret.id)
        for hit in mem.recall("zylophrax marmoset keycard", user_id="quentin", at=T0):
            assert not set(SECRET_WORDS) & {*hit.note.keywords, *hit.note.text.lower().split()}
            assert hit.why.lexical == 0  # no note matches the forgotten words any more
        assert not set(SECRET_WORDS) & set(mem.get(neighbour.id).keywords)
        assert all(secret.id not in change for _, change, _ in mem.history(neighbour.id))
        mem.export(tmp_path / "export.jsonl")
    assert not set(SECRET_WORDS) & set((tmp_path / "export.jsonl").read_text().lower().split())
    assert traces(path, [*SECRET_WORDS, secret.id, *SECRET_META.values(), "fountain"]) == []
    with Memory(path, embedder=embedder) as reopened:
        assert reopened.stats().notes == remaining


def test_forgetting_an_updated_note_removes_its_history(memory):
    note = memory.remember("Rosa's locker is number 12", at=T0)
    memory.update(note.id, text="Rosa's locker is number 14", at=T0 + timedelta(hours=1))
    memory.forget(note.id)
    with memory._graph.connection as db:
        assert db.execute("SELECT COUNT(*) FROM history").fetchone()[0] == 0

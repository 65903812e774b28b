"""`forget` leaves no trace: after forget and close, no file under the store holds the note's
text, its own words, its id or its metadata -- searched byte by byte."""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from agentmem import Memory
from agentmem.errors import NoteNotFoundError

from .conftest import T0

SECRET_TEXT = "Quentin hid the zylophrax keycard under the marmoset statue"
SECRET_WORDS = ["zylophrax", "marmoset", "keycard"]
SECRET_META = {"vaultcode": "pelicanXJ9"}


def traces(path: Path, needles: list[str]) -> list[str]:
    """Needles found in any file, in UTF-8 or in SQLite FTS's lower-cased form, each as "needle in file"."""
    files = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    return [f"{n} in {p.relative_to(path)}" for n in needles for p, data in files.items()
            if n.encode() in data or n.lower().encode() in data]


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


# ---- a session's later notes are searched by a mix that held the note -------------------------

SESSION = [
    "Ulrike keeps the shed key near the garden gate",
    "Zanzibar-7731 is my PIN for the garden shed lockbox",
    "Yes, the lockbox is by the shed door",
    "And the spare key is with my neighbour",
]


def searched(mem: Memory, note_ids: list[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The notes' own embeddings and the vectors they are searched by, as the note store holds them."""
    loaded = mem._graph.load(note_ids, links=False)
    return mem._graph.own_embeddings(note_ids), {i: vector for i, (_, vector) in loaded.items()}


def mixed(own: np.ndarray, previous: np.ndarray, weight: float) -> np.ndarray:
    vector = own + weight * previous
    return vector / np.linalg.norm(vector)


def assert_searched_as_mixed(mem: Memory, chain: list[str], query: str) -> None:
    """Each note of `chain` (a session in order) is searched, in the store and in the index, by its own
    embedding mixed with the searched vector of the note before it, as if no other note had been there."""
    own, stored = searched(mem, chain)
    weight = mem.config.context_weight
    np.testing.assert_allclose(stored[chain[0]], own[chain[0]], atol=1e-6)  # the first: its own, unmixed
    expected = {chain[0]: stored[chain[0]]}
    for previous, note_id in zip(chain, chain[1:]):
        expected[note_id] = mixed(own[note_id], expected[previous], weight)
        np.testing.assert_allclose(stored[note_id], expected[note_id], atol=1e-6)
    query_vector = mem._embed([query])[0]
    dense = {h.note.id: h.why.similarity for h in mem.recall(query, user_id="ulrike", k=10, reinforce=False)}
    for note_id in chain:  # the index's similarity: its vector was written again too
        assert dense[note_id] == pytest.approx(float(expected[note_id] @ query_vector), abs=1e-5)


def test_forget_takes_the_note_out_of_the_vectors_of_its_session_s_later_notes(memory_location, embedder):
    """Review s11 F1: the next note of the session was searched by its own vector plus half the
    forgotten one's, which gave the forgotten text back at cosine 1.0 and ranked it first for it."""
    with Memory(**memory_location(), embedder=embedder) as mem:
        notes = [mem.remember(text, user_id="ulrike", session_id="s1", at=T0 + timedelta(minutes=i))
                 for i, text in enumerate(SESSION)]
        other = mem.remember("Ulrike's bicycle is blue", user_id="ulrike", at=T0)
        _, before = searched(mem, [n.id for n in notes])
        mem.forget(notes[1].id)
        kept = [notes[0].id, notes[2].id, notes[3].id]
        assert_searched_as_mixed(mem, kept, SESSION[1])
        _, after = searched(mem, kept + [other.id])
        assert not np.allclose(after[notes[2].id], before[notes[2].id])
        mem.forget(notes[0].id)  # the session's first: the next one is now first, searched by its own
        assert_searched_as_mixed(mem, kept[1:], SESSION[1])
    with Memory(**memory_location(), embedder=embedder) as reopened:
        assert reopened.stats().pending_sync == 0


def test_an_update_of_the_text_mixes_the_new_text_into_the_session_s_later_notes(memory_location, embedder):
    """An update re-embedded the note alone: its followers kept the vector of the text it had before,
    which its forget would then leave behind although its history is gone."""
    with Memory(**memory_location(), embedder=embedder) as mem:
        notes = [mem.remember(text, user_id="ulrike", session_id="s1", at=T0 + timedelta(minutes=i))
                 for i, text in enumerate(SESSION)]
        mem.update(notes[1].id, text="My PIN for the lockbox is in the blue notebook", at=T0 + timedelta(hours=1))
        assert_searched_as_mixed(mem, [n.id for n in notes], SESSION[1])
        mem.update(notes[0].id, text="Ulrike keeps the shed key under the doormat", at=T0 + timedelta(hours=1))
        assert_searched_as_mixed(mem, [n.id for n in notes], SESSION[1])


# ---- rows that could not be read ---------------------------------------------------------------


def test_a_quarantined_note_is_forgotten_with_its_text_and_its_session_s_mix(memory_location, embedder):
    """Review s11 F5: a note set aside as unreadable could not be forgotten (NoteNotFoundError), and
    `quarantined()` kept returning its text."""
    location = memory_location()
    with Memory(**location, embedder=embedder) as mem:
        notes = [mem.remember(text, user_id="ulrike", session_id="s1", at=T0 + timedelta(minutes=i))
                 for i, text in enumerate(SESSION[:3])]
        unread = mem.remember("Quentin's zylophrax code is pelicanXJ9", user_id="quentin", at=T0)
        for note in (notes[1], unread):  # as a hand edit or an older release may leave a row
            mem._graph.set_fields(note.id, fact="{broken")
        mem.notes(user_id="ulrike")  # the read sets the row aside, quarantined when the call ends
        assert [entry["id"] for entry in mem.quarantined()] == [notes[1].id]

        mem.forget(notes[1].id)
        assert mem.quarantined() == [] and mem.stats().quarantined == 0
        assert_searched_as_mixed(mem, [notes[0].id, notes[2].id], SESSION[1])
        mem.forget(unread.id)  # unreadable, and never read since: not yet in quarantine
        assert mem.stats().notes == 2 and mem.quarantined() == []
        with pytest.raises(NoteNotFoundError):
            mem.forget(notes[1].id)
    if isinstance(location["path"], Path):
        assert traces(location["path"], ["Zanzibar-7731", "zylophrax", "pelicanXJ9", notes[1].id, unread.id]) == []


def test_a_quarantined_neighbour_keeps_none_of_the_words_it_absorbed(memory):
    """A neighbour set aside as unreadable kept in quarantine the words it had absorbed, and forgetting their
    origin could no longer take them back."""
    neighbour = memory.remember("Quentin guards the statue in the garden hall", user_id="quentin", at=T0)
    secret = memory.remember(SECRET_TEXT, user_id="quentin", at=T0 + timedelta(minutes=1))
    assert set(memory.get(neighbour.id).keywords) & set(SECRET_WORDS), "the case to undo: words absorbed"
    memory._graph.set_fields(neighbour.id, fact="{broken")  # as a hand edit or an older release may leave a row
    memory.notes(user_id="quentin")
    [entry] = memory.quarantined()
    assert entry["id"] == neighbour.id and json.loads(entry["row"]["keywords"]) == neighbour.keywords
    memory.forget(secret.id)
    assert [found for found in traces(memory.path, SECRET_WORDS) if " in notes.sqlite3" in found] == []


# ---- the embedded vector index's own files ------------------------------------------------------


def closest_window(path: Path, vector: np.ndarray) -> float:
    """The highest cosine of any run of len(vector) float32s (at any byte offset) in any file under `path`."""
    vector = vector.astype(np.float64) / np.linalg.norm(vector)
    best = 0.0
    for file in (p for p in path.rglob("*") if p.is_file()):
        data = file.read_bytes()
        for offset in range(4):
            floats = np.frombuffer(data[offset: offset + (len(data) - offset) // 4 * 4], dtype=np.float32)
            if len(floats) < len(vector):
                continue
            with np.errstate(invalid="ignore", over="ignore"):  # bytes that are no float
                windows = np.nan_to_num(np.lib.stride_tricks.sliding_window_view(floats, len(vector)).astype(np.float64),
                                        nan=0.0, posinf=0.0, neginf=0.0)
            norms = np.linalg.norm(windows, axis=1) + 1e-12
            best = max(best, float(np.max(windows @ vector / norms)))
    return best


def test_rebuild_index_erases_forgotten_vectors_from_chroma_s_files(tmp_path, embedder):
    """Review s11 F2: Chroma keeps a deleted entry's vector in its write log until its next save, and in
    its HNSW file for good (marked deleted); a rebuild left the dropped collection's folder on disk."""
    path = tmp_path / "m"
    with Memory(path, embedder=embedder) as mem:
        secret = mem.remember(SECRET_TEXT, user_id="quentin", at=T0)
        mem.remember_many([f"Quentin's note number {i} is about topic {i % 13}" for i in range(150)],
                          user_id="quentin", at=T0, deduplicate=False)  # past Chroma's save of its HNSW file
        vector = mem._graph.own_embeddings([secret.id])[secret.id]
        mem.forget(secret.id)
        assert closest_window(path / "chroma", vector) > 0.999  # the case to undo
        assert mem.rebuild_index() == 150
        assert [h.note.text for h in mem.recall("note number 7", user_id="quentin", k=1)] != []
    assert closest_window(path / "chroma", vector) < 0.9
    with Memory(path, embedder=embedder) as reopened:
        assert reopened.recall("topic 3", user_id="quentin", k=3) != []


def test_a_rebuild_removes_only_its_own_collection_s_folders(tmp_path, embedder):
    """Another collection in the same Chroma folder keeps its HNSW files (the rebuild removed every folder)."""
    path = tmp_path / "m"
    with Memory(path, collection="other", embedder=embedder) as other:
        other.remember_many([f"Rosa's note {i} is about topic {i % 13}" for i in range(150)], user_id="rosa", at=T0)
    theirs = {p.name for p in (path / "chroma").iterdir() if p.is_dir()}
    with Memory(path, embedder=embedder) as mem:
        mem.rebuild_index()
    assert theirs and theirs <= {p.name for p in (path / "chroma").iterdir() if p.is_dir()}


def test_a_store_made_by_import_still_takes_the_absorbed_words_back(tmp_path, embedder):
    """The export names each absorbed keyword's origin, so the forget after an import undoes the absorption."""
    with Memory(tmp_path / "src", embedder=embedder) as src:
        neighbour = src.remember("Quentin guards the statue in the garden hall", user_id="quentin", at=T0)
        secret = src.remember(SECRET_TEXT, user_id="quentin", at=T0 + timedelta(minutes=1))
        absorbed = set(src.get(neighbour.id).keywords) & set(SECRET_WORDS)
        assert absorbed, "the neighbour absorbed the secret's words (the case to undo)"
        src.export(tmp_path / "notes.jsonl")
    path = tmp_path / "dst"
    with Memory(path, embedder=embedder) as dst:
        assert dst.import_(tmp_path / "notes.jsonl").imported == 2
        assert absorbed <= set(dst.get(neighbour.id).keywords)
        dst.forget(secret.id)
        assert not set(SECRET_WORDS) & set(dst.get(neighbour.id).keywords)
    assert traces(path, [*SECRET_WORDS, secret.id]) == []


def test_a_keyword_the_note_states_itself_after_an_update_stays_when_its_first_origin_goes(memory):
    """A neighbour rewritten to say the absorbed words itself lost them when their first origin was forgotten."""
    neighbour = memory.remember("Quentin guards the statue in the garden hall", user_id="quentin", at=T0)
    secret = memory.remember(SECRET_TEXT, user_id="quentin", at=T0 + timedelta(minutes=1))
    absorbed = set(memory.get(neighbour.id).keywords) & set(SECRET_WORDS)
    assert absorbed, "the neighbour absorbed the secret's words (the case to undo)"
    said = memory.update(neighbour.id, text=f"Quentin guards the {' '.join(sorted(absorbed))} in the garden hall",
                         at=T0 + timedelta(minutes=2))
    assert absorbed <= set(said.keywords)
    memory.forget(secret.id)
    assert memory.get(neighbour.id).keywords == said.keywords
    assert all(secret.id not in change for _, change, _ in memory.history(neighbour.id))


def test_an_absorbed_keyword_whose_origin_is_not_imported_is_dropped(tmp_path, memory):
    kept = memory.remember("Quentin guards the statue in the garden hall", user_id="quentin", at=T0)
    line = json.loads(kept.model_dump_json()) | {"keywords": [*kept.keywords, "zylophrax"],
                                                  "absorbed": {"zylophrax": "gone-note"}}
    memory.forget(kept.id)
    (tmp_path / "notes.jsonl").write_text(json.dumps(line) + "\n")
    memory.import_(tmp_path / "notes.jsonl")
    assert memory.get(kept.id).keywords == kept.keywords

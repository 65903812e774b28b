"""Hostile and careless input: every bad call raises a typed error and leaves the store as it was.

Each case here once broke a store for good (it could not be exported, decayed or reopened) or
escaped as a raw Python/Chroma exception.
"""
from __future__ import annotations

import json
import math
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from agentmem import AgentMemError, Fact, InvalidInputError, Memory
from agentmem.notes import MAX_FACT_CHARS, MAX_METADATA_DEPTH, MAX_METADATA_JSON

from .conftest import T0

UTC_PLUS_14 = timezone(timedelta(hours=14))
UTC_MINUS_12 = timezone(timedelta(hours=-12))


def snapshot(mem: Memory, path) -> bytes:
    mem.export(path)
    return path.read_bytes()


def still_healthy(mem: Memory, tmp_path) -> None:
    """What a broken store could no longer do: export, decay, recall, reopen."""
    mem.export(tmp_path / "health.jsonl")
    mem.decay(at=T0 + timedelta(days=1))
    mem.recall("anything at all", at=T0, reinforce=False)
    with Memory(mem.path / "reopened-check", embedder=mem._embedder):
        pass


@pytest.fixture
def stocked(memory):
    a = memory.remember("Alice moved to Lisbon in 2024", user_id="alice", at=T0)
    b = memory.remember("Bob plays the cello in Porto", user_id="bob", at=T0)
    return memory, a, b


BAD_TIMES = [
    datetime.max.replace(tzinfo=timezone.utc),
    datetime(1, 1, 1, tzinfo=UTC_PLUS_14),
    datetime(9999, 12, 31, 23, 59, 59),
    datetime(9999, 12, 31, 23, 0, tzinfo=UTC_MINUS_12),
    datetime(999, 12, 31, tzinfo=timezone.utc),
]


@pytest.mark.parametrize("when", BAD_TIMES, ids=str)
def test_times_out_of_range_are_refused_everywhere(stocked, tmp_path, when):
    mem, a, _ = stocked
    before = snapshot(mem, tmp_path / "before.jsonl")
    calls = [
        lambda: mem.remember("Carol likes tea", at=when),
        lambda: mem.recall("Lisbon", at=when),
        lambda: mem.restore(a.id, at=when),
        lambda: mem.decay(at=when),
        lambda: mem.update(a.id, text="Alice moved to Faro", at=when),
        lambda: mem.retention(a.id, at=when),
        lambda: mem.link(a.id, a.id, at=when),
        lambda: mem.remember_many([{"text": "Dan rows", "at": when.isoformat()}]),
    ]
    for call in calls:
        with pytest.raises(InvalidInputError):
            call()
    assert snapshot(mem, tmp_path / "after.jsonl") == before
    still_healthy(mem, tmp_path)


def test_times_are_kept_in_utc_and_naive_times_are_utc(memory):
    note = memory.remember("Erin flew to Oslo", at=datetime(2024, 5, 2, 9, 0, tzinfo=UTC_PLUS_14))
    assert note.created_at == datetime(2024, 5, 1, 19, 0, tzinfo=timezone.utc)
    assert memory.remember("Erin flew back", at=datetime(2024, 5, 3, 9, 0)).created_at.tzinfo == timezone.utc


SURROGATE = "\ud800"


def test_lone_surrogates_and_nul_are_refused_in_every_string(stocked, tmp_path):
    mem, a, b = stocked
    before = snapshot(mem, tmp_path / "before.jsonl")
    calls = [
        lambda: mem.remember("text" + SURROGATE),
        lambda: mem.remember("text with \x00 inside"),
        lambda: mem.remember("ok", tags=["t" + SURROGATE]),
        lambda: mem.remember("ok", metadata={"k" + SURROGATE: 1}),
        lambda: mem.remember("ok", metadata={"k": "v" + SURROGATE}),
        lambda: mem.remember("ok", metadata={"k": ["nested", {"deep": SURROGATE}]}),
        lambda: mem.remember("ok", user_id="u" + SURROGATE),
        lambda: mem.remember("ok", fact=Fact.model_construct(prompt="p" + SURROGATE, target="t")),
        lambda: mem.recall("q" + SURROGATE),
        lambda: mem.recall("q", filters={"k": SURROGATE}),
        lambda: mem.get(a.id + SURROGATE),
        lambda: mem.forget(SURROGATE),
        lambda: mem.update(a.id + SURROGATE, text="x"),
        lambda: mem.update(a.id, text="x" + SURROGATE),
        lambda: mem.history(SURROGATE),
        lambda: mem.neighbors(SURROGATE),
        lambda: mem.restore(SURROGATE),
        lambda: mem.retention(SURROGATE),
        lambda: mem.link(a.id, SURROGATE),
        lambda: mem.export("out" + SURROGATE + ".jsonl"),
    ]
    for number, call in enumerate(calls):
        with pytest.raises(InvalidInputError):
            call()
    assert snapshot(mem, tmp_path / "after.jsonl") == before
    still_healthy(mem, tmp_path)


def test_numbers_must_be_finite_and_bounded(stocked, tmp_path):
    mem, a, b = stocked
    before = snapshot(mem, tmp_path / "before.jsonl")
    for call in [
        lambda: mem.remember("ok", metadata={"score": math.nan}),
        lambda: mem.remember("ok", metadata={"score": math.inf}),
        lambda: mem.remember("ok", metadata={"big": 2**70}),
        lambda: mem.recall("q", k=2**63),
        lambda: mem.recall("q", k=0),
        lambda: mem.recall("q", k=True),
        lambda: mem.recall("q", filters={"score": math.nan}),
        lambda: mem.link(a.id, b.id, weight=math.nan),
        lambda: mem.link(a.id, b.id, weight=5),
        lambda: mem.notes(limit=-1),
    ]:
        with pytest.raises(InvalidInputError):
            call()
    assert snapshot(mem, tmp_path / "after.jsonl") == before


def test_sizes_are_capped_for_tags_metadata_facts_and_ids(memory):
    huge = "x" * 1_000_000
    for call in [
        lambda: memory.remember("ok", tags=[huge]),
        lambda: memory.remember("ok", tags=[f"t{i}" for i in range(100)]),
        lambda: memory.remember("ok", metadata={"k": huge}),
        lambda: memory.remember("ok", metadata={huge[:100]: 1}),
        lambda: memory.remember("ok", metadata={f"k{i}": i for i in range(100)}),
        lambda: memory.remember("ok", fact={"prompt": huge, "target": "t"}),
        lambda: memory.remember("ok", fact={"prompt": "p", "target": "t" * (MAX_FACT_CHARS + 1)}),
        lambda: memory.get(huge),
        lambda: memory.get("has space"),
    ]:
        with pytest.raises(InvalidInputError):
            call()
    assert memory.stats().notes == 0
    assert len(json.dumps({"k": "v" * (MAX_METADATA_JSON // 2)})) < MAX_METADATA_JSON
    memory.remember("ok", metadata={"k": "v" * 5000})  # large but within the caps


def test_file_arguments_are_checked_before_use(memory, tmp_path):
    memory.remember("Flo keeps a diary")
    for bad in ["", tmp_path, tmp_path / "missing-folder" / "out.jsonl", 42]:
        with pytest.raises(InvalidInputError):
            memory.export(bad)
        with pytest.raises(InvalidInputError):
            memory.import_(bad)
    with pytest.raises(InvalidInputError, match="no such file"):
        memory.import_(tmp_path / "nothing.jsonl")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InvalidInputError, match="UTF-8"):
        memory.import_(binary)


def test_an_export_into_the_stores_own_folder_is_refused(tmp_path, embedder):
    """An export to `notes.sqlite3` was renamed over the live note graph: the store was damaged for good."""
    path = tmp_path / "mem"
    with Memory(path, embedder=embedder) as mem:
        kept = mem.remember("Flo keeps a diary")
        files = {p: p.stat().st_ino for p in path.glob("notes.sqlite3*")}
        for inside in [path / "notes.sqlite3", path / "notes.sqlite3-wal", path / "chroma" / "out.jsonl",
                       tmp_path / "." / "mem" / "out.jsonl"]:
            with pytest.raises(InvalidInputError, match="inside the store's folder"):
                mem.export(inside)
        assert {p: p.stat().st_ino for p in path.glob("notes.sqlite3*")} == files  # none replaced, none made
        assert not (path / "out.jsonl").exists() and not (path / "chroma" / "out.jsonl").exists()
        assert mem.export(tmp_path / "out.jsonl") == 1
    with Memory(path, embedder=embedder) as reopened:
        assert reopened.get(kept.id).text == "Flo keeps a diary"


def _exported_row(mem: Memory, tmp_path, **changes) -> str:
    mem.export(tmp_path / "one.jsonl")
    row = json.loads((tmp_path / "one.jsonl").read_text().splitlines()[0])
    row.update(changes)
    return json.dumps(row)


@pytest.mark.parametrize("changes", [
    {"id": ""},
    {"id": "has spaces"},
    {"strength": -5},
    {"strength": "NaN"},
    {"recall_count": -1},
    {"created_at": "9999-12-31T23:59:59-12:00"},
    {"links": [{"note_id": "SELF", "weight": 5}]},
    {"links": [{"note_id": "SELF", "weight": 0.5}]},
    {"metadata": {"k": "Infinity"}},
    {"tags": [""]},
    {"keywords": [f"word{i}" for i in range(13)]},
    {"keywords": ["w" * 10_001]},
    {"context": "c" * 10_501},
], ids=lambda c: next(iter(c)))
def test_import_refuses_rows_that_would_break_the_store(tmp_path, embedder, changes):
    with Memory(tmp_path / "source", embedder=embedder) as source:
        note = source.remember("Gil bakes sourdough", at=T0)
        row = _exported_row(source, tmp_path, **changes).replace('"SELF"', json.dumps(note.id))
        if changes.get("metadata"):
            row = row.replace('"Infinity"', "Infinity")
    (tmp_path / "bad.jsonl").write_text(row + "\n")
    with Memory(tmp_path / "target", embedder=embedder) as target:
        target.remember("Hana paints", at=T0)
        before = snapshot(target, tmp_path / "before.jsonl")
        with pytest.raises(InvalidInputError):
            target.import_(tmp_path / "bad.jsonl")
        assert snapshot(target, tmp_path / "after.jsonl") == before
        target.decay(at=T0 + timedelta(days=1))
    with Memory(tmp_path / "target", embedder=embedder) as reopened:
        assert reopened.stats().notes == 1


def test_links_never_cross_users_through_link_or_import(stocked, tmp_path, embedder):
    mem, a, b = stocked
    with pytest.raises(InvalidInputError, match="cross users"):
        mem.link(a.id, b.id)
    assert mem.neighbors(a.id) == []
    mem.export(tmp_path / "all.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    for row in rows:
        other = next(r["id"] for r in rows if r["id"] != row["id"])
        row["links"] = [{"note_id": other, "weight": 0.9}]
    (tmp_path / "crossed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with Memory(tmp_path / "target", embedder=embedder) as target:
        with pytest.raises(InvalidInputError, match="cross users"):
            target.import_(tmp_path / "crossed.jsonl")
        assert target.stats().notes == 0


def test_a_validation_message_names_five_reasons_and_counts_the_rest():
    from pydantic import ValidationError, create_model

    from agentmem.validation import reasons

    fields = {f"f{i}": (int, ...) for i in range(7)}
    with pytest.raises(ValidationError) as refused:
        create_model("Row", **fields).model_validate({name: "x" for name in fields})
    said = reasons(refused.value.errors())
    assert said.count(": Input should be a valid integer") == 5 and said.endswith("; and 2 more") and "\n" not in said
    assert said.startswith("f0: ") and "f5" not in said


def test_every_rejection_is_an_agentmem_error_with_a_readable_message(memory):
    with pytest.raises(AgentMemError) as caught:
        memory.remember("x", at=datetime(9999, 12, 31, 23, 59, 59))
    assert "between 1000-01-01 and 9000-01-01" in str(caught.value)


@pytest.mark.parametrize("path", ["", "   ", 42, "x\ud800", "x\x00y", "postgresql:/no-slashes"])
def test_a_bad_store_location_is_refused_before_anything_is_created(tmp_path, embedder, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInputError):
        Memory(path, embedder=embedder)
    assert list(tmp_path.iterdir()) == []


def _nested(depth: int) -> dict:
    """Metadata whose lists sit `depth` levels deep, the metadata dict itself being level 1."""
    value: object = "leaf"
    for _ in range(depth - 1):
        value = [value]
    return {"k": value}


def test_metadata_nested_too_deep_is_refused_and_the_deepest_allowed_is_served_everywhere(memory, tmp_path):
    """At 256 levels pydantic cannot serialise a note: stored, it broke every listing, recall and export of the
    store (the server answered 500 to all of them, and no route could name the note to forget it)."""
    for depth in (MAX_METADATA_DEPTH + 1, 300):
        with pytest.raises(InvalidInputError, match="deep"):
            memory.remember("Hugo collects stamps", metadata=_nested(depth), at=T0)
    assert memory.stats().notes == 0
    note = memory.remember("Hugo collects stamps", metadata=_nested(MAX_METADATA_DEPTH), at=T0)
    assert memory.get(note.id).metadata == _nested(MAX_METADATA_DEPTH)
    assert [n.model_dump_json() for n in memory.notes()]  # serialisable, as the server will send it
    still_healthy(memory, tmp_path)


def test_a_note_stored_deeper_than_the_cap_before_it_existed_is_still_read(tmp_path, embedder):
    """The cap holds new input; a note written before it, deeper but still servable, is not quarantined."""
    path = tmp_path / "m"
    with Memory(path, embedder=embedder) as mem:
        note = mem.remember("Hugo collects stamps", at=T0)
    db = sqlite3.connect(path / "notes.sqlite3")
    db.execute("UPDATE notes SET metadata = ? WHERE id = ?", (json.dumps(_nested(100)), note.id))
    db.commit()
    db.close()
    with Memory(path, embedder=embedder) as mem:
        assert mem.get(note.id).metadata == _nested(100) and mem.stats().quarantined == 0
        assert [n.model_dump_json() for n in mem.notes()]
        mem.update(note.id, tags=["hobby"], at=T0)  # its history keeps the deep version, read back too
        assert mem.history(note.id)[0][2].metadata == _nested(100)
        with pytest.raises(InvalidInputError, match="deep"):
            mem.update(note.id, metadata=_nested(100))
        mem.export(tmp_path / "all.jsonl")
    with Memory(tmp_path / "copy", embedder=embedder) as copy:  # and its export re-imports
        assert copy.import_(tmp_path / "all.jsonl").imported == 1
        assert copy.get(note.id).metadata == _nested(100)


@pytest.mark.parametrize("editor", ["nope", 42])
def test_an_unknown_editor_is_refused_when_the_memory_opens_and_nothing_is_made(tmp_path, embedder, editor):
    """It used to be accepted until the first plan, consolidate or answer."""
    with pytest.raises(InvalidInputError, match="editor"):
        Memory(tmp_path / "m", embedder=embedder, editor=editor)
    assert not (tmp_path / "m").exists()

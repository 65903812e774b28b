"""A replica's link view catches up with another replica's commits by the notes they touched,
against a real PostgreSQL 15 server."""
from __future__ import annotations

import random
from datetime import datetime, timezone

import networkx as nx
import numpy as np
import psycopg
import pytest

from agentmem import Note
from agentmem.stores import link_changes
from agentmem.stores.postgres import PostgresNoteGraph

T = datetime(2024, 1, 1, tzinfo=timezone.utc)


def note(note_id: str) -> Note:
    return Note(id=note_id, text=f"note {note_id}", created_at=T, updated_at=T, last_recalled=T)


@pytest.fixture
def replicas(postgres_url):
    writer, reader = PostgresNoteGraph(postgres_url), PostgresNoteGraph(postgres_url)
    yield writer, reader
    writer.close()
    reader.close()


def as_stored(url: str) -> tuple[set, set]:
    """The notes and weighted links in the database, read directly."""
    with psycopg.connect(url) as conn:
        notes = {row[0] for row in conn.execute("SELECT id FROM notes")}
        links = {(*sorted(row[:2]), row[2]) for row in conn.execute("SELECT a, b, weight FROM links")}
    return notes, links


def as_viewed(graph: nx.Graph) -> tuple[set, set]:
    return set(graph.nodes), {(*sorted((a, b)), w) for a, b, w in graph.edges(data="weight")}


def test_links_made_and_reweighted_elsewhere_are_caught_up_in_place(replicas, postgres_url):
    writer, reader = replicas
    with writer.transaction():
        for name in "abc":
            writer.insert(note(name), np.ones(4))
        writer.link("a", "b", 0.5, T)
    view = reader.graph
    assert reader.refresh_if_changed() is True
    with writer.transaction():
        writer.link("a", "b", 0.9, T)  # made again: the new weight
        writer.link("b", "c", 0.4, T)
    assert reader.refresh_if_changed() is True
    assert reader.graph is view  # read by the touched notes, not reloaded
    assert as_viewed(reader.graph) == as_stored(postgres_url) == ({"a", "b", "c"}, {("a", "b", 0.9), ("b", "c", 0.4)})


def test_a_forget_elsewhere_drops_its_links_in_place_and_leaves_no_trace_in_the_log(replicas, postgres_url):
    writer, reader = replicas
    with writer.transaction():
        for name in ("keep", "other", "secret", "lonely"):
            writer.insert(note(name), np.ones(4))
        writer.link("keep", "secret", 0.8, T)
        writer.link("keep", "other", 0.3, T)
        writer.link("lonely", "secret", 0.5, T)
    reader.refresh_if_changed()
    with writer.transaction():
        writer.delete("secret")
    view = reader.graph
    assert reader.refresh_if_changed() is True
    assert reader.graph is view
    assert as_stored(postgres_url) == ({"keep", "other", "lonely"}, {("keep", "other", 0.3)})
    assert as_viewed(reader.graph)[1] == as_stored(postgres_url)[1]
    assert "secret" not in reader.graph  # left without links, and gone from the store
    assert "lonely" in reader.graph  # left without links, but still stored
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM link_changes WHERE note_id = 'secret'").fetchone()[0] == 0


def test_a_forget_by_a_replica_whose_view_is_behind_still_names_every_linked_note(postgres_url, replicas):
    writer, reader = replicas
    forgetter = PostgresNoteGraph(postgres_url)
    try:
        with writer.transaction():
            writer.insert(note("x"), np.ones(4))
            writer.insert(note("q"), np.ones(4))
            writer.link("x", "q", 0.6, T)
        reader.refresh_if_changed()
        with forgetter.transaction():  # its view never saw the link
            forgetter.delete("x")
        reader.refresh_if_changed()
        assert as_viewed(reader.graph)[1] == as_stored(postgres_url)[1] == set()
    finally:
        forgetter.close()


def test_a_bulk_load_elsewhere_reloads_the_view(replicas, postgres_url):
    writer, reader = replicas
    with writer.transaction():
        writer.insert(note("a"), np.ones(4))
        writer.insert(note("b"), np.ones(4))
    reader.refresh_if_changed()
    writer.bulk_load({"links": (("a", "b", "weight", "created_at"), [("a", "b", 0.25, 0.0)])})
    view = reader.graph
    assert reader.refresh_if_changed() is True
    assert reader.graph is not view and as_viewed(reader.graph) == as_stored(postgres_url)


def test_an_index_rebuilt_elsewhere_leaves_what_a_search_ahead_missed_unknown_and_the_view_in_place(replicas):
    """A search made outside the write section may have met the index half refilled: the section searches again.
    The links did not change, so the view is not reloaded."""
    writer, reader = replicas
    with writer.transaction():
        writer.insert(note("a"), np.ones(4))
    with reader.lock():
        reader.refresh_if_changed()
        mark = reader.search_mark()
    view = reader.graph
    writer.index_rebuilt()
    with reader.lock():
        assert reader.refresh_if_changed() is True
        assert reader.changed_since(mark) is None
    assert reader.graph is view and set(view.nodes) == {"a"}


@pytest.mark.parametrize("moved, then_ours", [
    ("n = 1", False),  # the database made again under the replica: its version went back
    ("n = n + 1", True),  # a commit by an earlier agentmem, which keeps no log, then one of ours
])
def test_a_version_the_log_cannot_account_for_reloads_the_view(replicas, postgres_url, moved, then_ours):
    writer, reader = replicas
    for name in "ab":
        with writer.transaction():
            writer.insert(note(name), np.ones(4))
    reader.refresh_if_changed()
    with psycopg.connect(postgres_url) as conn:  # a link written without a row in link_changes
        conn.execute("INSERT INTO links(a, b, weight, created_at) VALUES ('a', 'b', 0.5, 0)")
        conn.execute(f"UPDATE store_version SET {moved}")
    if then_ours:
        with writer.transaction():
            writer.insert(note("c"), np.ones(4))
    assert reader.refresh_if_changed() is True
    assert as_viewed(reader.graph) == as_stored(postgres_url)
    assert as_viewed(reader.graph)[1] == {("a", "b", 0.5)}


def test_a_view_further_behind_than_the_log_keeps_is_reloaded_whole(replicas, postgres_url, monkeypatch):
    writer, reader = replicas
    with writer.transaction():
        writer.insert(note("a"), np.ones(4))
    reader.refresh_if_changed()
    monkeypatch.setattr(link_changes, "KEPT_VERSIONS", 2)  # how far behind a view may be caught up
    for name in "bcd":
        with writer.transaction():
            writer.insert(note(name), np.ones(4))
    view = reader.graph
    assert reader.refresh_if_changed() is True
    assert reader.graph is not view and set(reader.graph.nodes) == {"a", "b", "c", "d"}


def test_the_log_is_pruned_to_the_versions_it_keeps(replicas, postgres_url):
    writer, _ = replicas
    for i in range(link_changes.KEPT_VERSIONS + 5):
        with writer.transaction():
            writer.insert(note(f"n{i}"), np.ones(4))
    with psycopg.connect(postgres_url) as conn:
        newest, oldest = conn.execute("SELECT max(version), min(version) FROM link_changes").fetchone()
    assert newest - oldest == link_changes.KEPT_VERSIONS - 1


@pytest.mark.parametrize("seed", [7, 11, 23])
def test_after_any_mix_of_writes_the_caught_up_view_is_the_store(replicas, postgres_url, seed):
    writer, reader = replicas
    rng = random.Random(seed)
    names = [f"n{i}" for i in range(12)]
    for step in range(60):
        with writer.transaction():
            for _ in range(rng.randint(1, 3)):
                present = sorted(writer.graph.nodes)
                roll = rng.random()
                if roll < 0.35 or len(present) < 2:
                    missing = [n for n in names if n not in writer.graph]
                    if missing:
                        writer.insert(note(rng.choice(missing)), np.ones(4))
                elif roll < 0.85:
                    a, b = rng.sample(present, 2)
                    writer.link(a, b, round(rng.random(), 3), T)
                else:
                    writer.delete(rng.choice(present))
        if step % 3 == 0:  # the reader looks only now and then, several commits at once
            reader.refresh_if_changed()
            (viewed, viewed_links), (stored, stored_links) = as_viewed(reader.graph), as_stored(postgres_url)
            assert viewed >= stored  # a note forgotten elsewhere may stay, unreachable from the stored ones:
            assert {link for link in viewed_links if {*link[:2]} <= stored} == stored_links
            assert all(not {*link[:2]} & stored for link in viewed_links if not {*link[:2]} <= stored)

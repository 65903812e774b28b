from datetime import datetime, timezone

import networkx as nx

from agentmem import MemoryConfig, Note, ranking

T = datetime(2024, 1, 1, tzinfo=timezone.utc)


def note(note_id: str, text: str = "text") -> Note:
    return Note(id=note_id, text=text, created_at=T, updated_at=T, last_recalled=T)


def test_retention_is_a_prior_that_never_buries_a_strongly_relevant_note():
    config = MemoryConfig()
    old_relevant = ranking.Candidate(note=note("old"), similarity=0.8, retention=0.0)
    fresh_weak = ranking.Candidate(note=note("fresh"), similarity=0.5, retention=1.0)
    ranked = ranking.rank([fresh_weak, old_relevant], config, k=2)
    assert [c.note.id for _, c in ranked] == ["old", "fresh"]


def test_retention_breaks_near_ties():
    config = MemoryConfig()
    faded = ranking.Candidate(note=note("a"), similarity=0.6, retention=0.1)
    fresh = ranking.Candidate(note=note("b"), similarity=0.6, retention=1.0)
    assert [c.note.id for _, c in ranking.rank([faded, fresh], config, k=1)] == ["b"]


def test_spreading_activation_goes_one_hop_and_keeps_the_best_seed():
    graph = nx.Graph()
    graph.add_edge("seed1", "x", weight=0.5)
    graph.add_edge("seed2", "x", weight=1.0)
    graph.add_edge("x", "far", weight=1.0)
    reached = ranking.spread_activation({"seed1": 0.9, "seed2": 0.6}, graph, spread=0.5)
    assert reached["x"] == (0.6 * 0.5 * 1.0, "seed2")
    assert "far" not in reached


def test_rank_is_deterministic_on_ties():
    config = MemoryConfig()
    candidates = [ranking.Candidate(note=note(i), similarity=0.5) for i in ("b", "a", "c")]
    assert [c.note.id for _, c in ranking.rank(candidates, config, k=3)] == ["a", "b", "c"]

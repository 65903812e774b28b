"""Hybrid ranking: dense similarity, lexical match, link activation and retention.

relevance  = cosine similarity + lexical_weight * BM25 score (scaled so the best match is 1)
             + time_weight * time match (see agentmem.temporal)
activation = what a link passes on from a relevant seed note (spreading activation)
score      = max(relevance, activation) * (floor + (1 - floor) * retention)

Retention is a prior, not a gate: with the floor, a note that faded completely still
keeps `floor` of its relevance, so a strongly relevant old note is never buried under
a weakly relevant fresh one.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from .config import MemoryConfig
from .notes import Hit, Note, Why
from .stores.rows import StoredNote


@dataclass
class Candidate:
    note: StoredNote | Note  # a recall's candidates are notes as a ranking reads them (`StoredNote`)
    similarity: float
    retention: float = 1.0
    lexical: float = 0.0
    temporal: float = 0.0
    via_link: str | None = None
    link_activation: float = 0.0


def relevance(candidate: Candidate, config: MemoryConfig) -> float:
    return (
        candidate.similarity
        + config.lexical_weight * candidate.lexical
        + config.time_weight * candidate.temporal
    )


def spread_activation(
    seeds: dict[str, float], graph: nx.Graph, spread: float
) -> dict[str, tuple[float, str]]:
    """One hop of activation from each seed to its linked notes: (activation, seed id), best seed wins."""
    reached: dict[str, tuple[float, str]] = {}
    for seed, seed_relevance in seeds.items():
        if seed not in graph:
            continue
        for neighbour, edge in graph[seed].items():
            activation = seed_relevance * spread * edge["weight"]
            if activation > reached.get(neighbour, (0.0, ""))[0]:
                reached[neighbour] = (activation, seed)
    return reached


def score(candidate: Candidate, config: MemoryConfig) -> float:
    prior = config.retention_floor + (1.0 - config.retention_floor) * candidate.retention
    return max(relevance(candidate, config), candidate.link_activation) * prior


def rank(candidates: list[Candidate], config: MemoryConfig, k: int) -> list[tuple[float, Candidate]]:
    """The k best candidates with their scores, best first; ties broken by note id so rankings are deterministic."""
    return sorted(((score(c, config), c) for c in candidates), key=lambda sc: (-sc[0], sc[1].note.id))[:k]


def hit(ranked: tuple[float, Candidate], note: Note) -> Hit:
    """A ranked candidate (as `rank` gives it) as returned, `note` being its note whole (checked, with its links)."""
    value, candidate = ranked
    return Hit(
        note=note,
        score=value,
        why=Why(
            similarity=candidate.similarity,
            lexical=candidate.lexical,
            temporal=candidate.temporal,
            retention=candidate.retention,
            via_link=candidate.via_link,
            link_activation=candidate.link_activation,
        ),
    )

"""Tunable behaviour of a `Memory`, with defaults that suit the bundled MiniLM embedder."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class MemoryConfig(BaseModel):
    # a misspelt field ("link_treshold") is refused, not silently left at its default
    model_config = ConfigDict(frozen=True, extra="forbid")

    # input limits
    max_text_chars: int = Field(10_000, ge=1)

    # forgetting curve (see agentmem.forgetting)
    curve: Literal["exponential", "actr"] = "exponential"
    time_unit_seconds: float = Field(
        604_800.0, gt=0,
        description="one unit of t in R = exp(-t / S); a week by default, so a note never recalled"
        " falls below archive_below=0.01 after about 4.6 weeks, and each recall adds a week of strength",
    )
    initial_strength: float = Field(1.0, gt=0)
    strength_gain: float = Field(1.0, ge=0, description="added to S at each recall (spacing effect)")
    actr_decay: float = Field(0.5, gt=0)
    archive_below: float = Field(0.01, ge=0, lt=1, description="decay() archives notes whose retention fell below this")

    # Zettelkasten linking (cosine similarities of normalised MiniLM embeddings)
    link_threshold: float = Field(0.35, ge=-1, le=1, description="MiniLM: related sentences ~0.35-0.6, unrelated < 0.2")
    max_links: int = Field(5, ge=0)
    duplicate_threshold: float = Field(0.95, ge=-1, le=1)
    answer_min_similarity: float = Field(
        0.3, ge=-1, le=1,
        description="answer() gives the model as context only notes at least this similar to the question: one at 0.15"
        " made SmolLM2 say 'The team offsite is in Lisbon' from 'Alice moved to Lisbon in 2024'",
    )
    max_keywords: int = Field(12, ge=1)

    # conversation context in what is searched
    context_weight: float = Field(
        0.5, ge=0,
        description="a note of a session is searched by its own embedding plus this times the vector of the"
        " session's previous note (itself carrying the ones before it); 0 embeds every note alone",
    )

    # ranking
    lexical_weight: float = Field(0.6, ge=0, description="weight of the BM25 score, scaled to 1 for the best match")
    time_weight: float = Field(0.2, ge=0, description="bonus for notes that fit what the query says about time")
    link_spread: float = Field(0.5, ge=0, lt=1, description="(< 1, so a linked note never outranks its seed) share of a seed's relevance passed along a link of weight 1")
    retention_floor: float = Field(0.9, ge=0, le=1, description="a note at retention 0 keeps this share of its relevance")
    candidate_pool: int = Field(30, ge=0, description="dense candidates fetched beyond k before re-ranking")

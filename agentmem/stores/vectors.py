"""The vector index: a Chroma collection, embedded on disk or on a `chroma run` server.

It mirrors, for every note, the embedding and the scalar fields recall filters on (scope,
archived, the user's scalar metadata under `m.<key>`). It is never the source of truth:
agentmem.stores.graph holds the text and everything else needed to rebuild it. (Texts are
not sent to Chroma: indexing them for its full-text search would double the write cost,
and agentmem ranks lexically itself.)
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import chromadb  # noqa: E402
import numpy as np  # noqa: E402
from chromadb.config import Settings  # noqa: E402

from ..errors import InvalidInputError, StoreUnavailableError  # noqa: E402
from ..notes import Note  # noqa: E402

_SETTINGS = Settings(anonymized_telemetry=False, allow_reset=False)
METADATA_PREFIX = "m."
OVERFETCH = 2  # unfiltered neighbours searched per wanted one before falling back to a filtered search


def index_metadata(note: Note) -> dict[str, Any]:
    """What Chroma keeps beside the vector: scope ('' for none), archived, scalar metadata."""
    meta: dict[str, Any] = {
        "user_id": note.user_id or "",
        "agent_id": note.agent_id or "",
        "session_id": note.session_id or "",
        "archived": note.archived,
        "created_at": note.created_at.timestamp(),
    }
    for key, value in note.metadata.items():
        if isinstance(value, (str, int, float, bool)):
            meta[METADATA_PREFIX + key] = value
    return meta


def where_clause(conditions: dict[str, Any]) -> dict[str, Any] | None:
    """Chroma's `where`: a single condition as is, several under `$and`."""
    clauses = [{key: value} for key, value in conditions.items()]
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def matches(metadata: dict[str, Any], conditions: dict[str, Any]) -> bool:
    """Whether index metadata satisfy equality conditions as Chroma's `where` would (True is not 1)."""
    return all(
        key in metadata and metadata[key] == value and isinstance(metadata[key], bool) == isinstance(value, bool)
        for key, value in conditions.items()
    )


class VectorIndex:
    def __init__(self, path: Path, collection: str, url: str | None = None):
        if not 3 <= len(collection) <= 512:
            raise InvalidInputError("collection names need 3 to 512 characters")
        self._path, self._url, self._name = path, url, collection
        self.mode = "server" if url else "embedded"
        self._connect()

    def _connect(self) -> None:
        if self._url:
            parsed = urlparse(self._url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise InvalidInputError(f"chroma_url must look like http://host:port, got {self._url!r}")
            try:
                self._client = chromadb.HttpClient(
                    host=parsed.hostname, port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                    ssl=parsed.scheme == "https", settings=_SETTINGS,
                )
            except Exception as exc:  # chromadb raises plain ValueError/ConnectionError here
                raise StoreUnavailableError(f"no Chroma server answers at {self._url}: {exc}") from exc
        else:
            self._client = chromadb.PersistentClient(str(self._path), settings=_SETTINGS)
        self._collection = self._client.get_or_create_collection(
            self._name, metadata={"hnsw:space": "cosine"}, embedding_function=None
        )

    def refresh(self) -> None:
        """Drop the in-process index so writes by another process become visible.

        An embedded Chroma keeps its HNSW graph in memory and does not see other
        processes' additions until it is reopened; a server needs nothing.
        """
        if self.mode == "embedded":
            self._client.close()
            self._connect()

    def close(self) -> None:
        if self.mode == "embedded":
            self._client.close()

    def upsert(self, notes: Sequence[Note], embeddings: Sequence[np.ndarray]) -> None:
        if not notes:
            return
        self._collection.upsert(
            ids=[n.id for n in notes],
            embeddings=np.asarray(embeddings, dtype=np.float32),
            metadatas=[index_metadata(n) for n in notes],
        )

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            self._collection.delete(ids=list(ids))

    def count(self) -> int:
        return self._collection.count()

    def ids(self) -> set[str]:
        return set(self._collection.get(include=[])["ids"])

    def query(
        self, embeddings: np.ndarray, n: int, conditions: dict[str, Any] | None = None
    ) -> list[list[tuple[str, float]]]:
        """The n nearest notes to each embedding whose index metadata equal `conditions`, as
        (id, cosine similarity).

        Chroma's `where` filter checks every record that matches it before searching (about
        35 ms at 10k notes, growing with the store), while an unfiltered HNSW search takes
        under a millisecond. So search unfiltered for a few times n and filter here; only
        rows where that leaves fewer than n (a scope holding a small share of the index)
        pay for the filtered search.
        """
        embeddings = np.asarray(embeddings, dtype=np.float32)
        conditions = conditions or {}
        if not conditions:
            return self._search(embeddings, n, None)
        fetch = n * OVERFETCH
        result = self._collection.query(
            query_embeddings=embeddings, n_results=fetch, include=["distances", "metadatas"]
        )
        found: list[list[tuple[str, float]]] = []
        short: list[int] = []
        for row, (ids, distances, metadatas) in enumerate(
            zip(result["ids"], result["distances"], result["metadatas"])
        ):
            admitted = [
                (i, 1.0 - d) for i, d, meta in zip(ids, distances, metadatas)
                if matches(meta, conditions)
            ]
            found.append(admitted[:n])
            if len(admitted) < n and len(ids) == fetch:
                short.append(row)
        if short:
            for row, hits in zip(short, self._search(embeddings[short], n, where_clause(conditions))):
                found[row] = hits
        return found

    def _search(self, embeddings: np.ndarray, n: int, where: dict[str, Any] | None) -> list[list[tuple[str, float]]]:
        result = self._collection.query(query_embeddings=embeddings, n_results=n, where=where, include=["distances"])
        return [
            [(i, 1.0 - d) for i, d in zip(ids, distances)]
            for ids, distances in zip(result["ids"], result["distances"])
        ]

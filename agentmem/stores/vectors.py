"""The vector index: a Chroma collection, embedded on disk or on a `chroma run` server.

It keeps, for every note, the embedding and what recall narrows by before ranking (scope
and archived). It is never the source of truth: agentmem.stores.graph holds every note with
its embedding, so the index can always be rebuilt.

It holds no readable trace of a note: ids and scope values are keyed hashes (HMAC with a key
kept in the note graph, which sits beside it), and neither texts nor user metadata are sent.
But Chroma keeps a deleted entry in its files: in its write log until its next save, and in
its HNSW file for good (hnswlib marks it deleted and keeps the vector, which identifies the
text it embeds). `reset` (`Memory.rebuild_index`) erases them: a new collection, the old one's
folders removed. It takes seconds at 10k notes, too long for every `forget`.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlparse

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import chromadb  # noqa: E402
import numpy as np  # noqa: E402
from chromadb.api.shared_system_client import SharedSystemClient  # noqa: E402
from chromadb.config import Settings  # noqa: E402
from chromadb.errors import NotFoundError  # noqa: E402

from ..errors import AgentMemError, InvalidInputError, StoreCorruptedError, StoreUnavailableError  # noqa: E402
from ..notes import Note  # noqa: E402
from .heap import fill_heap_blocks  # noqa: E402
from .filters import SCOPES  # noqa: E402
from .tokens import index_token  # noqa: E402


def client_settings() -> Settings:
    """Fresh settings for every client: Chroma's client constructors write into the object they get
    (a shared one made an embedded store opened after a server-mode one talk to that server)."""
    return Settings(anonymized_telemetry=False, allow_reset=False)

STORE_KEY = "agentmem_store"  # collection metadata: the id of the note graph this index mirrors
# Chroma writes its HNSW graph to disk after this many writes (its default: 1000). Until then
# every write also pays for the records logged since the last save: on 8-9k notes a one-note
# write took about 30 ms just after a save and 55-58 ms 800-1000 records later. At 100 the mean
# write on 8k notes fell from 44 to 32 ms, saves included, with the same search results
# (/tmp/H16/saw.py and saw2.py, 2026-11-23, BENCHMARKS.md latency-stores).
SYNC_THRESHOLD = 100
WRITE_CHUNK = 1000  # vectors per Chroma call (below its maximum batch)
# Chroma's rule for names, checked before Chroma sees one: it refuses others only as it opens the
# collection, which reads like a damaged index (and an embedded one would be rebuilt)
COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]")

# A Chroma 1.5.9 server searching a collection while another client's write saves its HNSW
# graph for the first time can fail with this; the same search a moment later succeeds. Seen
# with two replicas writing the index outside the write lock (agentmem.eval.fleet, 2026-11-23).
UNSAVED_GRAPH = "Error creating hnsw segment reader"
SEARCH_ATTEMPTS = 4

# Chroma's HTTP client waits forever (its httpx client has no timeout, and no setting gives it one): a server that
# accepted the connection and stopped answering (frozen, partitioned) held a remember for 13 minutes and more. A
# call on a server gets this long to answer, else the index counts as unreachable.
SERVER_DEADLINE_S = 30.0

log = logging.getLogger(__name__)
T = TypeVar("T")


class Scoped(Protocol):
    """What the index keeps of a note (a `Note`, or an `IndexEntry` read from the note store)."""

    user_id: str | None
    agent_id: str | None
    session_id: str | None
    archived: bool


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


@contextmanager
def _reachable(what: str) -> Iterator[None]:
    """Chroma's and its HTTP client's failures (server gone, disk full, read-only) as one typed error."""
    try:
        yield
    except AgentMemError:
        raise
    except Exception as exc:
        raise StoreUnavailableError(f"the vector index failed to {what}: {type(exc).__name__}: {exc}") from exc


def location_of(url: str | None) -> str:
    """Where an index opened with this url keeps its vectors, as the note graph records it."""
    return "server" if url else "embedded"


class VectorIndex:
    def __init__(self, path: Path, collection: str, url: str | None, key: bytes):
        if not isinstance(collection, str) or not COLLECTION_NAME.fullmatch(collection) or ".." in collection:
            raise InvalidInputError(
                f"a collection name has 3-512 characters from A-Z a-z 0-9 . _ - (no '..'), first and last a letter"
                f" or digit; got {collection!r}"
            )
        self._path, self._url, self._name, self._key = path, url, collection, key
        self.mode = location_of(url)
        # a search checks the scope of every candidate it finds, mostly of a few users and sessions
        self._scope_token = functools.lru_cache(maxsize=4096)(functools.partial(index_token, key))
        self._connect()

    def token(self, kind: str, value: str) -> str:
        """The index's name for a note id or scope value: a keyed hash, stable for this store."""
        return index_token(self._key, kind, value)

    def _connect(self) -> None:
        if self._url:
            parsed = urlparse(self._url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise InvalidInputError(f"chroma_url must look like http://host:port, got {self._url!r}")
            def connect() -> None:
                self._client = chromadb.HttpClient(
                    host=parsed.hostname, port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                    ssl=parsed.scheme == "https", settings=client_settings(),
                )
                self._open_collection()

            with _reachable(f"reach a Chroma server at {self._url}"):
                self._answered("open the collection", connect)
            return
        fill_heap_blocks()  # before hnswlib allocates: its files copy its buffers whole
        try:
            self._client = chromadb.PersistentClient(str(self._path), settings=client_settings())
            self._open_collection()
            self._collection.count()
        except Exception as exc:
            # Chroma caches a client's system per folder before starting it, and keeps one whose
            # start failed: drop it, or every later client for this folder fails the same way
            SharedSystemClient._identifier_to_system.pop(str(self._path), None)
            if not os.access(self._path.parent, os.W_OK) or isinstance(exc, PermissionError):
                raise StoreUnavailableError(f"the vector index at {self._path} cannot be opened: {exc}") from exc
            raise StoreCorruptedError(f"the vector index at {self._path} is damaged: {type(exc).__name__}: {exc}") from exc

    def _open_collection(self) -> None:
        self._collection = self._client.get_or_create_collection(
            self._name, metadata={"hnsw:space": "cosine"}, embedding_function=None,
            configuration={"hnsw": {"space": "cosine", "sync_threshold": SYNC_THRESHOLD}},
        )
        hnsw = (self._collection.configuration_json or {}).get("hnsw") or {}
        if hnsw and hnsw.get("sync_threshold") != SYNC_THRESHOLD:  # a collection made before (Chroma keeps its own)
            try:
                self._collection.modify(configuration={"hnsw": {"sync_threshold": SYNC_THRESHOLD}})
            except Exception:  # only a speed-up: a server that refuses it still serves the index
                log.warning("could not set the index's sync_threshold to %d", SYNC_THRESHOLD, exc_info=True)

    def _on_collection(self, what: str, call: Callable[[Any], T]) -> T:
        """`call` on the collection, failures typed; on a server, within `SERVER_DEADLINE_S`, and once
        more on the collection opened again by name when its handle found nothing: another replica
        rebuilt the index (`reset`), which gives the collection a new id, and every other replica's
        handle names the old one."""
        with _reachable(what):
            try:
                return self._answered(what, lambda: call(self._collection))
            except NotFoundError:
                if self.mode != "server":
                    raise
                log.info("the index collection %r was made again elsewhere; opening it again", self._name)
                self._answered("open the collection again", self._reopen_collection)
                return self._answered(what, lambda: call(self._collection))

    def _reopen_collection(self) -> None:
        """The collection of this name as it is now on the server. It is not made again when it is gone: an empty
        one would answer searches with none of the store's notes, silently."""
        try:
            self._collection = self._client.get_collection(self._name, embedding_function=None)
        except NotFoundError:
            raise StoreUnavailableError(
                f"the index collection {self._name!r} is gone from the Chroma server {self._url} (its data was lost"
                " or removed, or another replica is rebuilding it right now: then try again): rebuild_index()"
                " refills it from the note graph, which holds every note"
            ) from None

    def _answered(self, what: str, call: Callable[[], T]) -> T:
        """`call()`; on a server, in a thread of its own that the caller stops waiting for after `SERVER_DEADLINE_S`
        (a daemon: a call the server never answers cannot keep the process from exiting)."""
        if self.mode != "server":
            return call()
        outcome: list[tuple[bool, Any]] = []

        def run() -> None:
            try:
                outcome.append((True, call()))
            except BaseException as exc:  # handed to the caller, raised there
                outcome.append((False, exc))

        worker = threading.Thread(target=run, name="agentmem-chroma-call", daemon=True)
        worker.start()
        worker.join(SERVER_DEADLINE_S)
        if not outcome:
            raise StoreUnavailableError(
                f"the Chroma server at {self._url} did not answer within {SERVER_DEADLINE_S:.0f} s (to {what})"
            )
        answered, value = outcome[0]
        if not answered:
            raise value
        return value

    @property
    def location(self) -> str:
        """Where the vectors live, as messages name it."""
        return f"the collection {self._name!r} on {self._url}" if self._url else f"the embedded index at {self._path}"

    @property
    def store_id(self) -> str | None:
        """The note graph this index was built from (None: not yet claimed, or written by release 0.1)."""
        return (self._collection.metadata or {}).get(STORE_KEY)

    def claim(self, store_id: str) -> None:
        self._on_collection("record its store", lambda c: c.modify(metadata={STORE_KEY: store_id}))

    def reset(self, store_id: str) -> None:
        """Drop every vector and start an empty collection for `store_id` (a rebuild follows).

        Embedded, the dropped collection's HNSW folders are removed too: Chroma 1.5 leaves them on
        disk, and hnswlib only marks a deleted vector, keeping its bytes, so a forgotten note's vector
        stayed there (cosine 1.0) until this. Other collections in the folder keep theirs."""
        left = self._segment_folders() if self.mode == "embedded" else []

        def reset() -> None:
            with contextlib.suppress(NotFoundError):  # a server that lost it
                self._client.delete_collection(self._name)
            self._open_collection()
            self._collection.modify(metadata={STORE_KEY: store_id})

        with _reachable("reset"):
            self._answered("reset", reset)
        for folder in left:
            try:
                shutil.rmtree(folder)
            except OSError as exc:  # the rebuild goes on; the old vectors stay on disk until a later one
                log.warning("could not remove the dropped index's folder %s: %s", folder, exc)

    def _segment_folders(self) -> list[Path]:
        """This collection's HNSW folders: Chroma names each after a segment of the collection, listed
        in its `segments` table (Chroma 1.5's layout; if that cannot be read, none is named)."""
        catalog = f"file:{self._path / 'chroma.sqlite3'}?mode=ro"
        try:
            with contextlib.closing(sqlite3.connect(catalog, uri=True)) as db:
                rows = db.execute("SELECT id FROM segments WHERE collection = ?", (str(self._collection.id),)).fetchall()
        except sqlite3.Error as exc:
            log.warning("cannot list the index's segments, so its dropped folders stay on disk: %s", exc)
            return []
        return [self._path / row[0] for row in rows if (self._path / row[0]).is_dir()]

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
        """Write the notes' vectors, in chunks: Chroma refuses a call over its maximum batch (5,461 embedded),
        and a refused outbox would be sent again, whole, before every later write."""
        for start in range(0, len(notes), WRITE_CHUNK):
            part = notes[start:start + WRITE_CHUNK]
            vectors = np.asarray(embeddings[start:start + WRITE_CHUNK], dtype=np.float32)
            self._on_collection("write", lambda c: c.upsert(
                ids=[self.token("id", n.id) for n in part], embeddings=vectors,
                metadatas=[self.metadata(n) for n in part],
            ))

    def metadata(self, note: Scoped) -> dict[str, Any]:
        """The index's metadata of a note: its scope as tokens ('' for none) and whether it is archived."""
        meta: dict[str, Any] = {
            name: "" if getattr(note, name) is None else self._scope_token(name, getattr(note, name)) for name in SCOPES
        }
        meta["archived"] = note.archived
        return meta

    def delete(self, note_ids: Sequence[str]) -> None:
        for start in range(0, len(note_ids), WRITE_CHUNK):  # as `upsert`
            part = note_ids[start:start + WRITE_CHUNK]
            self._on_collection("delete", lambda c: c.delete(ids=[self.token("id", i) for i in part]))

    def discard(self, tokens: Sequence[str]) -> None:
        """Delete entries by token (strays no note of the graph claims)."""
        if tokens:
            self._on_collection("delete", lambda c: c.delete(ids=list(tokens)))

    def count(self) -> int:
        return self._on_collection("count", lambda c: c.count())

    def tokens(self) -> set[str]:
        """The index's ids (tokens) of every note it holds."""
        return set(self._on_collection("list", lambda c: c.get(include=[]))["ids"])

    def nearest(
        self, embeddings: np.ndarray, n: int, conditions: dict[str, Any] | None = None
    ) -> list[list[tuple[str, float]]]:
        """The n nearest entries to each embedding, as (token, cosine similarity); with `conditions`,
        only entries whose index metadata equal them (Chroma's `where`: it checks every entry that
        meets them before searching, 35 ms at 10k notes against a millisecond unfiltered, so
        `IndexSync.search` filters an unfiltered search first and comes here only when that falls short)."""
        for attempt in range(SEARCH_ATTEMPTS):
            try:
                result = self._on_collection("search", lambda c: c.query(
                    query_embeddings=np.asarray(embeddings, dtype=np.float32), n_results=n,
                    where=where_clause(conditions or {}), include=["distances"],
                ))
                break
            except StoreUnavailableError as exc:
                if UNSAVED_GRAPH not in str(exc) or attempt == SEARCH_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * 2**attempt)
        return [
            [(i, 1.0 - d) for i, d in zip(ids, distances)]
            for ids, distances in zip(result["ids"], result["distances"])
        ]

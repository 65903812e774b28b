"""`AgentMemStore`: a LangGraph `BaseStore` kept in agentmem (`pip install agentmem[langgraph]`).

`graph.compile(store=AgentMemStore(memory=mem))` gives a LangGraph agent (and langmem's memory tools)
a store whose items are agentmem notes, so what the agent files away is also recalled, linked,
faded and consolidated like any other memory.

- **Items are notes.** An item's value is kept intact (as JSON, in the note's metadata beside its
  namespace and key); the note's text, which is embedded and searched, is the value's text: the
  strings at the store's `index_fields` (or at a put's `index` paths), else every string in the
  value. A put on an existing key updates the note (its history keeps the old value), a delete
  forgets it.
- **A text longer than a note holds** (`max_text_chars`) is neither refused nor cut: the item's note
  holds its first part and further notes (`langgraph.part` 1, 2, ...; no value of their own) the rest,
  cut at whitespace as the chat-history adapter cuts long turns, so every word of the item can be
  searched. LangGraph's InMemoryStore likewise indexes several texts per item (a vector each) and
  scores the item by its best one: a search returns the item once, whole, at its best part's rank.
  They are the item's notes, each naming its note id: rewritten when its text changes, forgotten with it
  (or by `sweep_ttl` once it is gone, however it was forgotten), counted as recalled with it; only the item
  is listed and got.
- **`index=False`** (or paths that hold no text) keeps the value out of the index, as LangGraph's
  stores do: the note says only `UNINDEXED_TEXT` and is marked `langgraph.indexed: false`, so
  neither the store's ranking nor `Memory.recall`, the servers or `MemoryChat` can find the value's
  words; a query search returns such items only after the ranked ones, with score None.
- **Namespaces and scopes.** Every item lives in exactly the store's scope (`user_id=`, `agent_id=`),
  as each LangGraph store has its own items: a store with no `user_id` holds the notes of no user
  (not every user's), a user's store without `agent_id` not its agents' items, so one (namespace,
  key) is one item of the store, and a put or delete changes no other store's item. With
  `user_from_namespace=i` the namespace's label `i` names the user instead, so langmem's
  `("memories", "{langgraph_user_id}")` files each user's memories under that agentmem user.
  The namespace path itself is note metadata, one key per prefix length, so a namespace prefix is
  an equality filter.
- **Only the store's own notes are items.** Any caller of the memory can set metadata, so a note is
  read as an item only if its item metadata is whole and consistent and, with `user_from_namespace`,
  it belongs to the user its namespace names (reads are narrowed to that user whenever the namespace
  or prefix names one). Other notes are skipped with a logged warning: a user cannot plant an item
  in another user's namespace, take over their key, or break a listing.
- **Search.** `search(prefix, query=...)` is agentmem's recall (hybrid ranking; each returned note
  counts as recalled), restricted to the prefix; without a query, items come oldest first.
  `filter` matches the item's value as LangGraph's own stores do: equality, nested dicts, and the
  `$eq $ne $gt $gte $lt $lte` operators. The filter and the scope apply before the limit, as in
  LangGraph's stores, so no match is cut; but recall ranks at most `MAX_K` (1000) notes of a
  prefix, so matches it did not reach come after the ranked ones, unranked (score None, oldest
  first), as LangGraph's stores page the items they did not embed. A `limit` above 1000 works so.
- **TTL is an explicit expiry**, not the forgetting curve: an item put with `ttl` (minutes, at most a
  century) expires that long after its last write or read, as LangGraph's `refresh_ttl` says: every
  read restarts the clock (expiry = now + ttl) unless told not to (`refresh_ttl=False`, or a
  `TTLConfig` with `refresh_on_read: False`). A refresh is an update of the note (a version in its
  history, and the item's `updated_at` moves); reads at the same instant write once. Expired items are invisible to
  the store and forgotten the next time an operation comes across them, when a store is opened, and
  by `sweep_ttl()` — every `sweep_interval_minutes` if the `TTLConfig` gives one (or after
  `start_ttl_sweeper()`; `stop_ttl_sweeper()` ends it). Until then an expired item's note is still
  a note to the rest of agentmem: `Memory.recall`, the servers' search and `MemoryChat` can recall it.
- The forgetting curve only ranks search results: `decay()` may archive a store item for recall,
  but the store still gets, lists and searches it until it is deleted or expires. A query search
  counts as recalled only the items of the page it returns.

Bad input raises what LangGraph raises (`InvalidNamespaceError`) or agentmem's `InvalidInputError`
(a `ValueError`: e.g. a value that is not JSON), and every put of a batch is checked before any is
written. A value is kept as JSON gives it back (and as PostgresStore does): tuples come back as lists.
What JSON would change or a JSON store refuses is refused rather than altered: non-string dict keys,
NaN and infinities, NUL and lone surrogates in strings and keys.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from concurrent.futures import Future, wait
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from langgraph.store.base import (
    BaseStore, GetOp, InvalidNamespaceError, Item, ListNamespacesOp, MatchCondition, Op, PutOp, Result, SearchItem,
    SearchOp, TTLConfig, get_text_at_path, validate_op_namespace,
)

from .. import validation
from ..errors import AgentMemError, InvalidInputError, NoteNotFoundError, StoreClosedError
from ..memory import Memory
from ..notes import MAX_METADATA_KEYS, Note
from .turns import note_texts

log = logging.getLogger(__name__)

NAMESPACE, KEY, VALUE = "langgraph.namespace", "langgraph.key", "langgraph.value"
TTL, EXPIRES = "langgraph.ttl", "langgraph.expires_at"
REFRESH_STEP = 0.01  # the least share of its ttl a read moves an item's expiry by (below it, nothing is written)
INDEXED = "langgraph.indexed"   # False for an item put with index=False: its note says only UNINDEXED_TEXT
UNINDEXED_TEXT = "(a LangGraph store item kept out of the search index)"
PREFIX = "langgraph.prefix."
PART = "langgraph.part"   # on a further note of an item whose text a note cannot hold: which part (1, 2, ...) it is
ITEM = "langgraph.item"   # on such a part: its item's note id (a put of the key after the item is gone makes another)
MAX_TTL_MINUTES = 100 * 366 * 24 * 60   # a century: any longer overflows dates, and means "keep"
# A put reads (is the key stored?) then writes; this keeps two threads putting one key, through any store
# of this process, from making two notes, and a reader forgetting an item it read as expired from forgetting
# a put made since (`_expire`). (Memory's own lock covers each call, not the pair.)
WRITING = threading.Lock()
MAX_DEPTH = MAX_METADATA_KEYS - 7   # NAMESPACE, KEY, VALUE, TTL, EXPIRES, INDEXED, a prefix key per length 0..depth
OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: float(a) > float(b),
    "$gte": lambda a, b: float(a) >= float(b),
    "$lt": lambda a, b: float(a) < float(b),
    "$lte": lambda a, b: float(a) <= float(b),
}


def prefix_key(length: int) -> str:
    """The metadata key holding an item's namespace prefix of this length ('' for length 0: every item)."""
    return f"{PREFIX}{length}"


def joined(labels: Iterable[str]) -> str:
    return ".".join(labels)   # LangGraph forbids '.' in labels, so this is unambiguous


class AgentMemStore(BaseStore):
    """LangGraph's long-term store over a `Memory`: put / get / search / delete / list_namespaces."""

    supports_ttl = True

    def __init__(
        self,
        *,
        memory: Memory,
        user_id: str | None = None,
        agent_id: str | None = None,
        user_from_namespace: int | None = None,
        index_fields: list[str] | None = None,
        ttl: TTLConfig | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """`clock` gives the time TTLs are measured with (default: now, UTC)."""
        if not isinstance(memory, Memory):
            raise InvalidInputError("AgentMemStore keeps its items in a Memory: pass memory=Memory(...)")
        if user_from_namespace is not None and (
            isinstance(user_from_namespace, bool) or not isinstance(user_from_namespace, int) or user_from_namespace < 0
        ):
            raise InvalidInputError("user_from_namespace is the position of a namespace label (an integer >= 0)")
        if user_from_namespace is not None and user_id is not None:
            raise InvalidInputError("give either user_id or user_from_namespace, not both")
        if index_fields is not None and not (
            isinstance(index_fields, list) and all(isinstance(f, str) and f for f in index_fields)
        ):
            raise InvalidInputError("index_fields must be a list of field paths")
        interval = (ttl or {}).get("sweep_interval_minutes")
        if interval is not None:
            _check_minutes(interval, "sweep_interval_minutes")
        self.memory = memory
        self.user_id = validation.scope("user_id", user_id)
        self.agent_id = validation.scope("agent_id", agent_id)
        self.user_from_namespace = user_from_namespace
        self.index_fields = index_fields
        self.ttl_config = ttl
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self._sweeping: Future[None] | None = None
        self._stop_sweeping = threading.Event()
        self.sweep_ttl()   # items that expired while no store was open leave the memory now
        if interval is not None:
            self.start_ttl_sweeper(interval)

    # ---- TTL sweeping (the methods LangGraph's PostgresStore and SqliteStore offer) -----

    def sweep_ttl(self) -> int:
        """Forget every expired item of the store's scope, and the parts whose item is gone; returns how many
        items were forgotten."""
        now = self.clock()
        expired = sum(not self._live(note, now) for note in self._notes({prefix_key(0): ""}, ()))
        self._forget_orphans()
        return expired

    def _forget_orphans(self) -> None:
        """Forget the parts whose item's note is gone: forgotten through another path than this store (REST,
        MCP, `Memory.forget`), which knows nothing of parts, or left by a failure. Nothing else would ever
        forget them, and other recalls (`Memory.recall`, the servers) would find them."""
        parts = self._notes({prefix_key(0): ""}, (), parts=True)
        items = self.memory.known_ids([part.metadata[ITEM] for part in parts])
        self._forget_notes([part for part in parts if part.metadata[ITEM] not in items])

    def start_ttl_sweeper(self, sweep_interval_minutes: float | None = None) -> Future[None]:
        """Sweep every `sweep_interval_minutes` (default: the TTLConfig's, else 5) in a daemon thread
        until `stop_ttl_sweeper()`, the future is cancelled or the memory is closed. Idempotent."""
        if self._sweeping is not None and not self._sweeping.done():
            return self._sweeping
        interval = sweep_interval_minutes or (self.ttl_config or {}).get("sweep_interval_minutes") or 5
        _check_minutes(interval, "sweep_interval_minutes")
        future: Future[None] = Future()
        self._stop_sweeping.clear()

        def sweep_until_stopped() -> None:
            error: Exception | None = None
            try:
                while not self._stop_sweeping.wait(interval * 60) and not future.cancelled():
                    try:
                        self.sweep_ttl()
                    except StoreClosedError:
                        break
                    except AgentMemError:   # a failed sweep is retried at the next one
                        log.exception("TTL sweep failed")
            except Exception as exc:   # anything else ends the sweeper; its future says why
                error = exc
            if future.set_running_or_notify_cancel():
                future.set_result(None) if error is None else future.set_exception(error)

        self._sweeping = future
        threading.Thread(target=sweep_until_stopped, name="agentmem-ttl-sweeper", daemon=True).start()
        return future

    def stop_ttl_sweeper(self, timeout: float | None = None) -> bool:
        """Stop the sweeper; True once it has stopped (or none was running), False if `timeout` ran out."""
        if self._sweeping is None:
            return True
        self._stop_sweeping.set()
        wait([self._sweeping], timeout)
        return self._sweeping.done()

    # ---- BaseStore ------------------------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Reads see the store as it was before the batch (as LangGraph's InMemoryStore does); then the
        puts are applied, the last put of a key winning. Every op is checked before the first runs: a
        refused batch reinforces, refreshes and writes nothing."""
        ops = list(ops)
        for op in ops:
            if not isinstance(op, (GetOp, SearchOp, ListNamespacesOp, PutOp)):
                raise InvalidInputError(f"unknown store operation: {type(op).__name__}")
            namespace = getattr(op, "namespace", getattr(op, "namespace_prefix", ()))
            if not isinstance(namespace, tuple):   # a string would pass as its letters: "ab" as ("a", "b")
                raise InvalidInputError(f"a namespace is a tuple of strings, not a {type(namespace).__name__}")
            validate_op_namespace(op)
            _check_read(op, self.memory.config.max_text_chars)
        puts = {(op.namespace, op.key): op for op in ops if isinstance(op, PutOp)}
        planned = [(op, self._planned_note(op)) for op in puts.values()]
        now = self.clock()
        results: list[Result] = []
        for op in ops:
            if isinstance(op, GetOp):
                results.append(self._get(op, now))
            elif isinstance(op, SearchOp):
                results.append(self._search(op, now))
            elif isinstance(op, ListNamespacesOp):
                results.append(self._list_namespaces(op, now))
            else:
                results.append(None)
        with WRITING:
            self._write(planned)
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """The same batch in a worker thread: embedding and SQLite are blocking."""
        return await asyncio.to_thread(self.batch, list(ops))

    # ---- reading --------------------------------------------------------------------

    def _get(self, op: GetOp, now: datetime) -> Item | None:
        note = self._find(op.namespace, op.key, now)
        if note is not None and op.refresh_ttl:
            note = self._refreshed(note, now)
        return None if note is None else self._item(note, Item)

    def _search(self, op: SearchOp, now: datetime) -> list[SearchItem]:
        prefix = _prefix_filter(op.namespace_prefix)
        wanted = op.offset + op.limit

        def admissible(note: Note) -> bool:
            value = note.metadata[VALUE]   # a filter's top-level keys are field names, even those starting with $
            return self._live(note, now) and all(_value_matches(value.get(k), v) for k, v in (op.filter or {}).items())

        if not op.query:   # as in LangGraph's stores, an empty query lists
            notes = self._notes(prefix, op.namespace_prefix)
            found = [(n, None) for n in notes if admissible(n)][op.offset: wanted]
        else:
            found = self._ranked(op.query, op.namespace_prefix, wanted, admissible)[op.offset: wanted]
            self._reinforce([each for note, _ in found for each in (note, *self._parts(note))])
        if op.refresh_ttl:
            found = [(self._refreshed(note, now), score) for note, score in found]
        return [self._item(note, SearchItem, score=score) for note, score in found if note is not None]

    def _ranked(
        self, query: str, namespace_prefix: tuple[str, ...], wanted: int, admissible: Callable[[Note], bool]
    ) -> list[tuple[Note, float | None]]:
        """The admissible items under the prefix, the indexed ones ranked by recall first, until `wanted`.

        Recall is widened until `wanted` admissible indexed items came back, none are left, or it
        reaches `MAX_K` notes; then what it did not rank (the unindexed items, and matches beyond
        its reach) follows, score None, oldest first. Nothing is reinforced here: the caller counts
        as recalled only the page it returns."""
        scope = self._read_scope(namespace_prefix)
        if wanted == 0 or scope is None:
            return []
        prefix = _prefix_filter(namespace_prefix)
        k = min(wanted, validation.MAX_K)
        while True:
            hits = self.memory.recall(query, k=k, filters=prefix, include_archived=True, reinforce=False, **scope)
            ranked: list[tuple[Note, float | None]] = []
            seen: set[str] = set()
            for hit in hits:   # best first: an item ranks at its best note (itself or a part)
                note = self._item_of(hit.note)
                if note is None or note.id in seen:
                    continue
                seen.add(note.id)
                if note.metadata.get(INDEXED, True) and admissible(note):
                    ranked.append((note, hit.score))
            if len(ranked) >= wanted:
                return ranked
            if len(hits) < k or k == validation.MAX_K:
                break
            k = min(2 * k, validation.MAX_K)
        # all of the prefix, not only its unindexed items, even when recall found fewer than k: over a
        # filter that admits few of a large scope's notes, recall's over-fetch can miss some it admits
        rest = self._notes(prefix, namespace_prefix)
        seen = {note.id for note, _ in ranked}
        return ranked + [(note, None) for note in rest if note.id not in seen and admissible(note)]

    def _reinforce(self, notes: list[Note]) -> None:
        """Count these notes as recalled now (as they were written: the TTLs' `clock` is not the notes'), those made
        by then (one from a host whose clock runs ahead is not, as a recall counts it); one forgotten meanwhile
        (expired, deleted) is skipped. A search counts an item's parts with it: the item is scored by its best
        part, and parts left to fade would rank its later words lower and lower."""
        self.memory.reinforce([note.id for note in notes], at=datetime.now(timezone.utc), strict=False)

    def _list_namespaces(self, op: ListNamespacesOp, now: datetime) -> list[tuple[str, ...]]:
        depth = op.max_depth
        items = [n for n in self._notes({prefix_key(0): ""}, ()) if self._live(n, now)]
        stored = {tuple(n.metadata[NAMESPACE].split(".")) for n in items}
        matching = {ns for ns in stored if all(_namespace_matches(c, ns) for c in op.match_conditions or ())}
        return sorted({ns[:depth] for ns in matching})[op.offset: op.offset + op.limit]

    def _find(self, namespace: tuple[str, ...], key: str, now: datetime | None) -> Note | None:
        """The note holding this item (None if there is none, or it expired by `now`)."""
        found = self._notes(_item_filter(namespace, key), namespace)
        note = found[0] if found else None
        return note if note is not None and (now is None or self._live(note, now)) else None

    def _notes(self, filters: dict[str, str], namespace: tuple[str, ...], parts: bool = False) -> list[Note]:
        """The items' notes matching `filters`, read in the scope of `namespace` (a whole one or a prefix);
        with `parts`, the further notes holding the rest of long items' texts instead."""
        scope = self._read_scope(namespace)
        if scope is None:
            return []
        notes = self.memory.notes(filters=filters, include_archived=True, **scope)
        return [note for note in notes if (self._is_part(note) if parts else self._is_item(note))]

    def _parts(self, item: Note) -> list[Note]:
        """The further notes of this item's text, in order: those naming its note id, not its key, so the
        parts of another item of the key (put after this one was forgotten) are never taken for its own."""
        parts = self._notes({ITEM: item.id}, tuple(item.metadata[NAMESPACE].split(".")), parts=True)
        return sorted(parts, key=lambda note: note.metadata[PART])

    def _item_of(self, note: Note) -> Note | None:
        """The item's note for a note recall found: itself, or the item a part names (None: no item's, as for a
        part whose item is gone, even if its key was put again since)."""
        if self._is_item(note):
            return note
        if not self._is_part(note):
            return None
        try:
            item = self.memory.get(note.metadata[ITEM])
        except NoteNotFoundError:
            return None
        same = all(item.metadata.get(k) == note.metadata[k] for k in (NAMESPACE, KEY))
        return item if same and self._is_item(item) else None

    def _forget(self, item: Note) -> None:
        """Forget an item's note, then its parts (one another caller forgot meanwhile is skipped)."""
        self._forget_notes([item])
        self._forget_notes(self._parts(item))

    def _read_scope(self, namespace: tuple[str, ...]) -> dict[str, str | None] | None:
        """How far a read of this namespace (or prefix) narrows the memory: the store's scope, or the
        user the namespace names with `user_from_namespace` (None: a user no item can have). A None
        here does not narrow; `_is_item` then keeps exactly the store's scope."""
        position = self.user_from_namespace
        if position is None or position >= len(namespace):
            return {"user_id": self.user_id, "agent_id": self.agent_id}
        try:
            return {"user_id": validation.scope("user_id", namespace[position]), "agent_id": self.agent_id}
        except InvalidInputError:
            return None

    def _is_item(self, note: Note) -> bool:
        """Whether the note is an item of this store: in exactly its scope, with whole item metadata, in
        the user its namespace names. Another scope's notes are other stores' (skipped silently); anyone
        who can write to the memory can set metadata, so what merely looks like an item is skipped."""
        if PART in note.metadata:   # a further note of an item's text, not an item
            return False
        if note.agent_id != self.agent_id or (self.user_from_namespace is None and note.user_id != self.user_id):
            return False
        problem = _malformed(note.metadata)
        if problem is None and self.user_from_namespace is not None:
            owner = self._user_of(tuple(note.metadata[NAMESPACE].split(".")))
            if note.user_id != owner:
                problem = f"it belongs to user {note.user_id!r}, its namespace to {owner!r}"
        if problem is not None:
            log.warning("note %s is skipped by the LangGraph store: %s", note.id, problem)
        return problem is None

    def _is_part(self, note: Note) -> bool:
        """Whether the note is a further note of an item's text in this store, as `_write` makes them."""
        meta = note.metadata
        namespace, key, part = meta.get(NAMESPACE), meta.get(KEY), meta.get(PART)
        if not (isinstance(namespace, str) and all(namespace.split(".")) and isinstance(key, str)):
            return False
        if isinstance(part, bool) or not isinstance(part, int) or part < 1 or note.agent_id != self.agent_id:
            return False
        if not _is_note_id(meta.get(ITEM)):
            return False
        return note.user_id == self._user_of(tuple(namespace.split(".")))

    def _live(self, note: Note, now: datetime) -> bool:
        """False for an expired item, which is forgotten on the way (see `_expire`)."""
        if _expired(note, now):
            self._expire(note, now)
            return False
        return True

    def _expire(self, note: Note, now: datetime) -> None:
        """Forget an item read as expired, unless it was put again since it was read. Under `WRITING`, as a put:
        a put between the read and the forget would otherwise be forgotten with it, new parts and all."""
        with WRITING:
            try:
                current = self.memory.get(note.id)
            except NoteNotFoundError:   # another reader forgot it
                return
            if self._is_item(current) and _expired(current, now):
                self._forget(current)

    def _refreshed(self, note: Note, now: datetime) -> Note | None:
        """Reading an item with a TTL restarts its clock: it expires `ttl` minutes from now, as in
        LangGraph's stores. A refresh is an update, which keeps a version, so a read that would move the
        expiry by less than 1% of the ttl (6 s of 10 minutes) writes nothing: an agent reading an item at every
        step would otherwise add a version per step. None if the item was forgotten meanwhile."""
        ttl = note.metadata.get(TTL)
        if ttl is None or _expiry(now, ttl) - note.metadata[EXPIRES] < ttl * 60 * REFRESH_STEP:
            return note
        with WRITING:   # from the item as it is now: a put since `note` was read would otherwise be undone
            try:
                current = self.memory.get(note.id)
            except NoteNotFoundError:
                return None
            ttl = current.metadata.get(TTL)
            if not self._is_item(current) or ttl is None:
                return current if self._is_item(current) else None
            return self.memory.update(current.id, metadata={**current.metadata, EXPIRES: _expiry(now, ttl)})

    @staticmethod
    def _item(note: Note, kind: type[Item], **extra: Any) -> Item:
        meta = note.metadata
        return kind(
            namespace=tuple(meta[NAMESPACE].split(".")), key=meta[KEY], value=meta[VALUE],
            created_at=note.created_at, updated_at=note.updated_at, **extra,
        )

    # ---- writing --------------------------------------------------------------------

    def _planned_note(self, op: PutOp) -> list[tuple[str, dict[str, Any]]] | None:
        """The text and metadata of the notes a put will write, checked now: the item's, then the parts of
        a text longer than a note holds (None for a delete, whose key is checked)."""
        _item_filter(op.namespace, op.key)
        if op.value is None:
            return None
        if not op.namespace:
            raise InvalidNamespaceError("Namespace cannot be empty.")
        if op.namespace[0] == "langgraph":
            raise InvalidNamespaceError(f'Root label for namespace cannot be "langgraph". Got: {op.namespace}')
        if len(op.namespace) > MAX_DEPTH:
            raise InvalidInputError(f"namespaces are at most {MAX_DEPTH} labels deep here, got {len(op.namespace)}")
        if not isinstance(op.value, Mapping):
            raise InvalidInputError(f"a stored value must be a dict, got {type(op.value).__name__}")
        if op.ttl is not None:
            _check_minutes(op.ttl, "ttl")
        if op.index is not None and op.index is not False and not (
            isinstance(op.index, list) and all(isinstance(p, str) and p for p in op.index)
        ):
            raise InvalidInputError("index must be False, None or a list of field paths")
        value = _with_lists(op.value)
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"a stored value must be JSON: {exc}") from None
        if not _string_keys(value):
            raise InvalidInputError("a stored value's dicts must have string keys (JSON would change the others)")
        validation.scope("user_id", self._user_of(op.namespace))
        text = None if op.index is False else self._text(value, op.index if op.index is not None else self.index_fields)
        metadata = {
            NAMESPACE: joined(op.namespace), KEY: op.key, VALUE: value, TTL: op.ttl, INDEXED: text is not None,
            EXPIRES: None if op.ttl is None else _expiry(self.clock(), op.ttl),
            **{prefix_key(n): joined(op.namespace[:n]) for n in range(len(op.namespace) + 1)},
        }
        texts = note_texts(text, self.memory.config.max_text_chars) if text else [UNINDEXED_TEXT]
        part = {k: v for k, v in metadata.items() if k in (NAMESPACE, KEY) or k.startswith(PREFIX)}
        return [(texts[0], validation.metadata(metadata))] + [
            (text, validation.metadata({**part, PART: n})) for n, text in enumerate(texts[1:], 1)
        ]

    def _write(self, planned: list[tuple[PutOp, list[tuple[str, dict[str, Any]]] | None]]) -> None:
        """Deletes forget, puts on stored keys rewrite their item (`_rewrite`), and the new items are created
        together (`_create`)."""
        new: list[tuple[str | None, list[tuple[str, dict[str, Any]]]]] = []
        for op, notes in planned:
            existing = self._find(op.namespace, op.key, None)
            if notes is None:
                if existing is not None:
                    self._forget(existing)
            elif existing is None or not self._rewrite(existing, notes):
                new.append((self._user_of(op.namespace), notes))
        self._create(new)

    def _rewrite(self, item: Note, notes: list[tuple[str, dict[str, Any]]]) -> bool:
        """Put these notes on a stored item: its new parts first, then its own note, then its old parts go, so a
        failure leaves it as it was (this call's parts are forgotten again) or, once its note is written, whole
        with its new value: the put is done, and old parts that could not be forgotten (logged; a search by
        their words still finds the item) go at its next rewrite. False if it was forgotten meanwhile (through
        REST, MCP, `Memory.forget`): then it is put anew."""
        old = self._parts(item)
        changed = [(p.text, p.metadata) for p in old] != _part_notes(item, notes)
        written = self._remember(_part_drafts(item, notes)) if changed else []
        text, metadata = notes[0]
        try:
            self.memory.update(item.id, text=None if text == item.text else text, metadata=metadata)
        except BaseException as exc:
            self._forget_notes(written)
            if isinstance(exc, NoteNotFoundError):
                return False
            raise
        try:
            self._forget_notes(old if changed else [])
        except AgentMemError:   # the new value is stored: a put that raised now would have changed something
            log.warning("item %s keeps its old parts until its next rewrite", item.id, exc_info=True)
        return True

    def _create(self, new: list[tuple[str | None, list[tuple[str, dict[str, Any]]]]]) -> None:
        """Remember new items (user, notes) in one transaction, then their parts, which name their item's note
        id, in another; if that fails the items are forgotten again, so none is left without its later words."""
        items = self._remember([{"text": notes[0][0], "user_id": user, "metadata": notes[0][1]} for user, notes in new])
        try:
            self._remember([draft for item, (_, notes) in zip(items, new) for draft in _part_drafts(item, notes)])
        except BaseException:
            self._forget_notes(items)
            raise

    def _remember(self, drafts: list[dict[str, Any]]) -> list[Note]:
        """These notes, remembered in one transaction, in order."""
        return self.memory.remember_many(drafts, agent_id=self.agent_id, deduplicate=False) if drafts else []

    def _forget_notes(self, notes: list[Note]) -> None:
        """Forget these notes; one another caller forgot meanwhile is skipped."""
        for note in notes:
            try:
                self.memory.forget(note.id)
            except NoteNotFoundError:
                pass

    def _user_of(self, namespace: tuple[str, ...]) -> str | None:
        position = self.user_from_namespace
        if position is None:
            return self.user_id
        return namespace[position] if position < len(namespace) else None

    def _text(self, value: dict[str, Any], paths: list[str] | None) -> str | None:
        """What the note says: the text at `paths` (None if they hold none: then, as in LangGraph's
        stores, nothing of the item is indexed), else every string in the value, else its JSON."""
        if paths is None:
            texts = list(_strings(value))
        else:
            texts = [text for path in paths for text in get_text_at_path(value, path)]
        text = "\n".join(t.strip() for t in texts if t.strip())
        if not text and paths is not None:
            return None
        text = text or json.dumps(value, sort_keys=True, ensure_ascii=False)
        return text   # as long as it is: `_planned_note` cuts it into notes


def _expiry(now: datetime, minutes: float) -> float:
    return (now + timedelta(minutes=minutes)).timestamp()


def _expired(note: Note, now: datetime) -> bool:
    expires = note.metadata.get(EXPIRES)
    return expires is not None and expires <= now.timestamp()


def _part_notes(item: Note, notes: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """The text and metadata of the parts of this item planned in `notes` (after its own), naming its note id."""
    return [(text, {**metadata, ITEM: item.id}) for text, metadata in notes[1:]]


def _part_drafts(item: Note, notes: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """`_part_notes` as `remember_many` takes them, in the item's user."""
    return [{"text": text, "user_id": item.user_id, "metadata": meta} for text, meta in _part_notes(item, notes)]


def _is_note_id(value: Any) -> bool:
    try:
        validation.note_id(value)
    except InvalidInputError:
        return False
    return True


def _check_minutes(minutes: Any, name: str) -> None:
    if not _is_minutes(minutes):
        raise InvalidInputError(f"{name} is a number of minutes in (0, {MAX_TTL_MINUTES}], got {minutes!r}")


def _is_minutes(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value <= MAX_TTL_MINUTES


def _malformed(meta: Mapping[str, Any]) -> str | None:
    """What makes this metadata not an item's as `_planned_note` writes it (None: nothing)."""
    namespace, key, value = meta.get(NAMESPACE), meta.get(KEY), meta.get(VALUE)
    if not isinstance(namespace, str) or not all(namespace.split(".")):
        return f"{NAMESPACE} is not a namespace"
    if not isinstance(key, str):
        return f"{KEY} is not a key"
    if not isinstance(value, dict):
        return f"{VALUE} is not a dict"
    if not isinstance(meta.get(INDEXED, True), bool):
        return f"{INDEXED} is not a bool"
    ttl, expires = meta.get(TTL), meta.get(EXPIRES)
    an_expiry = not isinstance(expires, bool) and isinstance(expires, (int, float)) and math.isfinite(expires)
    if not (ttl is None and expires is None) and not (_is_minutes(ttl) and an_expiry):
        return f"{TTL} and {EXPIRES} are not a TTL and its expiry"
    labels = namespace.split(".")
    prefixes = {prefix_key(n): joined(labels[:n]) for n in range(len(labels) + 1)}
    if {k: v for k, v in meta.items() if k.startswith(PREFIX)} != prefixes:
        return f"its {PREFIX}* keys do not match its namespace"
    return None


def _item_filter(namespace: tuple[str, ...], key: Any) -> dict[str, Any]:
    """The filter that finds an item's note, checked: a key that cannot be looked up is refused
    before any op of its batch runs."""
    if not isinstance(key, str):
        raise InvalidInputError("keys are strings")
    return validation.filters({NAMESPACE: joined(namespace), KEY: key})


def _prefix_filter(namespace_prefix: tuple[str, ...]) -> dict[str, Any]:
    """The filter that finds the items under a namespace prefix, checked like `_item_filter`."""
    return validation.filters({prefix_key(len(namespace_prefix)): joined(namespace_prefix)})


def _check_read(op: Op, max_query_chars: int) -> None:
    """A read's arguments, checked before any op of its batch runs (a search reinforces what it finds)."""
    if isinstance(op, GetOp):
        _item_filter(op.namespace, op.key)
    elif isinstance(op, SearchOp):
        _prefix_filter(op.namespace_prefix)
        _check_window(op.limit, op.offset)
        if op.query:  # an empty one lists
            validation.text(op.query, max_query_chars, "query")
        if op.filter is not None and not isinstance(op.filter, Mapping):
            raise InvalidInputError("filter must be a dict")
        for value in (op.filter or {}).values():   # top-level keys are field names, `$` or not
            _check_operators(value)
    elif isinstance(op, ListNamespacesOp):
        _check_window(op.limit, op.offset)
        depth = op.max_depth
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
            raise InvalidInputError("max_depth must be an integer >= 1")


def _check_operators(expected: Any) -> None:
    """Every `$` operator below a filter's field is one `_value_matches` knows, whether or not an item is compared."""
    if isinstance(expected, Mapping):
        if any(str(key).startswith("$") for key in expected):
            for key in expected:
                _operator(str(key))
        else:
            for value in expected.values():
                _check_operators(value)
    elif isinstance(expected, (list, tuple)):
        for value in expected:
            _check_operators(value)


def _check_window(limit: Any, offset: Any) -> None:
    for name, number in (("limit", limit), ("offset", offset)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise InvalidInputError(f"{name} must be an integer >= 0, got {number!r}")


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _with_lists(value: Any) -> Any:
    """The value with its tuples as lists, as JSON (and LangGraph's PostgresStore) gives them back."""
    if isinstance(value, Mapping):
        return {key: _with_lists(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_with_lists(item) for item in value]
    return value


def _string_keys(value: Any) -> bool:
    if isinstance(value, Mapping):
        return all(isinstance(key, str) and _string_keys(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_string_keys(item) for item in value)
    return True


def _value_matches(value: Any, expected: Any) -> bool:
    """LangGraph's filter semantics below a field: nested dicts match key by key, `$` keys are operators,
    the rest is equality."""
    if isinstance(expected, Mapping):
        if any(str(key).startswith("$") for key in expected):
            return all(_operator(key)(value, operand) for key, operand in expected.items())
        return isinstance(value, Mapping) and all(_value_matches(value.get(k), v) for k, v in expected.items())
    if isinstance(expected, (list, tuple)):
        return (
            isinstance(value, (list, tuple)) and len(value) == len(expected)
            and all(_value_matches(a, b) for a, b in zip(value, expected))
        )
    return value == expected


def _operator(name: str) -> Callable[[Any, Any], bool]:
    if name not in OPERATORS:
        raise InvalidInputError(f"unsupported filter operator {name!r}; use one of {', '.join(OPERATORS)}")
    operator = OPERATORS[name]

    def safe(value: Any, operand: Any) -> bool:
        try:
            return operator(value, operand)
        except (TypeError, ValueError):
            return False

    return safe


def _namespace_matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    """A prefix or suffix condition, where the label '*' matches any label."""
    path = tuple(condition.path)
    if condition.match_type not in ("prefix", "suffix"):
        raise InvalidInputError(f"unsupported namespace match type {condition.match_type!r}")
    if len(path) > len(namespace):
        return False
    labels = namespace[: len(path)] if condition.match_type == "prefix" else namespace[len(namespace) - len(path):]
    return all(p in ("*", label) for p, label in zip(path, labels))

"""Property-based fuzzing of `Memory`'s public verbs (hypothesis strategies and the contract check).

Each generated call mixes well-formed and malformed arguments: text with lone surrogates and NUL,
times from year 1 to 9999 in any offset, integers up to 2**70, NaN and infinities, oversized and
nested metadata, unknown and malformed ids, paths to nowhere. The contract every call must keep:
it succeeds, or it raises an `AgentMemError` and the store's export is byte-identical to before.
Used by tests/test_fuzz.py (a bounded run) and agentmem.eval.soak (a long one).

The parametric verbs (consolidate, plan, answer) load the local model and are not fuzzed here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from ..errors import AgentMemError
from ..memory import Memory

EXTREME_TIMES = [datetime.min, datetime.max, datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))),
                 datetime(9999, 12, 31, 23, 59, 59), datetime(9999, 12, 31, tzinfo=timezone(timedelta(hours=-12)))]


@dataclass
class Call:
    verb: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        shown = [repr(a)[:60] for a in self.args] + [f"{k}={v!r:.60}" for k, v in self.kwargs.items()]
        return f"{self.verb}({', '.join(shown)})"


def texts() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(["Alice lives in Lisbon", "Bob plays the cello", "The deadline is March 3", "ok"]),
        st.text(max_size=40),
        st.text(alphabet=st.characters(codec=None, categories=["Cs", "Cc", "Zs", "Lu"]), max_size=8),
        st.just("x" * 10_001), st.just(""), st.just("  "), st.integers(), st.none(),
    )


def times() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.datetimes(timezones=st.one_of(st.none(), st.timezones())),
        st.sampled_from(EXTREME_TIMES), st.text(max_size=5),
    )


def scalars() -> st.SearchStrategy[Any]:
    return st.one_of(st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(), st.text(max_size=20))


def metadata() -> st.SearchStrategy[Any]:
    json_like = st.recursive(scalars() | st.none(), lambda inner: st.lists(inner, max_size=3)
                             | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
    return st.one_of(st.none(), st.dictionaries(st.text(max_size=70), json_like, max_size=4),
                     st.just({"k": "v" * 70_000}), st.integers(), st.lists(st.integers(), max_size=2))


def scopes() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.sampled_from(["alice", "bob"]), st.text(max_size=10), st.just("u" * 300),
                     st.integers())


def counts() -> st.SearchStrategy[Any]:
    return st.one_of(st.integers(min_value=-3, max_value=20), st.just(2**63), st.booleans(), st.floats(), st.none())


def note_ids(known: list[str]) -> st.SearchStrategy[Any]:
    existing = st.sampled_from(known) if known else st.just("0" * 32)
    return st.one_of(existing, existing, st.text(max_size=12), st.just("\ud800"), st.just("x" * 200),
                     st.integers(), st.none())


def paths(folder: Path) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from([folder / "fuzz.jsonl", folder, folder / "no" / "such" / "x.jsonl", ""]),
                     st.text(max_size=10).map(lambda name: folder / f"f{name}"), st.integers())


def calls(known: list[str], folder: Path) -> st.SearchStrategy[Call]:
    """One call to a public verb of `Memory`, its arguments drawn from the strategies above."""
    ids = note_ids(known)
    scope = dict(user_id=scopes(), agent_id=scopes(), session_id=scopes())
    tags = st.one_of(st.lists(st.text(max_size=70), max_size=4), st.just("notalist"), st.just(["t"] * 40))
    filters = st.one_of(st.none(), st.dictionaries(st.text(max_size=10), scalars(), max_size=2), st.integers())
    facts = st.one_of(st.none(), st.fixed_dictionaries({"prompt": texts(), "target": texts()}), st.integers())
    item = st.one_of(texts(), st.fixed_dictionaries({"text": texts()}, optional={"at": times(), "tags": tags}))
    return st.one_of(
        st.builds(lambda t, kw: Call("remember", (t,), kw), texts(), st.fixed_dictionaries(
            {}, optional=dict(at=times(), tags=tags, metadata=metadata(), fact=facts, **scope))),
        st.builds(lambda items, kw: Call("remember_many", (items,), kw), st.one_of(st.lists(item, max_size=3), texts()),
                  st.fixed_dictionaries({}, optional=dict(at=times(), **scope))),
        st.builds(lambda q, kw: Call("recall", (q,), kw), texts(), st.fixed_dictionaries(
            {}, optional=dict(k=counts(), at=times(), filters=filters, include_archived=st.booleans(), **scope))),
        st.builds(lambda kw: Call("notes", (), kw), st.fixed_dictionaries(
            {}, optional=dict(limit=counts(), offset=counts(), filters=filters, **scope))),
        st.builds(lambda i: Call("get", (i,)), ids),
        st.builds(lambda i: Call("history", (i,)), ids),
        st.builds(lambda i: Call("neighbors", (i,)), ids),
        st.builds(lambda i: Call("forget", (i,)), ids),
        st.builds(lambda i, at: Call("retention", (i,), {"at": at}), ids, times()),
        st.builds(lambda i, at: Call("restore", (i,), {"at": at}), ids, times()),
        st.builds(lambda i, kw: Call("update", (i,), kw), ids, st.fixed_dictionaries(
            {}, optional=dict(text=texts(), tags=tags, metadata=metadata(), fact=facts, at=times()))),
        st.builds(lambda a, b, w, at: Call("link", (a, b), {"weight": w, "at": at}), ids, ids, scalars(), times()),
        st.builds(lambda at: Call("decay", (), {"at": at}), times()),
        st.builds(lambda p: Call("export", (p,)), paths(folder)),
        st.builds(lambda p: Call("import_", (p,)), paths(folder)),
        st.just(Call("stats")),
        st.just(Call("quarantined")),
    )


@dataclass
class Outcome:
    call: Call
    result: str  # "ok", "typed", or "untyped: <exception>"
    changed_on_error: bool = False


def apply(mem: Memory, call: Call, snapshot: Path) -> Outcome:
    """Run one call and check the contract: success, or a typed error that changed nothing."""
    mem.export(snapshot)
    before = snapshot.read_bytes()
    try:
        getattr(mem, call.verb)(*call.args, **call.kwargs)
    except AgentMemError:
        mem.export(snapshot)
        return Outcome(call, "typed", changed_on_error=snapshot.read_bytes() != before)
    except Exception as exc:  # the finding a fuzz run exists for
        return Outcome(call, f"untyped: {type(exc).__name__}: {exc}"[:300])
    return Outcome(call, "ok")


def readable(scratch: Path, **options: Any) -> str | None:
    """Reopen the store (`Memory(**options)`) and read all of it, exporting into `scratch`; None when that
    works, else why not."""
    try:
        with Memory(**options) as mem:
            mem.export(scratch / "health.jsonl")
            mem.decay()
            mem.recall("health check", reinforce=False)
            mem.stats()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:300]
    return None

"""A bounded property-based fuzz of every public verb of Memory and of the shell's arguments.

The long run is `python -m agentmem.eval.soak --fuzz N`; this one keeps `make test` short.
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentmem import Memory
from agentmem.cli import main as cli_main
from agentmem.eval.fuzzing import apply, calls, readable

from .conftest import T0, drop_local_folder, postgres_location

EXAMPLES = int(os.environ.get("AGENTMEM_FUZZ_EXAMPLES", "10"))


@dataclass
class FuzzedStore:
    location: dict[str, str]  # Memory's arguments
    scratch: Path  # where the calls' files go


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def store(request, tmp_path_factory, embedder):
    """Each note store: a folder, or a PostgreSQL database with the Chroma server."""
    scratch = tmp_path_factory.mktemp("fuzz")
    if request.param == "sqlite":
        location = {"path": str(scratch / "m")}
    else:
        location = postgres_location(request)
    with Memory(**location, embedder=embedder) as mem:
        mem.remember_many(["Alice lives in Lisbon", "Alice works as a nurse", "Bob plays the cello in Porto"],
                          user_id="alice", at=T0)
    yield FuzzedStore(location, scratch)
    if request.param == "postgres":
        drop_local_folder(location["path"])


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_every_call_succeeds_or_raises_a_typed_error_that_changed_nothing(store, embedder, data):
    for _ in range(data.draw(st.integers(1, 3), label="calls")):
        with Memory(**store.location, embedder=embedder) as mem:
            known = [n.id for n in mem.notes(include_archived=True)]
            call = data.draw(calls(known, store.scratch), label="call")
            outcome = apply(mem, call, store.scratch / "snapshot.jsonl")
        assert not outcome.result.startswith("untyped"), outcome
        assert not outcome.changed_on_error, f"{call} raised but changed the store"
        assert readable(store.scratch, **store.location, embedder=embedder) is None, call


ARGUMENTS = st.lists(st.one_of(
    st.sampled_from(["remember", "recall", "forget", "get", "decay", "stats", "export", "import", "list", "update",
                     "history", "--user", "--at", "-k", "--tag", "--archived", "--help", "--policy", "repair"]),
    st.text(max_size=12),
    st.sampled_from(["9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00", "-1", "99999999999999999999", "\ud800"]),
), max_size=5)


@settings(max_examples=EXAMPLES * 4, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(argv=ARGUMENTS)
def test_the_shell_answers_any_arguments_with_json_or_a_message_never_a_traceback(store, argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_main([*(f"--{name.replace('_', '-')}={value}" for name, value in store.location.items()), *argv])
        except SystemExit as exit_:
            code = exit_.code
    assert code in (0, 1, 2, None), (argv, code, err.getvalue()[-500:])
    assert "Traceback" not in err.getvalue()

"""The served app as a whole: property-based fuzzing of its OpenAPI spec with schemathesis (no 500, no response
off the schema), and the MCP endpoint it mounts from the SDK.

The fuzzing is driven through schemathesis' Python API (its pytest plugin does not run on pytest 9): each operation's
hypothesis strategy, valid and invalid inputs, a bounded number of examples each.
"""
from __future__ import annotations

import asyncio

import httpx2
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from .conftest import ADMIN_KEY

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
# Not fuzzed, tested by hand: routes that load the 135M language model (tens of seconds per call), and
# backup, which writes wherever its (random) target says.
NOT_FUZZED = r"/v1/(chat/completions|answer|plan|consolidate|backup)$"
EXAMPLES = 12

schemathesis.serializer.alias("application/x-ndjson", "text/plain")   # /v1/import takes JSON lines as text


def test_no_input_breaks_the_api(server):
    api = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=AUTH)
    operations = [result.ok() for result in api.exclude(path_regex=NOT_FUZZED).get_all_operations()]
    assert len(operations) >= 20
    failures = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                      derandomize=True, database=None)
            def check(case):
                # A schema cannot say "not blank" or "an existing note id": schema-valid input may still get a
                # typed 4xx. Every other check runs: no 5xx, documented statuses, bodies that match the schema,
                # and schema-invalid input rejected.
                case.call_and_validate(headers=AUTH, excluded_checks=[positive_data_acceptance])

            try:
                check()
            except Unsatisfiable:  # nothing to make invalid (no body, only a free-form path segment)
                continue
            except Exception as exc:  # collect every operation's failure, then report them all
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    assert not failures, "\n\n".join(failures)


def test_a_get_on_mcp_is_refused_at_once_and_mcp_clients_still_connect(server):
    """The SDK's stateless transport answered GET /mcp (a client's server-to-client stream) with 200 and then no
    byte: Claude Code and Cursor, which open it on connect, hung, and each such GET held a connection for ever."""
    sse = {"Accept": "text/event-stream"}
    with server.client(ADMIN_KEY, timeout=10) as client, server.client(None, timeout=10) as anonymous:
        refused = client.get("/mcp", headers=sse)
        assert (refused.status_code, refused.headers["allow"]) == (405, "POST")
        assert refused.json()["error"] == "MethodNotAllowed"
        # the key and the Host still come first, as for a POST
        assert anonymous.get("/mcp", headers=sse).status_code == 401
        assert client.get("/mcp", headers={**sse, "Host": "rebound.example"}).status_code == 421

    async def tools() -> set[str]:
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60) as http:
            async with Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as mcp:
                return {tool.name for tool in (await mcp.list_tools()).tools}

    assert "search_memories" in asyncio.run(tools())


def test_every_method_but_post_on_mcp_is_refused_with_allow_post(server):
    """PUT, PATCH, DELETE, OPTIONS or any other method but POST reached the SDK, whose 405 named GET and DELETE
    in `Allow`, which this stateless server refuses too; each is refused as GET is, after the Host and the key."""
    with server.client(ADMIN_KEY, timeout=10) as client, server.client(None, timeout=10) as anonymous:
        for method in ("PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "PROPFIND"):
            refused = client.request(method, "/mcp", content=b"{}", headers={"Content-Type": "application/json"})
            assert (refused.status_code, refused.headers.get("allow")) == (405, "POST"), (method, refused.headers)
            if method != "HEAD":  # a HEAD answer has no body
                assert refused.json()["error"] == "MethodNotAllowed", method
            assert anonymous.request(method, "/mcp").status_code == 401, method
            assert client.request(method, "/mcp", headers={"Host": "rebound.example"}).status_code == 421, method

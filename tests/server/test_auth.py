"""API keys: no key, no access; a key bound to a user cannot reach another user's notes by any route."""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from agentmem.errors import InvalidInputError
from agentmem.server.auth import ApiKeys

from .conftest import ADMIN_KEY, ALICE_KEY, BOB_KEY, start_server

T0 = "2024-05-01T12:00:00+00:00"
JSONL = {"content-type": "application/x-ndjson"}


def test_every_route_needs_a_key(server):
    for key in (None, "wrong-key-123"):
        with server.client(key) as client:
            for method, path in [("GET", "/v1/stats"), ("POST", "/v1/recall"), ("GET", "/v1/notes/x"),
                                 ("GET", "/v1/export"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
                                 ("GET", "/openapi.json"), ("POST", "/mcp")]:
                response = client.request(method, path, json={})
                assert response.status_code == 401, (method, path)
                error = response.json()["error"]   # in OpenAI's shape on its routes
                assert (error["type"] if path.startswith(("/v1/chat/", "/v1/models")) else error) == "UnauthorizedError"
    with server.client(None) as client:   # the key also works as X-API-Key
        assert client.get("/v1/stats", headers={"X-API-Key": ADMIN_KEY}).status_code == 200


def test_the_health_probe_needs_no_key_and_tells_nothing_but_up(server):
    """A load balancer's probe holds no key; the Host guard still stands in front."""
    with server.client(None) as probe:
        answer = probe.get("/v1/health")
        assert answer.status_code == 200 and answer.json() == {"status": "ok"}
        assert probe.head("/v1/health").status_code == 200   # it was 405 to a probe that uses HEAD
        assert probe.get("/v1/health", headers={"Host": "rebound.example"}).status_code == 421
        assert probe.get("/v1/health/", follow_redirects=True).status_code == 401  # only that exact path is open


def test_a_user_bound_key_reaches_only_its_users_notes(server):
    with server.client(ALICE_KEY) as alice, server.client(BOB_KEY) as bob, server.client(ADMIN_KEY) as admin:
        own = alice.post("/v1/notes", json={"text": "Alice's locker code is 4711", "at": T0}).json()
        assert own["user_id"] == "alice"   # a bound key's notes belong to its user without saying so
        other = bob.post("/v1/notes", json={"text": "Bob's locker code is 9876", "at": T0}).json()
        alice_linked = alice.post("/v1/notes", json={"text": "Alice's locker is in the gym basement", "at": T0}).json()
        admin.post(f"/v1/notes/{alice_linked['id']}/links", json={"note_id": other["id"]})

        assert alice.post("/v1/notes", json={"text": "x", "user_id": "bob"}).status_code == 403
        planted = alice.post("/v1/notes/batch", json={"items": ["mine", {"text": "planted", "user_id": "bob"}]})
        assert planted.status_code == 403
        batch = alice.post("/v1/notes/batch", json={"items": ["Alice's gym is open until 10pm"]}).json()
        assert batch[0]["user_id"] == "alice"
        assert alice.post("/v1/recall", json={"query": "locker code", "user_id": "bob"}).status_code == 403
        hits = alice.post("/v1/recall", json={"query": "Bob's locker code", "k": 10}).json()
        assert hits and {h["note"]["user_id"] for h in hits} == {"alice"}
        for method, path in [("GET", f"/v1/notes/{other['id']}"), ("GET", f"/v1/notes/{other['id']}/history"),
                             ("GET", f"/v1/notes/{other['id']}/neighbors"), ("DELETE", f"/v1/notes/{other['id']}"),
                             ("PATCH", f"/v1/notes/{other['id']}"), ("GET", f"/v1/ledger?note_id={other['id']}")]:
            response = alice.request(method, path, json={"text": "mine now"} if method == "PATCH" else None)
            assert (response.status_code, response.json()["error"]) == (404, "NoteNotFoundError"), (method, path)
        counts = [admin.get(f"/v1/notes/{n['id']}").json()["recall_count"] for n in (own, other)]
        counted = alice.post("/v1/reinforce", json={"note_ids": [own["id"], other["id"]]})
        assert (counted.status_code, counted.json()["error"]) == (404, "NoteNotFoundError")
        assert [admin.get(f"/v1/notes/{n['id']}").json()["recall_count"] for n in (own, other)] == counts
        neighbours = alice.get(f"/v1/notes/{alice_linked['id']}/neighbors").json()
        assert other["id"] not in [n["id"] for n in neighbours]
        with alice.stream("GET", "/v1/export") as response:
            exported = [json.loads(line) for line in response.iter_lines() if line]
        assert exported and {n["user_id"] for n in exported} == {"alice"}
        foreign = json.dumps({**other, "id": "planted-note-1"}) + "\n"
        assert alice.post("/v1/import", content=foreign, headers=JSONL).status_code == 403
        mine = json.dumps({**own, "id": "planted-note-2"})   # \x1e breaks a line for str.splitlines, not for JSON lines
        smuggled = alice.post("/v1/import", content=mine + "\x1e" + foreign, headers=JSONL)
        assert (smuggled.status_code, smuggled.json()["error"]) == (422, "InvalidInputError")
        assert [admin.get(f"/v1/notes/planted-note-{i}").status_code for i in (1, 2)] == [404, 404]
        for method, path in [("GET", "/v1/stats"), ("POST", "/v1/decay"), ("POST", "/v1/consolidate"),
                             ("POST", "/v1/plan"), ("GET", "/v1/ledger"), ("GET", "/v1/jobs")]:
            response = alice.request(method, path, json={} if method == "POST" else None)
            assert (response.status_code, response.json()["error"]) == (403, "AccessDeniedError"), (method, path)
        assert alice.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                        "user": "bob"}).status_code == 403
        assert admin.get(f"/v1/notes/{other['id']}").json()["text"] == "Bob's locker code is 9876"   # untouched


def test_an_import_tells_a_user_bound_key_nothing_of_other_users_note_ids(server):
    """An id of another user's note is to the bound key an id that exists nowhere: as `GET` answers 404, an import
    neither skips it nor refuses a link to it."""
    with server.client(ALICE_KEY) as alice, server.client(BOB_KEY) as bob, server.client(ADMIN_KEY) as admin:
        theirs = bob.post("/v1/notes", json={"text": "Bob's bike lock code is 2468", "at": T0}).json()
        own = alice.post("/v1/notes", json={"text": "Alice rides to work", "at": T0}).json()
        line = {k: own[k] for k in ("text", "created_at", "updated_at", "last_recalled")} | {"user_id": "alice"}
        for extra in ({"id": theirs["id"], "text": "Alice's first scooter was red"},
                      {"id": "probe-unknown", "links": [{"note_id": theirs["id"], "weight": 0.5}]}):
            report = alice.post("/v1/import", content=json.dumps(line | extra) + "\n", headers=JSONL)
            assert report.status_code == 200 and report.json() == {"imported": 1, "skipped": 0}
        assert admin.get(f"/v1/notes/{theirs['id']}").json()["text"] == "Bob's bike lock code is 2468"
        assert admin.get("/v1/notes/probe-unknown").json()["links"] == []
        texts = [n["text"] for n in alice.get("/v1/notes").json()]
        assert "Alice's first scooter was red" in texts


def test_a_user_bound_key_reaches_only_its_users_notes_over_mcp(server):
    with server.client(ADMIN_KEY) as admin:
        bobs = admin.post("/v1/notes", json={"text": "Bob's bank PIN hint is the cat's name", "user_id": "bob"}).json()

    async def as_alice():
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {ALICE_KEY}"}, timeout=60) as http:
            async with Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as client:
                got = await client.call_tool("get_memory", {"memory_id": bobs["id"]})
                denied = await client.call_tool("search_memories", {"query": "PIN hint", "user_id": "bob"})
                found = await client.call_tool("search_memories", {"query": "bank PIN hint"})
                deleted = await client.call_tool("delete_memory", {"memory_id": bobs["id"]})
                resource_error = None
                try:
                    await client.read_resource(f"memory://notes/{bobs['id']}")
                except Exception as exc:  # the SDK raises the server's resource error
                    resource_error = str(exc)
                return got, denied, found, deleted, resource_error

    got, denied, found, deleted, resource_error = asyncio.run(as_alice())
    assert got.is_error and "NoteNotFoundError" in got.content[0].text
    assert denied.is_error and "AccessDeniedError" in denied.content[0].text
    assert not found.is_error and all(h["note"]["user_id"] == "alice" for h in found.structured_content["hits"])
    assert deleted.is_error and resource_error and "NoteNotFoundError" in resource_error
    with server.client(ADMIN_KEY) as admin:
        assert admin.get(f"/v1/notes/{bobs['id']}").status_code == 200


def test_a_user_bound_key_may_not_date_a_call_ahead_of_the_server_s_clock_a_key_for_every_user_may(server):
    """A bound key's recall or reinforce dated years ahead set its notes' last recall there, so they never faded
    (nor did a note written, changed, linked or restored then). Within 5 minutes of the server's clock (clocks differ
    a little) a bound key is answered; a key for every user is answered at any time (replays need it)."""
    now = datetime.now(timezone.utc)
    ahead, soon = (now + timedelta(days=3650)).isoformat(), (now + timedelta(minutes=1)).isoformat()
    with server.client(ALICE_KEY) as alice, server.client(ADMIN_KEY) as admin:
        note = alice.post("/v1/notes", json={"text": "Alice's scooter lock code is 3141", "at": T0}).json()
        other = alice.post("/v1/notes", json={"text": "Alice parks her scooter by the library", "at": T0}).json()
        before = [admin.get(f"/v1/notes/{n['id']}").json() for n in (note, other)]
        count = len(admin.get("/v1/notes", params={"user_id": "alice", "limit": 10_000}).json())
        for method, path, body in [
            ("POST", "/v1/recall", {"query": "scooter lock code", "at": ahead}),
            ("POST", "/v1/reinforce", {"note_ids": [note["id"]], "at": ahead}),
            ("POST", "/v1/notes", {"text": "Alice's scooter is red", "at": ahead}),
            ("POST", "/v1/notes/batch", {"items": ["Alice's scooter is red"], "at": ahead}),
            ("POST", "/v1/notes/batch", {"items": [{"text": "Alice's scooter is red", "at": ahead}]}),
            ("PATCH", f"/v1/notes/{note['id']}", {"text": "Alice's scooter lock code is 2718", "at": ahead}),
            ("POST", f"/v1/notes/{note['id']}/links", {"note_id": other["id"], "at": ahead}),
            ("POST", f"/v1/notes/{note['id']}/restore", {"at": ahead}),
            ("POST", "/v1/answer", {"question": "What is my scooter lock code?", "at": ahead}),  # before the model's lane
        ]:
            refused = alice.request(method, path, json=body)
            assert refused.status_code == 422, (path, refused.text)
            assert refused.json()["error"] == "InvalidInputError" and "5 minutes" in refused.json()["message"], path
        assert [admin.get(f"/v1/notes/{n['id']}").json() for n in (note, other)] == before
        assert len(admin.get("/v1/notes", params={"user_id": "alice", "limit": 10_000}).json()) == count
        looked = alice.post("/v1/recall", json={"query": "scooter lock code", "at": soon, "reinforce": False})
        assert looked.status_code == 200 and looked.json()
        assert admin.post("/v1/recall", json={"query": "scooter lock code", "user_id": "alice", "at": ahead,
                                              "reinforce": False}).status_code == 200


def test_only_a_key_for_every_user_may_mark_a_note_shared(server):
    """A shared note's fact goes into every user's answers once consolidated: a user's key may not say so."""
    shared = {"text": "The office wifi password is Falcon", "metadata": {"shared": True}}
    with server.client(ALICE_KEY) as alice, server.client(ADMIN_KEY) as admin:
        own = alice.post("/v1/notes", json={"text": "Alice's desk is by the window"}).json()
        for method, path, body in [
            ("POST", "/v1/notes", shared),
            ("POST", "/v1/notes/batch", {"items": ["Alice's bike is blue", shared]}),
            ("PATCH", f"/v1/notes/{own['id']}", {"metadata": {"shared": True}}),
        ]:
            response = alice.request(method, path, json=body)
            assert (response.status_code, response.json()["error"]) == (403, "AccessDeniedError"), path
        marked = json.dumps({**own, "id": "shared-by-alice", "metadata": {"shared": True}}) + "\n"
        assert alice.post("/v1/import", content=marked, headers=JSONL).status_code == 403
        assert admin.get("/v1/notes/shared-by-alice").status_code == 404
        assert admin.get(f"/v1/notes/{own['id']}").json()["metadata"] == {}
        assert not [n for n in admin.get("/v1/notes", params={"user_id": "alice"}).json() if "bike" in n["text"]]
        assert admin.post("/v1/notes", json={**shared, "user_id": "carol"}).status_code == 200

    async def mark_over_mcp():
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {ALICE_KEY}"}, timeout=60) as http:
            async with Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as client:
                added = await client.call_tool("add_memory", {"text": shared["text"], "metadata": {"shared": True}})
                changed = await client.call_tool("update_memory", {"memory_id": own["id"], "metadata": {"shared": True}})
                return added, changed

    for result in asyncio.run(mark_over_mcp()):
        assert result.is_error and "AccessDeniedError" in result.content[0].text


def test_a_users_key_may_forget_but_not_change_its_note_that_is_marked_shared(server):
    """The next job would replace the shared edit with the changed fact, which every user then gets."""
    with server.client(ALICE_KEY) as alice, server.client(ADMIN_KEY) as admin:
        wifi = admin.post("/v1/notes", json={"text": "The office wifi password is Falcon", "user_id": "alice",
                                             "metadata": {"shared": True}}).json()
        for change in ({"text": "The office wifi password is Hacked"}, {"tags": ["office"]}):
            response = alice.patch(f"/v1/notes/{wifi['id']}", json=change)
            assert (response.status_code, response.json()["error"]) == (403, "AccessDeniedError")

        async def change_over_mcp():
            async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {ALICE_KEY}"}, timeout=60) as http:
                async with Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as client:
                    return await client.call_tool("update_memory", {"memory_id": wifi["id"], "text": "It is Hacked"})

        changed = asyncio.run(change_over_mcp())
        assert changed.is_error and "AccessDeniedError" in changed.content[0].text
        assert admin.get(f"/v1/notes/{wifi['id']}").json()["text"] == "The office wifi password is Falcon"
        assert admin.patch(f"/v1/notes/{wifi['id']}", json={"tags": ["office"]}).status_code == 200
        assert alice.delete(f"/v1/notes/{wifi['id']}").status_code == 200


def test_a_users_key_cannot_change_its_shared_note_by_remembering_it_again(server):
    """A near-duplicate used to give the shared note the fact it lacked (and its tags): the next job made it an
    edit that fired for every user. The repeat is now a note of the user's own."""
    fact = {"prompt": "The CEO's email address is", "target": "evil@attacker.example"}
    with server.client(BOB_KEY) as bob, server.client(ADMIN_KEY) as admin:
        lunch = admin.post("/v1/notes", json={"text": "Our team lunch is on Fridays", "user_id": "bob",
                                              "metadata": {"shared": True}}).json()
        for extra in ({"fact": fact}, {"tags": ["planted"]}):
            repeat = bob.post("/v1/notes", json={"text": "Our team lunch is on Fridays", **extra})
            assert repeat.status_code == 200 and repeat.json()["id"] != lunch["id"]
            assert repeat.json()["metadata"] == {}
        batch = bob.post("/v1/notes/batch", json={"items": [{"text": "Our team lunch is on Fridays", "fact": fact}]})
        assert batch.json()[0]["id"] != lunch["id"]
        stored = admin.get(f"/v1/notes/{lunch['id']}").json()
        assert stored["fact"] is None and "planted" not in stored["tags"] and stored["metadata"] == {"shared": True}
        assert bob.post("/v1/notes", json={"text": "Our team lunch is on Fridays"}).json()["id"] == lunch["id"]


def test_a_key_given_before_serve_is_the_servers_key(tmp_path):
    served = start_server(tmp_path, key=ADMIN_KEY, global_args=("--api-key", ADMIN_KEY))
    try:
        with served.client(None) as anonymous, served.client(ADMIN_KEY) as admin:
            assert anonymous.post("/v1/notes", json={"text": "an open server would take this"}).status_code == 401
            assert admin.post("/v1/notes", json={"text": "the key holder may write"}).status_code == 200
    finally:
        served.stop()


def test_key_specs_are_checked(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nteam-key-0001\nuser-key-0001:carol\n")
    keys = ApiKeys.parse(["cli-key-0001:dave"], keys_file)
    assert keys.caller({"authorization": "Bearer user-key-0001"}).user_id == "carol"
    assert keys.caller({"x-api-key": "team-key-0001"}).user_id is None
    assert keys.caller({"authorization": "Bearer cli-key-0001"}).user_id == "dave"
    with pytest.raises(InvalidInputError):
        ApiKeys.parse(["short"])
    with pytest.raises(InvalidInputError, match="user"):   # a bound key whose user was left out is no admin key
        ApiKeys.parse(["erin-key-0001: "])
    for twice in (["fred-key-0001:fred", "fred-key-0001"], ["fred-key-0001:fred", "fred-key-0001:gail"]):
        with pytest.raises(InvalidInputError, match="listed twice"):   # the last listing decided what it reached
            ApiKeys.parse(twice)
    with pytest.raises(InvalidInputError):
        ApiKeys.parse([], tmp_path / "missing")


def test_a_bad_line_of_a_keys_file_is_named_by_the_file_and_its_line_never_by_the_key(tmp_path):
    """The error said what was wrong with "an API key" but not where: in a file of many keys, the operator had to
    find the line; the key itself is never echoed (it would land in logs)."""
    (tmp_path / "keys.txt").write_text("# team keys\r\nteam-key-0001\r\nsecret spaced key:carol\r\n")
    served = subprocess.run([sys.executable, "-m", "agentmem.cli", "--path", str(tmp_path / "m"), "serve",
                             "--keys-file", "keys.txt"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert served.returncode == 2, served.stderr
    assert "InvalidInputError: keys.txt line 3: an API key needs at least 8 characters" in served.stderr
    assert "secret" not in served.stderr and "spaced" not in served.stderr
    cases = {
        "short\n": "line 1: an API key needs",
        "# a\n\nuser-key-0001:\n": "line 3: the key spec user...: names no user",
        "fred-key-0001\n# b\nfred-key-0001:gail\n": "line 3: the key fred... is listed twice \\(first at .*line 1\\)",
        "# c\nuser-key-0002:\x07bell\n": "line 2: user_id must be a printable",
    }
    for text, message in cases.items():
        (tmp_path / "keys").write_text(text)
        with pytest.raises(InvalidInputError, match=f"^{tmp_path / 'keys'} {message}"):
            ApiKeys.parse([], tmp_path / "keys")
    twice = "^--api-key #2: the key fred... is listed twice \\(first at --api-key #1\\)"
    with pytest.raises(InvalidInputError, match=twice):
        ApiKeys.parse(["fred-key-0001:fred", "fred-key-0001"])
    (tmp_path / "keys").write_bytes(b"team-key-\xff0001\n")
    with pytest.raises(InvalidInputError, match="not UTF-8"):   # it was a UnicodeDecodeError, a traceback
        ApiKeys.parse([], tmp_path / "keys")


def test_a_request_without_a_key_is_refused_before_its_body_is_read(server):
    """Reading a body first let anyone who reaches the port make the server hold 8 MiB per connection."""

    def answer_to_headers_alone(*headers: str) -> int:
        """The status the server answers the request's headers with, its announced body never sent."""
        url = urlsplit(server.url)
        with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
            sock.sendall("\r\n".join(["POST /v1/notes HTTP/1.1", f"Host: {url.netloc}",
                                       "Content-Type: application/json", *headers, "", ""]).encode())
            return int(sock.recv(4096).split(b" ")[1])   # b"HTTP/1.1 401 Unauthorized..."

    assert answer_to_headers_alone("Content-Length: 7000000") == 401
    assert answer_to_headers_alone("Transfer-Encoding: chunked") == 401
    with_key = f"Authorization: Bearer {ADMIN_KEY}"   # an announced length over the limit needs no reading either
    assert answer_to_headers_alone(with_key, "Content-Length: 9000000") == 413

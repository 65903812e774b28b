"""The REST API of a real `agentmem serve` process, called with httpx: every verb, errors, concurrency."""
from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest

from agentmem.server.client import RemoteError, RemoteMemory

from .conftest import ADMIN_KEY

T0 = "2024-05-01T12:00:00+00:00"


def remember(client, text, **fields):
    response = client.post("/v1/notes", json={"text": text, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def test_every_note_verb_round_trips(admin):
    user = f"u{uuid.uuid4().hex[:8]}"
    first = remember(admin, "Rosa keeps goats in the Alps", user_id=user, tags=["farm"], at=T0)
    second = remember(admin, "Rosa's goats graze on Alpine meadows in summer", user_id=user, at=T0)
    assert first["user_id"] == user and "farm" in first["tags"]

    batch = admin.post("/v1/notes/batch", json={"items": ["Rosa sells cheese at the market",
                                                          {"text": "Rosa's dog is called Bruno", "tags": ["pets"]}],
                                                "user_id": user, "at": T0})
    assert batch.status_code == 200 and [n["user_id"] for n in batch.json()] == [user, user]

    hits = admin.post("/v1/recall", json={"query": "Who keeps goats?", "user_id": user, "k": 2}).json()
    assert hits[0]["note"]["id"] == first["id"] and set(hits[0]["why"]) >= {"similarity", "retention"}
    assert admin.get(f"/v1/notes/{first['id']}").json()["recall_count"] == 1

    updated = admin.patch(f"/v1/notes/{first['id']}", json={"text": "Rosa keeps sheep in the Alps"}).json()
    assert updated["text"] == "Rosa keeps sheep in the Alps"
    history = admin.get(f"/v1/notes/{first['id']}/history").json()
    assert history[-1]["change"] == "updated" and history[-1]["note"]["text"] == "Rosa keeps goats in the Alps"

    linked = admin.post(f"/v1/notes/{first['id']}/links", json={"note_id": batch.json()[1]["id"], "weight": 0.5})
    assert linked.status_code == 200
    neighbours = [n["id"] for n in admin.get(f"/v1/notes/{first['id']}/neighbors").json()]
    assert batch.json()[1]["id"] in neighbours

    retention = admin.get(f"/v1/notes/{second['id']}/retention", params={"at": "2030-01-01T00:00:00Z"}).json()
    assert 0 <= retention["retention"] < 0.5
    decayed = admin.post("/v1/decay", json={"at": "2030-01-01T00:00:00Z"}).json()
    assert second["id"] in decayed["archived"]
    assert admin.get(f"/v1/notes/{second['id']}").json()["archived"] is True
    assert admin.post(f"/v1/notes/{second['id']}/restore", json={}).json()["archived"] is False

    assert admin.delete(f"/v1/notes/{first['id']}").json() == {"forgotten": first["id"]}
    assert admin.get(f"/v1/notes/{first['id']}").status_code == 404
    stats = admin.get("/v1/stats").json()
    assert stats["users"][user] == 3
    assert admin.get("/v1/ledger").json() == [] or isinstance(admin.get("/v1/ledger").json(), list)


def test_a_look_without_reinforcement_is_counted_later_by_reinforce(admin, server):
    user = f"u{uuid.uuid4().hex[:8]}"
    note = remember(admin, "Ines teaches chemistry in Porto", user_id=user, at=T0)
    [hit] = admin.post("/v1/recall", json={"query": "Who teaches chemistry?", "user_id": user, "k": 1,
                                           "reinforce": False}).json()
    assert admin.get(f"/v1/notes/{note['id']}").json()["recall_count"] == 0
    with RemoteMemory(server.url, ADMIN_KEY) as remote:
        [counted] = remote.reinforce([hit["note"]["id"]], at=T0)
        assert counted["recall_count"] == 1 == admin.get(f"/v1/notes/{note['id']}").json()["recall_count"]
        with pytest.raises(RemoteError) as refused:
            remote.reinforce([note["id"], "no-such-note"])
        assert (refused.value.name, refused.value.status) == ("NoteNotFoundError", 404)
    assert admin.get(f"/v1/notes/{note['id']}").json()["recall_count"] == 1   # nothing counted
    too_many = admin.post("/v1/reinforce", json={"note_ids": [note["id"]] * 1001})
    assert (too_many.status_code, too_many.json()["error"]) == (422, "InvalidInputError")


def test_reinforce_not_strict_counts_what_is_there_and_leaves_out_what_a_key_may_not_see(admin, server):
    """A note forgotten since the look, or another user's for a bound key, is left out: not counted, not returned,
    and for a bound key no different from a note that is not there."""
    from .conftest import ALICE_KEY

    kept = remember(admin, "Alice repairs bikes in Braga", user_id="alice", at=T0)
    gone = remember(admin, "Alice sold her old bike in Braga", user_id="alice", at=T0)
    bobs = remember(admin, "Bob repairs bikes in Faro", user_id="bob", at=T0)
    assert admin.delete(f"/v1/notes/{gone['id']}").status_code in (200, 204)
    with RemoteMemory(server.url, ALICE_KEY) as alice:
        counted = alice.reinforce([gone["id"], bobs["id"], kept["id"], "0" * 32], at=T0, strict=False)
        assert [note["id"] for note in counted] == [kept["id"]] and counted[0]["recall_count"] == 1
        with pytest.raises(RemoteError) as refused:  # strict by default: refused, nothing counted
            alice.reinforce([kept["id"], bobs["id"]], at=T0)
        assert refused.value.status == 404
    not_a_flag = admin.post("/v1/reinforce", json={"note_ids": [kept["id"]], "strict": "false"})
    assert (not_a_flag.status_code, not_a_flag.json()["error"]) == (422, "InvalidInputError")
    assert admin.get(f"/v1/notes/{bobs['id']}").json()["recall_count"] == 0
    assert admin.get(f"/v1/notes/{kept['id']}").json()["recall_count"] == 1


def test_reinforce_at_a_time_before_a_note_was_made_is_422_naming_it_and_counts_nothing(admin):
    user = f"u{uuid.uuid4().hex[:8]}"
    older = remember(admin, "Ines teaches chemistry in Porto", user_id=user, at="2024-04-30T12:00:00+00:00")
    note = remember(admin, "Ines grows tomatoes on her balcony in Porto", user_id=user, at=T0)
    for at in ("2024-05-01T11:00:00+00:00", "2024-05-01T11:00:00"):  # a naive time is UTC
        refused = admin.post("/v1/reinforce", json={"note_ids": [older["id"], note["id"]], "at": at})
        assert refused.status_code == 422 and refused.json()["error"] == "InvalidInputError", refused.text
        assert note["id"] in refused.json()["message"] and older["id"] not in refused.json()["message"]
    assert [admin.get(f"/v1/notes/{n['id']}").json()["recall_count"] for n in (older, note)] == [0, 0]
    # a recall at that time finds both, and counts the one that existed then
    hits = admin.post("/v1/recall", json={"query": "What does Ines do in Porto?", "user_id": user,
                                          "at": "2024-05-01T11:00:00+00:00"}).json()
    assert {h["note"]["id"]: h["note"]["recall_count"] for h in hits} == {older["id"]: 1, note["id"]: 0}
    assert [admin.get(f"/v1/notes/{n['id']}").json()["recall_count"] for n in (older, note)] == [1, 0]


def test_export_streams_jsonl_and_import_skips_known_ids(admin, server):
    user = f"u{uuid.uuid4().hex[:8]}"
    note = remember(admin, "Kenji repairs bicycles in Kyoto", user_id=user, at=T0)
    with admin.stream("GET", "/v1/export") as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    exported = [n for n in lines if n["id"] == note["id"]]
    assert exported and exported[0]["text"] == note["text"]
    body = "\n".join(json.dumps(n) for n in exported) + "\n"
    report = admin.post("/v1/import", content=body, headers={"content-type": "application/x-ndjson"}).json()
    assert report == {"imported": 0, "skipped": 1}
    admin.delete(f"/v1/notes/{note['id']}")
    report = admin.post("/v1/import", content=body, headers={"content-type": "application/x-ndjson"}).json()
    assert report == {"imported": 1, "skipped": 0}
    assert admin.get(f"/v1/notes/{note['id']}").json()["text"] == note["text"]


def test_bad_input_gets_a_typed_4xx_and_changes_nothing(admin):
    before = admin.get("/v1/stats").json()["notes"]
    cases = [
        ("POST", "/v1/notes", {"json": {"text": "   "}}, 422, "InvalidInputError"),
        ("POST", "/v1/notes", {"json": {"text": 5}}, 422, "InvalidInputError"),
        ("POST", "/v1/notes", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422,
         "InvalidInputError"),
        ("POST", "/v1/notes/batch", {"json": {"items": ["fine", "  "]}}, 422, "InvalidInputError"),
        ("POST", "/v1/recall", {"json": {"query": "x", "k": 0}}, 422, "InvalidInputError"),
        ("POST", "/v1/recall", {"json": {"query": "x", "surprise": 1}}, 422, "InvalidInputError"),
        ("GET", "/v1/notes/no-such-note", {}, 404, "NoteNotFoundError"),
        ("PATCH", "/v1/notes/no-such-note", {"json": {"text": "x"}}, 404, "NoteNotFoundError"),
        ("DELETE", "/v1/notes/no-such-note", {}, 404, "NoteNotFoundError"),
        ("GET", "/v1/jobs/no-such-job", {}, 404, "JobNotFoundError"),
        ("POST", "/v1/consolidate", {"json": {"policy": {"min_recalls": -1}}}, 422, "InvalidInputError"),
        ("POST", "/v1/import", {"content": b'{"id": "x"}\n', "headers": {"content-type": "application/x-ndjson"}},
         422, "InvalidInputError"),
        ("POST", "/v1/notes", {"content": b'{"text": "' + b"a" * (9 * 1024 * 1024) + b'"}',
                               "headers": {"content-type": "application/json"}}, 413, "PayloadTooLargeError"),
    ]
    for method, path, kwargs, status, error in cases:
        response = admin.request(method, path, **kwargs)
        assert (response.status_code, response.json()["error"]) == (status, error), (method, path, response.text)
        assert response.json()["message"]
    assert admin.get("/v1/stats").json()["notes"] == before


def test_sixteen_concurrent_clients_lose_and_duplicate_nothing(server):
    clients, calls = 16, 12   # x (remember + recall); the full 16 x 200 runs in python -m agentmem.eval.serving
    run = uuid.uuid4().hex[:8]
    errors: list[str] = []
    stored: dict[str, str] = {}
    lock = threading.Lock()

    def work(c: int) -> None:
        with server.client() as client:
            for i in range(calls):
                text = f"Client {c} noted {' '.join(uuid.uuid4().hex[:6] for _ in range(4))} in run {run}"
                response = client.post("/v1/notes", json={"text": text, "user_id": f"load-{run}"})
                if response.status_code != 200:
                    errors.append(response.text)
                    continue
                with lock:
                    stored[response.json()["id"]] = text
                found = client.post("/v1/recall", json={"query": text, "user_id": f"load-{run}", "k": 3})
                if found.status_code != 200:
                    errors.append(found.text)

    threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(stored) == clients * calls                  # every remember made its own note
    with server.client() as client:
        assert client.get("/v1/stats").json()["users"][f"load-{run}"] == clients * calls   # none lost, none twice
        with client.stream("GET", "/v1/export") as response:
            texts = [json.loads(line)["text"] for line in response.iter_lines() if line]
    assert sorted(t for t in texts if run in t) == sorted(stored.values())


def test_listing_repair_and_backup(admin, server, tmp_path):
    user = f"u{uuid.uuid4().hex[:8]}"
    notes = [remember(admin, text, user_id=user, at=T0) for text in
             ("Pablo paints murals in Valencia", "Pablo's studio has a blue door", "Pablo plays the cello on Sundays")]
    listed = admin.get("/v1/notes", params={"user_id": user, "limit": 2}).json()
    assert [n["id"] for n in listed] == [n["id"] for n in notes[:2]]
    assert [n["id"] for n in admin.get("/v1/notes", params={"user_id": user, "offset": 2}).json()] == [notes[2]["id"]]
    assert admin.get("/v1/notes", params={"limit": 0}).status_code == 422
    total = admin.get("/v1/stats").json()["notes"]
    assert admin.post("/v1/repair").json() == {"reindexed": total}
    assert admin.post("/v1/recall", json={"query": "Who paints murals?", "user_id": user}).json()[0]["note"]["id"] == \
        notes[0]["id"]
    target = tmp_path / "backup"
    assert admin.post("/v1/backup", json={"target": str(target)}).json() == {"backup": str(target)}
    assert (target / "notes.sqlite3").is_file()
    again = admin.post("/v1/backup", json={"target": str(target)})
    assert (again.status_code, again.json()["error"]) == (422, "InvalidInputError")


def test_a_backup_into_a_folder_holding_other_files_is_422_and_adds_nothing(admin, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_text("not a backup")
    refused = admin.post("/v1/backup", json={"target": str(tmp_path / "photos")})
    assert (refused.status_code, refused.json()["error"]) == (422, "InvalidInputError"), refused.text
    assert "new folder or an empty one" in refused.json()["message"]
    assert [p.name for p in (tmp_path / "photos").iterdir()] == ["cat.jpg"]
    (tmp_path / "empty").mkdir()
    assert admin.post("/v1/backup", json={"target": str(tmp_path / "empty")}).status_code == 200


@pytest.mark.parametrize("target", ["/proc/agentmem-backup", "/sys/agentmem-backup", "/proc/self"])
def test_a_backup_into_the_kernel_s_file_systems_is_422_naming_it_not_503(admin, target):
    """/proc and /sys hold the kernel's entries, not files: no backup can ever go there (it was 503, as for a disk
    that is down and may come back)."""
    refused = admin.post("/v1/backup", json={"target": target})
    assert (refused.status_code, refused.json()["error"]) == (422, "InvalidInputError"), refused.text
    assert "file system" in refused.json()["message"] and target in refused.json()["message"]
    assert target == "/proc/self" or not Path(target).exists()


def test_an_export_leaves_no_file_on_the_server_s_disk_even_unread(memory, tmp_path, monkeypatch):
    """An export's copy must not outlive a client that went away, nor be readable by others meanwhile."""
    import asyncio
    import tempfile

    from agentmem.server import rest
    from agentmem.server.access import ScopedMemory
    from agentmem.server.auth import Caller

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    note = memory.remember("Uma's safe code is 5150", user_id="uma")
    response = rest.export(ScopedMemory(memory, Caller(user_id="uma")))
    assert list((tmp_path / "tmp").iterdir()) == []   # gone before a byte is sent

    async def body() -> list[str]:
        return [line async for line in response.body_iterator]

    assert [json.loads(line)["id"] for line in asyncio.run(body())] == [note.id]


def test_a_bad_import_line_is_named_by_the_request_body_s_line_not_a_server_file(admin, server):
    from .conftest import ALICE_KEY

    ndjson = {"content-type": "application/x-ndjson"}
    with server.client(ALICE_KEY) as alice:
        for client in (admin, alice):   # an operator's import named the server's temp file (/tmp/tmpXXXX/import.jsonl:2)
            refused = client.post("/v1/import", content=b'\n{"id": "x"}\n', headers=ndjson)   # its second line
            assert refused.status_code == 422, refused.text
            message = refused.json()["message"]
            assert message.startswith("the request body:2: not a note") and "/tmp" not in message
    refused = admin.post("/v1/import", content=b'{"id": "x"}\n\xff\n', headers=ndjson)
    assert refused.status_code == 422 and "import.jsonl" not in refused.json()["message"]


def test_answer_states_one_max_new_tokens_limit_whatever_the_bad_value(admin):
    # -5 said "an integer from 1 to 4096" (Memory's check), 1000 "less than or equal to 512" (the route's)
    for tokens, bound in ((1000, "less than or equal to 512"), (-5, "greater than or equal to 1"),
                          (0, "greater than or equal to 1")):
        refused = admin.post("/v1/answer", json={"question": "x", "max_new_tokens": tokens})
        assert refused.status_code == 422 and "max_new_tokens" in refused.json()["message"], refused.text
        assert bound in refused.json()["message"] and "4096" not in refused.json()["message"]


def test_a_malformed_user_id_is_422_for_a_bound_key_too_before_its_403(admin, server):
    from .conftest import ALICE_KEY

    with server.client(ALICE_KEY) as alice:
        for method, path, kwargs in [("POST", "/v1/recall", {"json": {"query": "x", "user_id": ""}}),
                                     ("POST", "/v1/notes", {"json": {"text": "x", "user_id": ""}}),
                                     ("POST", "/v1/notes/batch", {"json": {"items": ["x"], "user_id": ""}}),
                                     ("POST", "/v1/notes/batch", {"json": {"items": [{"text": "x", "user_id": ""}]}}),
                                     ("GET", "/v1/notes", {"params": {"user_id": ""}}),
                                     ("POST", "/v1/answer", {"json": {"question": "x", "user_id": ""}})]:
            for client in (admin, alice):
                refused = client.request(method, path, **kwargs)
                assert (refused.status_code, refused.json()["error"]) == (422, "InvalidInputError"), (path, refused.text)
        assert alice.post("/v1/recall", json={"query": "x", "user_id": "bob"}).status_code == 403

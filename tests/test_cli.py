import argparse
import json
import re
import signal
import socket
import subprocess
import sys

import pytest

from agentmem.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out else None), captured.err


def test_remember_recall_forget_stats_round_trip(tmp_path, capsys, embedder):
    store = str(tmp_path / "m")
    code, note, _ = run(capsys, "--path", store, "remember", "Rosa keeps goats in the Alps", "--user", "rosa",
                        "--tag", "farm", "--at", "2024-05-01T10:00:00+00:00")
    assert code == 0 and note["user_id"] == "rosa" and note["tags"][0] == "farm"
    code, hits, _ = run(capsys, "--path", store, "recall", "Who keeps goats?", "--user", "rosa", "-k", "1")
    assert code == 0 and hits[0]["note"]["id"] == note["id"] and "why" in hits[0]
    code, stats, _ = run(capsys, "--path", store, "stats")
    assert stats["notes"] == 1 and stats["users"] == {"rosa": 1}
    code, report, _ = run(capsys, "--path", store, "decay", "--at", "2030-01-01T00:00:00+00:00")
    assert report["archived"] == [note["id"]]
    code, exported, _ = run(capsys, "--path", store, "export", str(tmp_path / "x.jsonl"))
    assert exported["exported"] == 1
    code, _, _ = run(capsys, "--path", store, "forget", note["id"])
    assert code == 0
    code, imported, _ = run(capsys, "--path", store, "import", str(tmp_path / "x.jsonl"))
    assert imported == {"imported": 1, "skipped": 0}


def test_errors_exit_2_with_a_message_and_write_nothing(tmp_path, capsys, embedder):
    store = str(tmp_path / "m")
    code, out, err = run(capsys, "--path", store, "remember", "   ")
    assert code == 2 and out is None and "InvalidInputError" in err and not (tmp_path / "m").exists()
    assert run(capsys, "--path", store, "remember", "Ada writes compilers")[0] == 0
    code, out, err = run(capsys, "--path", store, "forget", "no-such-id")
    assert code == 2 and "NoteNotFoundError" in err
    assert run(capsys, "--path", store, "stats")[1]["notes"] == 1
    with pytest.raises(SystemExit):
        main(["--path", store, "remember", "x", "--at", "not-a-date"])


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path, embedder):
    from agentmem.memory import Memory

    with Memory(tmp_path / "m", embedder=embedder) as mem:
        mem.remember_many([f"Note number {i} about the garden" for i in range(30)])
    listing = subprocess.Popen([sys.executable, "-m", "agentmem.cli", "--path", str(tmp_path / "m"), "list"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    listing.stdout.close()   # as `| head` does before the output comes
    assert listing.wait(timeout=300) == 1 and b"Traceback" not in listing.stderr.read()


def test_the_installed_command_runs(tmp_path, embedder):
    from agentmem.memory import Memory

    Memory(tmp_path / "m", embedder=embedder).close()
    result = subprocess.run(
        [sys.executable, "-m", "agentmem.cli", "--path", str(tmp_path / "m"), "stats"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0 and json.loads(result.stdout)["vector_store"] == "embedded"
    assert "Loading weights" not in result.stderr  # a command that prints JSON keeps stderr for what matters


@pytest.mark.slow
def test_consolidate_dry_run_prints_the_plan_and_changes_nothing(tmp_path, capsys, embedder):
    store = str(tmp_path / "m")
    code, note, _ = run(capsys, "--path", store, "remember", "Zorbl the engineer lives in Reykjavik.",
                        "--at", "2024-05-01T10:00:00+00:00")
    assert code == 0 and note["fact"] == {"prompt": "Zorbl the engineer lives in", "target": "Reykjavik", "rephrases": []}
    code, report, err = run(capsys, "--path", store, "consolidate", "--dry-run", "--policy", '{"min_recalls": 0}',
                            "--at", "2024-05-03T10:00:00+00:00")
    assert code == 0 and report["dry_run"] and report["applied"] == 0
    assert [(d["action"], d["reason"]) for d in report["decisions"]] == [("edit", "eligible")]
    assert not (tmp_path / "m" / "editor").exists()
    code, _, err = run(capsys, "--path", store, "consolidate", "--policy", '{"min_recalls": -1}')
    assert code == 2 and "InvalidInputError" in err


def test_help_and_argument_errors_need_no_store(tmp_path):
    helped = subprocess.run([sys.executable, "-m", "agentmem.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and all(c in helped.stdout for c in ("serve", "mcp", "--url", "recall"))
    wrong = subprocess.run([sys.executable, "-m", "agentmem.cli", "--path", str(tmp_path / "m"), "recall"],
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "required" in wrong.stderr and not (tmp_path / "m").exists()
    with pytest.raises(SystemExit):
        main(["serve", "--consolidate-every", "soon"])
    late = subprocess.run([sys.executable, "-m", "agentmem.cli", "recall", "--path", str(tmp_path / "m"), "hello"],
                          capture_output=True, text=True, timeout=120)
    assert late.returncode == 2 and "the store's options come before the command" in late.stderr


def test_durations_for_the_schedule():
    from datetime import timedelta

    from agentmem.cli import _duration

    assert _duration("24h") == timedelta(hours=24) and _duration("1d12h") == timedelta(hours=36)
    assert _duration("90s") == timedelta(seconds=90)
    for bad in ("", "24", "h", "1x", "0m", "-5m"):
        with pytest.raises(Exception):
            _duration(bad)
    assert _duration("365d") == timedelta(days=365) and _duration("0000000000000001d") == timedelta(days=1)
    for too_long in ("366d", "365d1s", "200000d", "99999999999999999d", "9" * 5000 + "s"):
        with pytest.raises(argparse.ArgumentTypeError, match="at most 365 days"):
            _duration(too_long)


@pytest.mark.parametrize("period", ["200000d", "99999999999999999d"])
def test_a_schedule_period_beyond_a_year_exits_2_with_one_line(tmp_path, period):
    # 200000d started a server whose schedule thread died (OverflowError); 99999999999999999d was a traceback, exit 1
    refused = subprocess.run([sys.executable, "-m", "agentmem.cli", "--path", str(tmp_path / "m"), "serve",
                              "--port", "1", "--consolidate-every", period], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"argument --consolidate-every: the duration must be at most 365 days: '{period}'" in refused.stderr
    assert not (tmp_path / "m").exists()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from tests.server.conftest import assert_clean_stop, start_server

    server = start_server(tmp_path_factory.mktemp("cli-served"), "--api-key", "cli-key-0001", key="cli-key-0001")
    yield server
    assert_clean_stop(server)


def test_every_command_works_against_a_running_server(served, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AGENTMEM_API_KEY", "cli-key-0001")
    url = ["--url", served.url]
    code, note, _ = run(capsys, *url, "remember", "Rosa keeps goats in the Alps", "--user", "rosa", "--tag", "farm",
                        "--at", "2024-05-01T10:00:00+00:00")
    assert code == 0 and note["user_id"] == "rosa" and "farm" in note["tags"]
    # a line break JSON leaves unescaped (U+2028): the export must still hold one note a line
    _, other, _ = run(capsys, *url, "remember", "Rosa sells goat cheese\u2028in Zermatt", "--user", "rosa")
    code, hits, _ = run(capsys, *url, "recall", "Who keeps goats?", "--user", "rosa", "-k", "1")
    assert code == 0 and hits[0]["note"]["id"] == note["id"]
    assert run(capsys, *url, "get", note["id"])[1]["recall_count"] == 1
    assert run(capsys, *url, "update", note["id"], "--text", "Rosa keeps sheep in the Alps")[1]["text"].endswith("Alps")
    assert run(capsys, *url, "history", note["id"])[1][-1]["change"] == "updated"
    assert run(capsys, *url, "link", note["id"], other["id"], "--weight", "0.5")[0] == 0
    assert other["id"] in [n["id"] for n in run(capsys, *url, "neighbors", note["id"])[1]]
    assert note["id"] in run(capsys, *url, "decay", "--at", "2031-01-01T00:00:00+00:00")[1]["archived"]
    assert run(capsys, *url, "restore", note["id"])[1]["archived"] is False
    assert run(capsys, *url, "stats")[1]["users"] == {"rosa": 2}
    assert run(capsys, *url, "ledger")[1] == []
    assert run(capsys, *url, "export", str(tmp_path / "x.jsonl"))[1]["exported"] == 2
    assert [n["id"] for n in run(capsys, *url, "list", "--user", "rosa", "--archived")[1]] == [note["id"], other["id"]]
    assert run(capsys, *url, "repair")[1] == {"reindexed": 2}
    assert run(capsys, *url, "backup", str(tmp_path / "copy"))[1] == {"backup": str(tmp_path / "copy")}
    assert run(capsys, *url, "forget", note["id"])[1] == {"forgotten": note["id"]}
    assert run(capsys, *url, "import", str(tmp_path / "x.jsonl"))[1] == {"imported": 1, "skipped": 1}
    code, out, err = run(capsys, *url, "forget", "no-such-note")
    assert code == 2 and out is None and "NoteNotFoundError" in err
    code, out, err = run(capsys, *url, "--api-key", "wrong-key-0001", "stats")
    assert code == 2 and "UnauthorizedError" in err
    earlier = (tmp_path / "x.jsonl").read_text()
    code, out, err = run(capsys, *url, "--api-key", "wrong-key-0001", "export", str(tmp_path / "x.jsonl"))
    assert code == 2 and "UnauthorizedError" in err
    assert (tmp_path / "x.jsonl").read_text() == earlier and len(list(tmp_path.iterdir())) == 2  # no partial file


@pytest.mark.parametrize("command", [["link", "a", "b", "--weight", "nan"],
                                     ["consolidate", "--dry-run", "--policy", '{"max_edits": 1e400}'],
                                     ["plan", "--policy", '{"min_strength": NaN}']])
def test_a_non_finite_number_with_url_is_a_typed_error_as_on_a_local_store(served, tmp_path, capsys, monkeypatch,
                                                                           command):
    # with --url these were httpx's ValueError ("Out of range float values are not JSON compliant"), a traceback, exit 1
    monkeypatch.setenv("AGENTMEM_API_KEY", "cli-key-0001")
    code, out, err = run(capsys, "--url", served.url, *command)
    assert code == 2 and out is None and err.startswith("agentmem: InvalidInputError: ") and err.count("\n") == 1
    assert "must be a finite number" in err and "Traceback" not in err


def test_backup_and_restore_backup_on_a_local_store(tmp_path, capsys, embedder):
    store, copy, restored = str(tmp_path / "m"), str(tmp_path / "copy"), str(tmp_path / "restored")
    _, note, _ = run(capsys, "--path", store, "remember", "Ada writes compilers in Zurich", "--user", "ada")
    assert run(capsys, "--path", store, "backup", copy)[1] == {"backup": copy}
    assert run(capsys, "--path", store, "repair")[1] == {"reindexed": 1}
    code, stats, _ = run(capsys, "--path", restored, "restore-backup", copy)
    assert code == 0 and stats["notes"] == 1
    assert run(capsys, "--path", restored, "recall", "Who writes compilers?")[1][0]["note"]["id"] == note["id"]
    code, _, err = run(capsys, "--path", restored, "restore-backup", copy)
    assert code == 2 and "InvalidInputError" in err


def test_an_unreachable_server_is_a_typed_error(capsys):
    from tests.conftest import free_port

    code, out, err = run(capsys, "--url", f"http://127.0.0.1:{free_port()}", "stats")
    assert code == 2 and out is None and "StoreUnavailableError" in err


def test_a_path_given_beats_the_environments_server_and_both_given_is_refused(tmp_path, capsys, monkeypatch):
    """AGENTMEM_URL in the environment was used in place of an explicit --path, without a word."""
    from tests.conftest import free_port

    nowhere = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AGENTMEM_URL", nowhere)
    store = str(tmp_path / "m")
    assert run(capsys, "--path", store, "remember", "Ada writes compilers")[0] == 0
    assert run(capsys, "--path", store, "stats")[1]["notes"] == 1
    code, _, err = run(capsys, "stats")   # no --path: the environment's server
    assert code == 2 and "StoreUnavailableError" in err and "127.0.0.1" in err
    code, _, err = run(capsys, "--path", store, "--url", nowhere, "stats")
    assert code == 2 and "InvalidInputError: give --path (a local store) or --url (a server), not both" in err
    assert run(capsys, "--path", store, "backup", str(tmp_path / "bk"))[0] == 0
    code, stats, _ = run(capsys, "--path", str(tmp_path / "back"), "restore-backup", str(tmp_path / "bk"))
    assert code == 0 and stats["notes"] == 1   # local only: the environment's server is not its place
    code, _, err = run(capsys, "--url", nowhere, "serve")   # it served --path and ignored the server named
    assert code == 2 and "serve works on this machine's stores, not a server's: leave out --url" in err


@pytest.mark.parametrize(("keys", "share_from"), [((), 2), (("--api-key", "admin-key-01"), 2),
                                                  (("--api-key", "admin-key-01", "--api-key", "alice-key-1:alice"), None)])
def test_a_server_with_user_bound_keys_shares_a_fact_only_when_marked(tmp_path, embedder, monkeypatch, keys, share_from):
    """Two bound keys stating one fact would otherwise make it fire for every user, which neither key may mark."""
    import uvicorn

    from tests.conftest import free_port

    served = []

    def started(server, sockets):
        server.started = True
        served.append(server.config.app)

    monkeypatch.setattr(uvicorn.Server, "run", started)
    assert main(["--path", str(tmp_path / "m"), "serve", "--port", str(free_port()), *keys]) == 0
    memory = served[0].state.memory
    try:
        assert memory.policy.share_from == share_from
    finally:
        memory.close()


def test_a_url_ending_in_v1_reaches_the_server_and_a_wrong_one_is_said_so(served, tmp_path, capsys, monkeypatch):
    """`--url http://host:8765/v1` is the natural mistake after an OpenAI client's base_url."""
    monkeypatch.setenv("AGENTMEM_API_KEY", "cli-key-0001")
    code, stats, _ = run(capsys, "--url", f"{served.url}/v1/", "stats")
    assert code == 0 and "notes" in stats
    for command in (["stats"], ["export", str(tmp_path / "x.jsonl")]):
        code, out, err = run(capsys, "--url", f"{served.url}/memory", *command)
        assert code == 2 and out is None and "StoreUnavailableError: no agentmem API at" in err, err
    assert not (tmp_path / "x.jsonl").exists()


def test_a_command_on_notes_refuses_a_folder_without_a_store_and_makes_nothing(tmp_path, capsys, embedder):
    """A mistyped --path read (and made) a new empty store: 0 notes, as if they were gone."""
    missing = tmp_path / "no" / "such" / "memdata"
    for command in (["stats"], ["recall", "x"], ["list"], ["get", "n1"], ["history", "n1"], ["forget", "n1"],
                    ["update", "n1", "--text", "y"], ["export", str(tmp_path / "x.jsonl")], ["decay"], ["plan"],
                    ["consolidate", "--dry-run"], ["answer", "q"], ["backup", str(tmp_path / "copy")], ["repair"],
                    ["ledger"], ["neighbors", "n1"], ["link", "n1", "n2"], ["restore", "n1"]):
        code, out, err = run(capsys, "--path", str(missing), *command)
        assert code == 2 and out is None and f"StoreUnavailableError: no store at {missing}" in err, command
    for refused in (["remember", "   "], ["remember", "Ada", "--tag", "t" * 65], ["import", str(tmp_path / "none")]):
        code, out, err = run(capsys, "--path", str(missing), *refused)   # a refused start made a whole store
        assert code == 2 and out is None and "InvalidInputError" in err, refused
    assert list(tmp_path.iterdir()) == []
    code, _, _ = run(capsys, "--path", str(missing), "remember", "Ada writes compilers")  # starting a store is asked
    assert code == 0 and run(capsys, "--path", str(missing), "stats")[1]["notes"] == 1


def test_serve_options_are_checked_before_anything_is_made(tmp_path, capsys):
    store = tmp_path / "m"
    for options, problem in [(["--port", "99999"], "--port"), (["--port", "0"], "--port"),
                             (["--max-body", "-1"], "--max-body"), (["--upstream", "localhost:1234"], "--upstream"),
                             (["--upstream", "ftp://admin:Sup3rSecret@host/v1"], "--upstream"),   # shown with ***
                             (["--upstream", "http://admin:Sup3r/Secret@host/v1"], "--upstream")]:  # httpx misreads
        with pytest.raises(SystemExit) as exited:
            main(["--path", str(store), "serve", *options])
        err = capsys.readouterr().err
        assert exited.value.code == 2 and f"argument {problem}" in err and "Secret" not in err, err
    with socket.socket() as probe:   # a free port, so that the editor is what is checked (8765 may be in use)
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    code, _, err = run(capsys, "--path", str(store), "serve", "--port", port, "--editor", "nope")
    assert code == 2 and "InvalidInputError: unknown editor 'nope'" in err
    with socket.socket() as taken:   # a busy port is found before the store opens (and the model loads)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, _, err = run(capsys, "--path", str(store), "serve", "--port", str(taken.getsockname()[1]))
    assert code == 2 and "InvalidInputError: cannot serve on 127.0.0.1:" in err
    code, _, err = run(capsys, "--path", str(store), "serve", "--allowed-host", "")
    assert code == 2 and "InvalidInputError: not a host name" in err   # it opened the store first, and left it open
    assert not store.exists()


def test_the_way_out_a_damaged_store_names_works_as_typed(tmp_path, capsys, embedder):
    """The message gave `agentmem restore-backup BACKUP --path F`: an argparse error, and then a refusal."""
    store, backup = tmp_path / "m", tmp_path / "bk"
    _, note, _ = run(capsys, "--path", str(store), "remember", "Ada writes compilers in Zurich")
    run(capsys, "--path", str(store), "backup", str(backup))
    graph = store / "notes.sqlite3"
    data = bytearray(graph.read_bytes())
    data[100:4000] = b"\x5a" * 3900
    graph.write_bytes(bytes(data))
    code, _, err = run(capsys, "--path", str(store), "stats")
    assert code == 2 and "StoreCorruptedError" in err
    command = re.search(r"`agentmem (.*?)`", err).group(1).split()
    argv = [str(tmp_path / "new") if a == "NEW_FOLDER" else str(backup) if a == "BACKUP" else a for a in command]
    code, stats, err = run(capsys, *argv)
    assert code == 0 and stats["notes"] == 1, err
    assert run(capsys, "--path", str(tmp_path / "new"), "get", note["id"])[1]["text"] == note["text"]


@pytest.mark.server
def test_a_second_store_on_a_chroma_server_is_told_to_take_a_collection_and_can(tmp_path, capsys, embedder,
                                                                                chroma_server):
    """A new store on a collection another store holds was called corrupted, with advice to remove the index."""
    first = ["--chroma-url", chroma_server, "--collection", "cli_first"]
    assert run(capsys, *first, "--path", str(tmp_path / "a"), "remember", "Ada writes compilers")[0] == 0
    code, out, err = run(capsys, *first, "--path", str(tmp_path / "b"), "remember", "Bo plays the cello")
    assert code == 2 and out is None and "InvalidInputError" in err and "a collection of its own" in err
    assert "remove" not in err and not (tmp_path / "b").exists()  # nothing made, not even its lock file
    second = ["--chroma-url", chroma_server, "--collection", "cli_second"]
    assert run(capsys, *second, "--path", str(tmp_path / "b"), "remember", "Bo plays the cello")[0] == 0
    hits = run(capsys, *second, "--path", str(tmp_path / "b"), "recall", "Who plays the cello?")[1]
    assert [h["note"]["text"] for h in hits] == ["Bo plays the cello"]
    code, _, err = run(capsys, *first, "--path", str(tmp_path / "b"), "stats")   # b's own collection mistyped
    assert code == 2 and "InvalidInputError" in err and "pass the collection this store was made with" in err
    assert "rebuild" not in err and "remove" not in err   # either would erase a's vectors
    assert run(capsys, *first, "--path", str(tmp_path / "a"), "stats")[1]["notes"] == 1


def test_a_command_on_notes_refuses_a_database_without_a_store_and_makes_nothing(postgres_url, tmp_path, capsys,
                                                                                 monkeypatch, embedder):
    """`stats` on an empty database made a store there, and a later migrate into it was refused."""
    import psycopg

    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "--path", postgres_url, "restore-backup", "bk")  # a backup restores into a folder
    assert code == 2 and "InvalidInputError: a backup is restored into a folder" in err and list(tmp_path.iterdir()) == []
    code, out, err = run(capsys, "--path", postgres_url, "stats")
    assert code == 2 and out is None and "StoreUnavailableError: no store in the database" in err
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0
    code, _, err = run(capsys, "--path", "postgresql://postgres@127.0.0.1:1/nowhere", "remember", "Ada")
    assert code == 2 and "StoreUnavailableError: cannot connect" in err
    assert not (tmp_path / "home").exists() or list((tmp_path / "home").rglob("*-1-nowhere")) == []
    assert run(capsys, "--path", postgres_url, "remember", "Ada writes compilers")[0] == 0
    assert run(capsys, "--path", postgres_url, "stats")[1]["notes"] == 1
    with psycopg.connect(postgres_url, autocommit=True) as conn:   # a role that may connect, not read the store
        conn.execute("DROP ROLE IF EXISTS onlooker")
        conn.execute("CREATE ROLE onlooker LOGIN")
    onlooker = postgres_url.replace("postgres@", "onlooker@", 1)
    code, out, err = run(capsys, "--path", onlooker, "stats")
    assert code == 2 and out is None and "StoreUnavailableError: cannot read the note store" in err, err


def test_a_refused_policy_or_import_line_is_one_line_naming_the_field(tmp_path, capsys, embedder):
    """pydantic's own text spans lines and sends the user to a web page for each error."""
    store = str(tmp_path / "m")
    run(capsys, "--path", store, "remember", "Ada writes compilers in Zurich")
    code, _, err = run(capsys, "--path", store, "plan", "--policy", '{"min_recallz": 2}')
    assert code == 2 and err.count("\n") == 1 and "min_recallz: Extra inputs are not permitted" in err, err
    bad = tmp_path / "g.jsonl"
    bad.write_text('{"id": "n1", "text": ""}\n')
    code, _, err = run(capsys, "--path", store, "import", str(bad))
    assert code == 2 and err.count("\n") == 1 and "g.jsonl:1: not a note: " in err and "https://" not in err, err


def test_export_says_in_its_help_that_it_replaces_a_file_already_there_as_it_does(tmp_path, capsys, embedder):
    """It replaced an existing file without a word anywhere."""
    helped = subprocess.run([sys.executable, "-m", "agentmem.cli", "export", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert helped.returncode == 0 and "replaces a file already there" in helped.stdout
    listed = subprocess.run([sys.executable, "-m", "agentmem.cli", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert "replacing" in listed.stdout
    store, file = str(tmp_path / "m"), tmp_path / "kept.jsonl"
    file.write_text("an earlier export\n")
    assert run(capsys, "--path", store, "remember", "Ada writes compilers")[0] == 0
    assert run(capsys, "--path", store, "export", str(file))[1]["exported"] == 1
    assert "an earlier export" not in file.read_text() and "Ada writes compilers" in file.read_text()


def test_an_interrupted_migrate_in_process_leaves_both_signal_handlers_as_they_were(tmp_path, capsys, monkeypatch):
    """A caller that catches the exit (an embedding program, a test) had Ctrl-C ignored from then on."""
    from agentmem.stores import migrate as migration

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(migration, "migrate", interrupted)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exited:
        main(["migrate", "--from", str(tmp_path), "--to", "postgresql://nobody@127.0.0.1:1/none"])
    assert exited.value.code == 130 and "interrupted (SIGINT)" in capsys.readouterr().err
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_migrate_from_a_url_is_refused_as_the_callers_mistake():
    from agentmem.errors import InvalidInputError
    from agentmem.stores.migrate import migrate

    with pytest.raises(InvalidInputError, match="the source must be a store's folder"):
        migrate("postgresql://nobody@127.0.0.1:1/a", "postgresql://nobody@127.0.0.1:1/b")


import json
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
    assert code == 2 and out is None and "InvalidInputError" in err
    code, out, err = run(capsys, "--path", store, "forget", "no-such-id")
    assert code == 2 and "NoteNotFoundError" in err
    assert run(capsys, "--path", store, "stats")[1]["notes"] == 0
    with pytest.raises(SystemExit):
        main(["--path", store, "remember", "x", "--at", "not-a-date"])


def test_the_installed_command_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "agentmem.cli", "--path", str(tmp_path / "m"), "stats"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0 and json.loads(result.stdout)["vector_store"] == "embedded"


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

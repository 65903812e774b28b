"""The soak command at its smallest sizes: `--fuzz 0` skips fuzzing, `--benchmarks` ('' or a file, or
the old `--output`) says where the section goes, bad counts are refused up front, and its temporary
folder is gone afterwards, even when the run fails."""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest

from agentmem.eval import soak
from agentmem.eval.fleet import start_chroma
from agentmem.eval.postgres_server import TemporaryPostgres

SMALLEST = ["--threads", "1", "--processes", "0", "--writes", "1", "--kills", "0", "--fuzz", "0"]


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, embedder) -> Path:
    """The temporary folder soak's own folder goes under; the current folder is tmp_path, where a stray
    BENCHMARKS.md would land."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.chdir(tmp_path)
    return scratch


def test_fuzz_0_skips_fuzzing_and_benchmarks_empty_writes_nothing(scratch: Path, tmp_path: Path):
    counts = soak.main([*SMALLEST, "--benchmarks", ""])
    assert counts["acknowledged"] == 1 and counts["lost"] == 0 and counts["stores left unreadable"] == 0
    assert "fuzzed calls" not in counts
    assert list(scratch.glob("agentmem-soak-*")) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]


def test_the_section_goes_to_the_file_given_also_by_the_old_output_option(scratch: Path, tmp_path: Path):
    soak.main([*SMALLEST, "--output", "elsewhere.md"])
    section = (tmp_path / "elsewhere.md").read_text()
    assert "<!-- begin soak -->" in section and "fuzzing not run (`--fuzz 0`)" in section
    assert "fuzzed calls |" not in section
    assert not (tmp_path / "BENCHMARKS.md").exists()


def test_the_folder_is_removed_when_the_run_fails(scratch: Path, monkeypatch: pytest.MonkeyPatch):
    def fail(*_) -> None:
        raise RuntimeError("writer failed")

    monkeypatch.setattr(soak, "run_threads", fail)
    with pytest.raises(RuntimeError, match="writer failed"):
        soak.main([*SMALLEST, "--benchmarks", ""])
    assert list(scratch.glob("agentmem-soak-*")) == []


@pytest.mark.parametrize("option", ["--fuzz", "--writes", "--threads", "--processes", "--kills"])
def test_a_negative_count_is_refused_before_anything_runs(option: str, scratch: Path, capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as raised:
        soak.main([*SMALLEST, option, "-1"])
    assert raised.value.code == 2
    assert f"argument {option}: not a whole number >= 0: '-1'" in capsys.readouterr().err
    assert list(scratch.iterdir()) == []


def test_a_postgres_soak_writes_and_fuzzes_one_database_and_stops_its_servers(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch):
    """A writer process and a thread on a PostgreSQL store with a `chroma run` server, then fuzzed calls:
    nothing lost, and the servers and folders are gone afterwards. (The system's temporary folder: the
    `postgres` user cannot reach pytest's.)"""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "home"))
    started: list[int] = []  # the servers' processes

    def postgres() -> TemporaryPostgres:
        server = TemporaryPostgres()
        started.append(server.pid)
        return server

    def chroma(folder: Path) -> tuple[subprocess.Popen, str]:
        process, url = start_chroma(folder)
        started.append(process.pid)
        return process, url

    monkeypatch.setattr(soak, "TemporaryPostgres", postgres)
    monkeypatch.setattr(soak, "start_chroma", chroma)
    temporary = Path(tempfile.gettempdir())
    soaks_before = set(temporary.glob("agentmem-soak-*"))
    counts = soak.main(["--store", "postgres", "--threads", "1", "--processes", "1", "--writes", "3", "--kills", "1",
                        "--fuzz", "3", "--benchmarks", "soak.md"])
    assert counts["acknowledged"] == 6 and counts["lost"] == counts["duplicated"] == counts["write errors"] == 0
    assert counts["fuzzed calls"] == 3 and counts["untyped errors"] == counts["raised but changed the store"] == 0
    assert counts["stores left unreadable"] == 0
    section = (tmp_path / "soak.md").read_text()
    assert "<!-- begin soak-postgres -->" in section and "on one store (PostgreSQL 15, a `chroma run` server)" in section
    assert len(started) == 2 and not [pid for pid in started if psutil.pid_exists(pid)]
    assert set(temporary.glob("agentmem-soak-*")) == soaks_before and not list((tmp_path / "home").glob("postgres/*"))


def test_a_soak_of_postgres_with_the_embedded_index_loses_nothing_and_leaves_no_folder(tmp_path: Path,
                                                                                       monkeypatch: pytest.MonkeyPatch):
    """The index in this machine's folder for the store, written by whichever process holds the lock."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTMEM_HOME", str(tmp_path / "home"))
    counts = soak.main(["--store", "postgres-embedded", "--threads", "1", "--processes", "1", "--writes", "3",
                        "--kills", "1", "--fuzz", "0", "--benchmarks", "soak.md"])
    assert counts["acknowledged"] == 6 and counts["lost"] == counts["duplicated"] == counts["write errors"] == 0
    section = (tmp_path / "soak.md").read_text()
    assert "<!-- begin soak-postgres-embedded -->" in section
    assert "on one store (PostgreSQL 15, embedded Chroma on this machine)" in section
    assert not list((tmp_path / "home").glob("postgres/*"))

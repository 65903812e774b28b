"""The benchmarks' shared command line: `--benchmarks ''` writes no section, and each benchmark's
usage line is the command that runs it."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from agentmem.eval.report import write_section


def test_an_empty_path_writes_no_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    write_section("name", "figures", "")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["latency", "locomo", "serving", "soak", "fleet", "editing", "consolidation", "routing"])
def test_help_names_the_module_and_the_benchmarks_option(name: str, capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as raised:
        importlib.import_module(f"agentmem.eval.{name}").main(["--help"])
    assert raised.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m agentmem.eval.{name} ")
    assert "--benchmarks BENCHMARKS" in out and "('' for none)" in out

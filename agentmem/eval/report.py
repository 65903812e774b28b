"""Writing benchmark results into BENCHMARKS.md, one marked section per benchmark.

Each benchmark owns the text between `<!-- begin NAME -->` and `<!-- end NAME -->`,
so benchmarks run at different times never overwrite each other's figures.
"""
from __future__ import annotations

import argparse
import platform
import re
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import filelock

DEFAULT_PATH = Path("BENCHMARKS.md")


def machine_line() -> str:
    """Date, CPU and core count: the context every measured number needs."""
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return f"{date}; {cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def count(value: str) -> int:
    """An argparse type: a whole number >= 0, refused when the arguments are read (not after the work it
    would have cut short)."""
    if not (value.isascii() and value.isdigit()):
        raise argparse.ArgumentTypeError(f"not a whole number >= 0: {value!r}")
    return int(value)


def add_benchmarks_option(parser: argparse.ArgumentParser, *aliases: str) -> None:
    """`--benchmarks FILE` (`''` for none): one spelling and default on every benchmark, as the README says."""
    parser.add_argument("--benchmarks", *aliases, default=str(DEFAULT_PATH), help="BENCHMARKS.md to update ('' for none)")


def command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> str:
    """The command a benchmark was run with, as recorded beside its figures (quoted as a shell would need)."""
    return f"{parser.prog} {shlex.join(sys.argv[1:] if argv is None else argv)}"


def write_section(name: str, markdown: str, path: Path | str = DEFAULT_PATH) -> None:
    """Replace (or append) the section `name` of the benchmarks file with `markdown`; a `path` of `''`
    (`--benchmarks ''`) writes nothing, where `Path('')` would be the current folder."""
    if path == "":
        return
    path = Path(path)
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    with filelock.FileLock(str(path) + ".lock"):
        text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery figure here was measured by the command shown above it.\n"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
        path.write_text(text)

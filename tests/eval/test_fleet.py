"""The fleet benchmark's CPU count: a process tree's CPU seconds, its ended processes included."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from agentmem.eval.fleet import cpu_seconds

SPIN = "import time\\nend = time.process_time() + 0.6\\nwhile time.process_time() < end: pass\\nprint('spun', flush=True)"
ENDED = f"""
import subprocess, sys
subprocess.run([sys.executable, "-c", "{SPIN}"], check=True, stdout=subprocess.DEVNULL)
print("spun", flush=True)
sys.stdin.readline()
"""
RUNNING = f"""
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "{SPIN}\\nimport sys\\nsys.stdin.readline()"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
print(child.stdout.readline().strip(), flush=True)
sys.stdin.readline()
child.communicate("\\n")
"""


def cpu_of_tree_once_spun(script: str) -> float:
    """Start a parent running `script`, whose child burns 0.6 s of CPU; the tree's CPU seconds then."""
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "spun"
        return cpu_seconds([parent.pid])
    finally:
        parent.communicate("\n", timeout=30)


def test_cpu_seconds_counts_a_child_that_already_ended():
    assert cpu_of_tree_once_spun(ENDED) >= 0.6


def test_cpu_seconds_counts_a_running_child():
    assert cpu_of_tree_once_spun(RUNNING) >= 0.6

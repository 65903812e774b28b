"""The fleet benchmark's CPU count: a process tree's CPU seconds, its ended processes included."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from agentmem.eval.fleet import cpu_seconds

# A parent that starts a child which burns CPU and ends, then waits to be read.
PARENT = textwrap.dedent("""
    import subprocess, sys
    spin = "import time\\nend = time.process_time() + 0.6\\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", spin], check=True)
    print("child done", flush=True)
    sys.stdin.readline()
""")


def test_cpu_seconds_counts_a_child_that_already_ended():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "child done"
        assert cpu_seconds([parent.pid]) >= 0.6
    finally:
        parent.communicate("\n", timeout=30)


def test_cpu_seconds_counts_a_running_grandchild():
    script = textwrap.dedent("""
        import subprocess, sys
        spin = "import time, sys\\nend = time.process_time() + 0.6\\nwhile time.process_time() < end: pass\\nprint('spun', flush=True)\\nsys.stdin.readline()"
        child = subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        print(child.stdout.readline().strip(), flush=True)
        sys.stdin.readline()
        child.communicate("\\n")
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "spun"
        assert cpu_seconds([parent.pid]) >= 0.6
    finally:
        parent.communicate("\n", timeout=30)

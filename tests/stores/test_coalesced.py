"""Background work asked for in bursts: one run for the asks made while a run waits, one more for those
made while it runs, and `close` waits for the last."""
from __future__ import annotations

import threading
import time

from agentmem.stores.coalesced import CoalescedWork


def test_asks_during_a_run_make_one_more_run_and_close_waits_for_it():
    started, release, runs = threading.Event(), threading.Event(), []

    def slow() -> None:  # ANALYZE at 120k notes takes 0.75 s, a forget about 0.05 s
        runs.append(time.monotonic())
        started.set()
        release.wait(10)

    work = CoalescedWork(slow, "test")
    work.ask()
    assert started.wait(10)
    for _ in range(50):  # a burst of forgets while the first run goes on
        work.ask()
    release.set()
    work.close()
    assert len(runs) == 2


def test_a_failing_run_is_logged_and_the_next_ask_runs_again(caplog):
    calls = []

    def failing() -> None:
        calls.append(1)
        raise RuntimeError("the server went away")

    work = CoalescedWork(failing, "test")
    work.ask()
    time.sleep(0.2)
    work.ask()
    work.close()
    assert len(calls) == 2 and "runs again at the next request" in caplog.text

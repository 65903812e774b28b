"""Background index writes: in order, waited for, and a failure leaves the next writes running."""
from __future__ import annotations

import threading

from agentmem.stores.index_writes import IndexWrites


def test_writes_run_in_order_and_wait_returns_after_the_last():
    writes, done, release = IndexWrites(), [], threading.Event()
    writes.submit(lambda: (release.wait(10), done.append(1)))
    writes.submit(lambda: done.append(2))
    waiter = threading.Thread(target=writes.wait)
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and done == []  # the first write is held: wait() waits
    release.set()
    waiter.join(10)
    assert not waiter.is_alive() and done == [1, 2]
    writes.close()


def test_a_failing_write_is_logged_and_the_next_still_runs(caplog):
    writes, done = IndexWrites(), []
    writes.submit(lambda: 1 / 0)
    writes.submit(lambda: done.append("after"))
    writes.wait()
    assert done == ["after"]
    assert "stay in the outbox" in caplog.text
    writes.close()


def test_wait_inside_a_write_does_not_wait_for_itself():
    writes, done = IndexWrites(), threading.Event()
    writes.submit(lambda: (writes.wait(), done.set()))
    assert done.wait(10)
    writes.close()

"""Blocking calls release the GIL; a forked child can use relaybox."""

from __future__ import annotations

import os
import threading
from typing import Any

import psycopg
import pytest

import relaybox


def test_blocking_call_releases_the_gil(outbox: relaybox.Outbox) -> None:
    ticks = 0
    stop = threading.Event()

    def counter() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    thread = threading.Thread(target=counter)
    with outbox.transaction() as tx:
        thread.start()
        before = ticks
        tx.execute("SELECT pg_sleep(0.5)")
        during = ticks - before
    stop.set()
    thread.join()
    # With the GIL held for the whole half second the counter could only move
    # in the interpreter's switch intervals before and after the call.
    assert during > 10_000, f"the counter thread advanced {during} times"


def test_relay_works_while_python_threads_run(outbox: relaybox.Outbox) -> None:
    from conftest import wait_for

    outbox.enqueue("t", b"x")
    with relaybox.Relay(outbox) as relay:
        wait_for("delivered", lambda: relay.stats()["delivered"] == 1)
        stats = relay.stats()
        # The batch it delivered was claimed.
        assert stats["claims"] >= stats["batches"] >= 1, stats


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_forked_child_uses_relaybox(
    outbox: relaybox.Outbox, pg_url: str, prefix: str, pg: psycopg.Connection[Any]
) -> None:
    outbox.enqueue("t", b"from the parent")
    pid = os.fork()
    if pid == 0:  # the child: a prefork worker opening its own outbox
        code = 1
        try:
            child = relaybox.Outbox(pg_url, table_prefix=prefix)
            with child.transaction() as tx:
                tx.enqueue("t", b"from the child")
            child.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    outbox.enqueue("t", b"the parent still works")
    payloads = [bytes(r[0]) for r in pg.execute(f"SELECT payload FROM {prefix}outbox ORDER BY seq")]
    assert payloads == [b"from the parent", b"from the child", b"the parent still works"]

"""Handlers run on relaybox's worker threads, which keep their Python thread
state from one message to the next: a handler's thread-local state (such as
Django's per-thread database connection) lasts as on any worker thread."""

from __future__ import annotations

import threading

from conftest import wait_for

import relaybox


def test_thread_locals_last_across_messages(outbox: relaybox.Outbox) -> None:
    with outbox.transaction() as tx:
        for i in range(30):
            tx.enqueue("orders", {"id": i}, key="one-key")
    local = threading.local()
    threads: set[int] = set()
    fresh = 0

    def handler(message: relaybox.Message, tx: relaybox.Transaction) -> None:
        nonlocal fresh
        threads.add(threading.get_ident())
        if not hasattr(local, "seen"):
            local.seen = True
            fresh += 1

    with relaybox.Relay(outbox), relaybox.Consumer(outbox, "orders", handler, group="t") as c:
        wait_for("30 processed", lambda: c.stats()["processed"] == 30)
    # One fresh thread-local per worker thread, not one per message.
    assert fresh == len(threads) < 30

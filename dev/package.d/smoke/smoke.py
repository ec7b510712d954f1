"""dev/package's Python program: the installed relaybox wheel, end to end on SQLite.

Run from a directory outside the repository (so ``import relaybox`` finds the
installed package), with no Rust toolchain on PATH. It opens a SQLite outbox
in a temporary directory, enqueues one message, relays it over the database
transport, consumes it once, then relays and consumes a second message to
show that the first is not handled again. It prints

    smoke: delivered=1 handled=1 startup_ms=<n>

where ``startup_ms`` is the time from ``import relaybox`` to the first
enqueue returning, and exits 0; any failure exits non-zero with a message.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable

T0 = time.perf_counter()
import relaybox  # noqa: E402  (timed from before the import)

DEADLINE_S = 30.0


def wait_for(what: str, done: Callable[[], bool]) -> None:
    """Polls ``done`` until it holds; fails the program after DEADLINE_S seconds."""
    deadline = time.monotonic() + DEADLINE_S
    while not done():
        if time.monotonic() > deadline:
            raise SystemExit(f"smoke: FAILED: {what} did not happen within {DEADLINE_S:.0f} s")
        time.sleep(0.02)


def main() -> int:
    """Runs the program; its exit code."""
    with tempfile.TemporaryDirectory(prefix="relaybox-smoke-") as tmp:
        url = f"sqlite://{os.path.join(tmp, 'smoke.db')}?mode=rwc"
        outbox = relaybox.Outbox(url, migrate=True)
        first = outbox.enqueue("orders", {"id": 1}, key="1", type="OrderPlaced")
        startup_ms = (time.perf_counter() - T0) * 1000

        handled: dict[str, int] = {}
        lock = threading.Lock()

        def handle(message: relaybox.Message, tx: relaybox.Transaction) -> None:
            with lock:
                handled[message.id] = handled.get(message.id, 0) + 1

        def seen(message_id: str) -> Callable[[], bool]:
            return lambda: message_id in handled

        relay = relaybox.Relay(outbox, "database", poll_interval=0.05)
        with relay:
            wait_for("relaying the message", lambda: relay.stats()["delivered"] >= 1)
        delivered = relay.stats()["delivered"]
        if delivered != 1:
            raise SystemExit(f"smoke: FAILED: the relay delivered {delivered} messages, not 1")

        with relaybox.Consumer(outbox, "orders", handle, group="smoke", poll_interval=0.05):
            wait_for("handling the message", seen(first))

        # A second message, relayed and consumed by the same group: once it is
        # handled, the consumer has read past the first one again or not at all.
        second = outbox.enqueue("orders", {"id": 2}, key="2", type="OrderPlaced")
        with relaybox.Relay(outbox, "database", poll_interval=0.05) as again:
            wait_for("relaying the second message", lambda: again.stats()["delivered"] >= 1)
        with relaybox.Consumer(outbox, "orders", handle, group="smoke", poll_interval=0.05):
            wait_for("handling the second message", seen(second))
        outbox.close()

    if handled.get(first) != 1:
        raise SystemExit(f"smoke: FAILED: the first message was handled {handled.get(first)} times")
    if handled.get(second) != 1 or len(handled) != 2:
        raise SystemExit(f"smoke: FAILED: unexpected handler calls {handled}")
    print(f"smoke: delivered={delivered} handled={handled[first]} startup_ms={startup_ms:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""relaybox.messaging in one file: an ``@event`` function publishes, handlers consume.

Run it against a PostgreSQL (or SQLite) outbox; no broker is needed, events
travel through the database's own log (the ``database`` transport)::

    export RELAYBOX_DATABASE_URL=postgres://postgres@127.0.0.1:5432/relaybox
    python examples/python/messaging_app.py

It places one order inside a transaction (the ``order.created`` event commits
with it), handles the event with a ``@message_handler`` function and a
``@consumer`` class, then stops the consumers and exits 0.
"""

from __future__ import annotations

import os
import sys
import threading
import uuid
from typing import Any

import relaybox
from relaybox.messaging import (
    configure_messaging,
    consumer,
    event,
    get_outbox,
    message_handler,
    on_event,
    start_consumers,
)
from relaybox.messaging.base import Event

WAIT_SECONDS = 30.0
ORDER_ID = str(uuid.uuid4())

configure_messaging(
    broker="database",
    source="example-shop",
    table_prefix=os.environ.get("RELAYBOX_TABLE_PREFIX", "messaging_example_"),
)

confirmed = threading.Event()
counted = threading.Event()


@event("order.created", topic="orders", key_field="id")
def place_order(order_id: str, total: float) -> dict[str, Any]:
    """Create an order; ``order.created`` is published when this returns."""
    tx = relaybox.current_transaction()
    assert isinstance(tx, relaybox.Transaction)
    tx.execute("SELECT 1")  # your INSERT INTO orders ... goes here, in the same transaction
    return {"id": order_id, "total": total}


@message_handler(topic="orders", group="example-mailer", retry_delay=0.5)
def send_confirmation(message: dict[str, Any], db: relaybox.Transaction) -> None:
    """A function handler: ``message`` is the event's data."""
    if message["id"] == ORDER_ID:
        print(f"mailer: order {message['id']} confirmed, total {message['total']}")
        confirmed.set()


@consumer("example-analytics", topics=["orders"])
class Analytics:
    """A class of handlers, one per event name."""

    @on_event("order.created")
    async def order_created(self, event: Event, db: relaybox.AsyncTransaction) -> None:
        """Count orders (async handlers get an AsyncTransaction)."""
        if event.data["id"] == ORDER_ID:
            print(f"analytics: {event.name} from {event.source} at {event.timestamp.isoformat()}")
            counted.set()


def main() -> int:
    """Publish one event, wait until both handlers saw it, stop cleanly."""
    if not os.environ.get("RELAYBOX_DATABASE_URL"):
        print("set RELAYBOX_DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/relaybox)")
        return 2
    outbox = get_outbox()
    with start_consumers() as runner:
        with outbox.transaction():
            place_order(ORDER_ID, 42.5)
        done = confirmed.wait(WAIT_SECONDS) and counted.wait(WAIT_SECONDS)
        stats = runner.stats()
    if not done:
        print(f"the event was not handled within {WAIT_SECONDS}s: {stats}", file=sys.stderr)
        return 1
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Helpers of the messaging façade tests: reading tables and topics."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg
from conftest import wait_for

import relaybox


def notes(pg: psycopg.Connection[Any], table: str) -> list[str]:
    """The ``note`` column of ``table``, in insertion order."""
    return [str(r[0]) for r in pg.execute(f"SELECT note FROM {table} ORDER BY id").fetchall()]


class Collector:
    """A relaybox handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[relaybox.Message] = []
        self._lock = threading.Lock()

    def __call__(self, message: relaybox.Message, tx: relaybox.Transaction) -> None:
        with self._lock:
            self.messages.append(message)

    def __len__(self) -> int:
        with self._lock:
            return len(self.messages)


def read_topic(
    outbox: relaybox.Outbox,
    topic: str,
    expected: int,
    transport: relaybox.Transport = None,
    timeout: float = 30.0,
) -> list[relaybox.Message]:
    """Relay the outbox and read ``expected`` messages of ``topic`` as raw relaybox messages."""
    collector = Collector()
    group = f"reader-{uuid.uuid4().hex[:8]}"
    with relaybox.Relay(outbox, transport):
        with relaybox.Consumer(outbox, topic, collector, group=group, transport=transport) as c:
            wait_for(
                f"{expected} messages on {topic}",
                lambda: c.stats()["processed"] >= expected,
                timeout=timeout,
            )
    return collector.messages

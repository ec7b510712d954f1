"""Fixtures of the messaging façade tests: a configured façade per test, an empty
handler registry, unique topics, and helpers that read what reached a topic."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import relaybox
from relaybox import messaging


@pytest.fixture(autouse=True)
def clean_facade() -> Iterator[None]:
    """Every test starts and ends with no settings, no outbox and no handlers."""
    messaging.close_messaging()
    messaging.clear_registry()
    yield
    messaging.clear_registry()
    messaging.close_messaging()


@pytest.fixture
def configured(outbox: relaybox.Outbox) -> messaging.MessagingSettings:
    """The façade on the database transport, over this test's outbox."""
    return messaging.configure_messaging(broker="database", outbox=outbox, source="test-service")


@pytest.fixture
def kafka_configured(outbox: relaybox.Outbox, kafka_bootstrap: str) -> messaging.MessagingSettings:
    """The façade on the real Kafka broker, over this test's outbox."""
    return messaging.configure_messaging(
        broker="kafka",
        bootstrap_servers=kafka_bootstrap,
        outbox=outbox,
        source="test-service",
    )


@pytest.fixture
def topic() -> str:
    """A topic name of this test's own."""
    return f"py-msg-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def rows(pg: psycopg.Connection[Any], prefix: str) -> str:
    """A table ``<prefix>rows (note text)`` for handlers to write to; dropped with the prefix."""
    table = f"{prefix}rows"
    pg.execute(f"CREATE TABLE {table} (id serial PRIMARY KEY, note text NOT NULL)")
    return table

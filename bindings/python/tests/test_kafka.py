"""Python over the real Kafka broker: relay publishes, the consumer reads once."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from conftest import count, wait_for

import relaybox


def test_relay_to_kafka_and_consume_once(
    outbox: relaybox.Outbox, kafka_bootstrap: str, pg: psycopg.Connection[Any], prefix: str
) -> None:
    topic = f"py-orders-{uuid.uuid4().hex[:8]}"
    kafka = relaybox.Kafka(bootstrap_servers=kafka_bootstrap, create_topics=True)
    pg.execute(f"CREATE TABLE {prefix}seen (id text PRIMARY KEY, key text)")
    with outbox.transaction() as tx:
        ids = [tx.enqueue(topic, {"n": i}, key=f"k{i % 3}", type="Numbered") for i in range(30)]

    order: list[tuple[str, int]] = []

    def handle(message: relaybox.Message, tx: relaybox.Transaction) -> None:
        assert message.type == "Numbered"
        order.append((message.key or "", message.json()["n"]))
        tx.execute(f"INSERT INTO {prefix}seen VALUES ($1, $2)", [message.id, message.key])

    with relaybox.Relay(outbox, kafka) as relay:
        wait_for("relayed to Kafka", lambda: relay.stats()["delivered"] == 30)
    with relaybox.Consumer(outbox, topic, handle, group="py-kafka", transport=kafka) as c:
        wait_for("consumed", lambda: c.stats()["processed"] == 30, timeout=60)
    assert count(pg, f"{prefix}seen") == 30
    assert sorted(r[0] for r in pg.execute(f"SELECT id FROM {prefix}seen")) == sorted(ids)
    for key in ("k0", "k1", "k2"):
        numbers = [n for k, n in order if k == key]
        assert numbers == sorted(numbers), f"order of {key}: {numbers}"


def test_an_exactly_once_relay_publishes_in_kafka_transactions(
    outbox: relaybox.Outbox, kafka_bootstrap: str, pg: psycopg.Connection[Any], prefix: str
) -> None:
    topic = f"py-eos-{uuid.uuid4().hex[:8]}"
    kafka = relaybox.Kafka(
        bootstrap_servers=kafka_bootstrap,
        create_topics=True,
        transactional_id=f"py-eos-{uuid.uuid4().hex[:8]}",
    )
    pg.execute(f"CREATE TABLE {prefix}seen (id text PRIMARY KEY)")
    with outbox.transaction() as tx:
        ids = [tx.enqueue(topic, {"n": i}, key=f"k{i % 3}") for i in range(30)]

    def handle(message: relaybox.Message, tx: relaybox.Transaction) -> None:
        tx.execute(f"INSERT INTO {prefix}seen VALUES ($1)", [message.id])

    with relaybox.Relay(outbox, kafka) as relay:
        wait_for("relayed to Kafka", lambda: relay.stats()["delivered"] == 30)
    with relaybox.Consumer(outbox, topic, handle, group="py-kafka-eos", transport=kafka) as c:
        wait_for("consumed", lambda: c.stats()["processed"] == 30, timeout=60)
    assert sorted(r[0] for r in pg.execute(f"SELECT id FROM {prefix}seen")) == sorted(ids)
    assert outbox.pending_count() == 0


def test_a_bad_transactional_id_is_a_config_error(outbox: relaybox.Outbox) -> None:
    with pytest.raises(relaybox.ConfigError, match="transactional_id"):
        relaybox.Relay(outbox, relaybox.Kafka(transactional_id="orders relay")).start()

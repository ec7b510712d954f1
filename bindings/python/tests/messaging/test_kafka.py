"""The façade over the real Kafka broker: envelope, key and headers on the topic,
handlers fed from Kafka, schema failures in the `<topic>.dlq` topic."""

from __future__ import annotations

import json
from typing import Any

import pydantic
from conftest import wait_for

import relaybox
from relaybox import messaging
from relaybox.messaging.base import Event

from .helpers import read_topic

KAFKA_WAIT = 90.0


def test_envelope_key_and_headers_on_the_kafka_topic(
    kafka_configured: messaging.MessagingSettings, outbox: relaybox.Outbox, topic: str
) -> None:
    @messaging.event("user.created", topic=topic, key_field="id")
    def register(email: str) -> dict[str, Any]:
        return {"id": 17, "email": email}

    with outbox.transaction():
        register("grace@example.com")
    producer = messaging.get_producer()
    producer.send_sync(topic, {"order_id": 1}, key="o-1")

    messages = read_topic(outbox, topic, 2, kafka_configured.transport, timeout=KAFKA_WAIT)
    by_key = {m.key: m for m in messages}
    event_message, raw_message = by_key["17"], by_key["o-1"]

    envelope = json.loads(event_message.payload)
    assert list(envelope) == ["id", "name", "data", "timestamp", "source", "metadata"]
    assert envelope["name"] == "user.created"
    assert envelope["data"] == {"id": 17, "email": "grace@example.com"}
    assert envelope["source"] == "test-service"
    assert event_message.headers == {
        "event_name": "user.created",
        "event_id": envelope["id"],
        "event_source": "test-service",
    }
    assert event_message.type == "user.created"
    assert event_message.topic == topic

    assert json.loads(raw_message.payload) == {"order_id": 1}
    assert "event_name" not in raw_message.headers


class Payment(pydantic.BaseModel):
    order_id: int
    amount: float


def test_handlers_consume_from_kafka_and_schema_failures_go_to_the_dlq(
    kafka_configured: messaging.MessagingSettings, outbox: relaybox.Outbox, topic: str
) -> None:
    payments: list[Payment] = []
    welcomed: list[Any] = []

    @messaging.message_handler(topic=topic, schema=Payment, max_retries=3, retry_delay=0.05)
    def process_payment(message: Payment, db: relaybox.Transaction) -> None:
        payments.append(message)

    @messaging.consumer("welcome-service", topics=[topic])
    class Welcome:
        @messaging.on_event("payment.requested")
        async def on_payment(self, event: Event, db: relaybox.AsyncTransaction) -> None:
            welcomed.append(event.data["order_id"])

    messaging.publish_event_sync("payment.requested", {"order_id": 1, "amount": 5.0}, topic)
    messaging.publish_event_sync("payment.requested", {"order_id": "two"}, topic)
    with messaging.start_consumers() as runner:
        wait_for("the valid payment", lambda: len(payments) == 1, timeout=KAFKA_WAIT)
        wait_for("both events in the class", lambda: len(welcomed) == 2, timeout=KAFKA_WAIT)
        wait_for(
            "the invalid payment dead-lettered",
            lambda: sum(c.stats()["dead_lettered"] for c in runner.consumers) == 1,
            timeout=KAFKA_WAIT,
        )
        retried = sum(c.stats()["retried"] for c in runner.consumers)
    assert payments == [Payment(order_id=1, amount=5.0)]
    assert sorted(welcomed, key=str) == [1, "two"]
    assert retried == 0

    [letter] = read_topic(outbox, f"{topic}.dlq", 1, kafka_configured.transport, timeout=KAFKA_WAIT)
    error = letter.headers["relaybox-error"]
    assert "does not match schema Payment" in error and "order_id" in error
    assert letter.headers["event_name"] == "payment.requested"
    assert json.loads(letter.payload)["data"] == {"order_id": "two"}

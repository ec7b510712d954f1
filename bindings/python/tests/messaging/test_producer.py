"""publish_event and the producer: envelopes, raw JSON, transactions, bad input."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
import pytest

import relaybox
from relaybox import messaging

from .helpers import read_topic


def test_publish_event_async_and_sync(
    configured: messaging.MessagingSettings, outbox: relaybox.Outbox, topic: str
) -> None:
    event = asyncio.run(
        messaging.publish_event(
            event_name="user.updated",
            data={"id": 1, "email": "new@example.com"},
            topic=topic,
            key=1,
            metadata={"correlation_id": "c-1"},
        )
    )
    assert event.name == "user.updated" and event.source == "test-service"
    twin = messaging.publish_event_sync("user.updated", {"id": 2}, topic, source="other")
    messages = sorted(
        read_topic(outbox, topic, 2), key=lambda m: json.loads(m.payload)["data"]["id"]
    )
    first, second = (json.loads(m.payload) for m in messages)
    assert first["id"] == event.id and first["metadata"] == {"correlation_id": "c-1"}
    assert messages[0].key == "1"
    assert second["id"] == twin.id and second["source"] == "other"
    assert messages[1].headers["event_source"] == "other"
    assert messages[1].key is None


def test_producer_sends_raw_json(
    configured: messaging.MessagingSettings, outbox: relaybox.Outbox, topic: str
) -> None:
    producer = messaging.get_producer()
    assert producer is messaging.get_producer()
    asyncio.run(
        producer.send(topic, {"order_id": 1, "user_id": 7}, key="1", headers={"trace": "t-1"})
    )
    producer.send_sync(topic, [1, 2, 3])
    messages = read_topic(outbox, topic, 2)
    bodies = sorted((json.loads(m.payload) for m in messages), key=str)
    assert bodies == [[1, 2, 3], {"order_id": 1, "user_id": 7}]
    keyed = next(m for m in messages if m.key == "1")
    assert keyed.headers == {"trace": "t-1"}
    assert keyed.type == ""
    assert keyed.content_type == "application/json"


def test_publish_inside_a_transaction_rolls_back_with_it(
    configured: messaging.MessagingSettings, outbox: relaybox.Outbox, pg_url: str, topic: str
) -> None:
    async def scenario() -> None:
        with pytest.raises(RuntimeError):
            async with outbox.as_async().transaction():
                await messaging.publish_event("a.b", {"n": 1}, topic)
                await messaging.get_producer().send(topic, {"raw": True})
                raise RuntimeError("abort")

    asyncio.run(scenario())
    with psycopg.connect(pg_url) as conn:
        with pytest.raises(RuntimeError):
            with conn.transaction():
                messaging.publish_event_sync("a.b", {"n": 2}, topic, db=conn)
                messaging.get_producer().send_sync(topic, {"raw": True}, db=conn)
                raise RuntimeError("abort")
    assert outbox.pending_count() == 0
    with psycopg.connect(pg_url) as conn:
        with conn.transaction():
            messaging.publish_event_sync("a.b", {"n": 3}, topic, db=conn)
    [message] = read_topic(outbox, topic, 1)
    assert json.loads(message.payload)["data"] == {"n": 3}


def test_bad_topic_and_unserialisable_data_write_nothing(
    configured: messaging.MessagingSettings, outbox: relaybox.Outbox
) -> None:
    with pytest.raises(relaybox.ValidationError) as caught:
        messaging.publish_event_sync("a.b", {"n": 1}, topic="bad topic!")
    assert caught.value.code == "invalid_topic"
    with pytest.raises(relaybox.ValidationError) as caught:
        asyncio.run(messaging.publish_event("a.b", {"n": {1, 2}, "f": lambda: 0}))
    assert caught.value.code == "invalid_message"
    with pytest.raises(relaybox.ValidationError):
        messaging.get_producer().send_sync("events", {"nan": float("nan")})
    with pytest.raises(relaybox.ValidationError):
        asyncio.run(messaging.get_producer().send("", {"n": 1}))
    assert outbox.pending_count() == 0


def test_common_python_values_are_encoded(
    configured: messaging.MessagingSettings, outbox: relaybox.Outbox, topic: str
) -> None:
    import datetime as dt
    import decimal
    import uuid

    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    data: dict[str, Any] = {
        "at": dt.datetime(2026, 2, 1, 12, 0, tzinfo=dt.timezone.utc),
        "id": ident,
        "total": decimal.Decimal("10.50"),
        "tags": frozenset({"a"}),
    }
    messaging.publish_event_sync("order.created", data, topic)
    [message] = read_topic(outbox, topic, 1)
    assert json.loads(message.payload)["data"] == {
        "at": "2026-02-01T12:00:00+00:00",
        "id": str(ident),
        "total": "10.50",
        "tags": ["a"],
    }

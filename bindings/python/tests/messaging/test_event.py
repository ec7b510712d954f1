"""@event: the envelope it writes, the transaction it joins, and what it refuses."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from typing import Any

import psycopg
import pydantic
import pytest
from conftest import count, wait_for

import relaybox
from relaybox import messaging
from relaybox.messaging.base import Event

from .helpers import notes, read_topic


def envelope_of(message: relaybox.Message) -> dict[str, Any]:
    value = json.loads(message.payload)
    assert isinstance(value, dict)
    return value


def test_sync_event_writes_the_envelope_and_headers(
    configured: messaging.MessagingSettings, outbox: relaybox.Outbox, topic: str
) -> None:
    @messaging.event("user.created", topic=topic, key_field="id")
    def register(email: str) -> dict[str, Any]:
        return {"id": 42, "email": email}

    before = dt.datetime.now(dt.timezone.utc)
    assert register("ada@example.com") == {"id": 42, "email": "ada@example.com"}
    after = dt.datetime.now(dt.timezone.utc)
    [message] = read_topic(outbox, topic, 1)
    envelope = envelope_of(message)
    assert list(envelope) == ["id", "name", "data", "timestamp", "source", "metadata"]
    assert envelope["name"] == "user.created"
    assert envelope["data"] == {"id": 42, "email": "ada@example.com"}
    assert envelope["source"] == "test-service"
    assert envelope["metadata"] == {}
    assert envelope["timestamp"].endswith("Z")
    stamp = dt.datetime.fromisoformat(envelope["timestamp"][:-1] + "+00:00")
    assert before <= stamp <= after
    assert message.headers == {
        "event_name": "user.created",
        "event_id": envelope["id"],
        "event_source": "test-service",
    }
    assert message.key == "42"
    assert message.type == "user.created"
    assert message.content_type == "application/json"
    event = Event.from_message(message)
    assert (event.name, event.id, event.data) == ("user.created", envelope["id"], envelope["data"])
    assert event.timestamp == stamp


def test_async_event_uses_the_default_topic(
    configured: messaging.MessagingSettings, outbox: relaybox.Outbox
) -> None:
    @messaging.event("user.updated")
    async def update(user_id: int) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"id": user_id}

    assert asyncio.run(update(5)) == {"id": 5}
    [message] = read_topic(outbox, "events", 1)
    assert envelope_of(message)["data"] == {"id": 5}
    assert message.key is None


def test_psycopg_rollback_leaves_no_event_and_commit_delivers_once(
    configured: messaging.MessagingSettings,
    outbox: relaybox.Outbox,
    pg: psycopg.Connection[Any],
    pg_url: str,
    prefix: str,
    rows: str,
    topic: str,
) -> None:
    pg.execute(f"CREATE TABLE {prefix}orders (id int PRIMARY KEY)")

    @messaging.event("order.placed", topic=topic, key_field="id")
    def place(order_id: int, db: psycopg.Connection[Any]) -> dict[str, Any]:
        db.execute(f"INSERT INTO {prefix}orders VALUES (%s)", (order_id,))
        return {"id": order_id}

    @messaging.message_handler(topic=topic, group="order-projection")
    def project(message: dict[str, Any], db: relaybox.Transaction) -> None:
        db.execute(f"INSERT INTO {rows} (note) VALUES ($1)", [f"order {message['id']}"])

    with psycopg.connect(pg_url) as conn:
        with pytest.raises(RuntimeError, match="abort"):
            with conn.transaction():
                place(1, conn)
                assert outbox.pending_count() == 0  # not visible before commit
                raise RuntimeError("abort")
        assert outbox.pending_count() == 0
        assert count(pg, f"{prefix}orders") == 0
        with conn.transaction():
            place(2, db=conn)
    assert outbox.pending_count() == 1

    with messaging.start_consumers() as runner:
        wait_for("the order projected", lambda: notes(pg, rows) == ["order 2"])
        [consumer] = runner.consumers
        wait_for("processed counted", lambda: consumer.stats()["processed"] == 1)
        stats = consumer.stats()
    assert stats["duplicates"] == 0 and stats["retried"] == 0
    assert notes(pg, rows) == ["order 2"]
    assert outbox.pending_count() == 0


def test_async_psycopg_transaction(
    configured: messaging.MessagingSettings,
    outbox: relaybox.Outbox,
    pg_url: str,
    topic: str,
) -> None:
    @messaging.event("order.placed", topic=topic)
    async def place(order_id: int, *, db: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
        return {"id": order_id}

    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(pg_url) as conn:
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await place(1, db=conn)
                    raise RuntimeError("abort")
            assert outbox.pending_count() == 0
            async with conn.transaction():
                await place(2, db=conn)

    asyncio.run(scenario())
    [message] = read_topic(outbox, topic, 1)
    assert envelope_of(message)["data"] == {"id": 2}


def test_sync_function_cannot_write_through_an_async_psycopg_connection(
    configured: messaging.MessagingSettings, outbox: relaybox.Outbox, pg_url: str, topic: str
) -> None:
    @messaging.event("order.placed", topic=topic)
    def place(db: Any) -> dict[str, Any]:
        return {"id": 1}

    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(pg_url) as conn:
            with pytest.raises(TypeError, match="async"):
                place(conn)

    asyncio.run(scenario())
    assert outbox.pending_count() == 0


def test_relaybox_transaction_in_scope(
    configured: messaging.MessagingSettings,
    outbox: relaybox.Outbox,
    pg: psycopg.Connection[Any],
    rows: str,
    topic: str,
) -> None:
    @messaging.event("note.added", topic=topic)
    def add(note: str) -> dict[str, Any]:
        tx = relaybox.current_transaction()
        assert isinstance(tx, relaybox.Transaction)
        tx.execute(f"INSERT INTO {rows} (note) VALUES ($1)", [note])
        return {"note": note}

    with pytest.raises(RuntimeError):
        with outbox.transaction():
            add("rolled back")
            raise RuntimeError("abort")
    assert outbox.pending_count() == 0
    assert notes(pg, rows) == []
    with outbox.transaction():
        add("kept")
    assert notes(pg, rows) == ["kept"]
    [message] = read_topic(outbox, topic, 1)
    assert envelope_of(message)["data"] == {"note": "kept"}


def test_async_transaction_in_scope_for_async_and_sync_functions(
    configured: messaging.MessagingSettings, outbox: relaybox.Outbox, topic: str
) -> None:
    @messaging.event("a.happened", topic=topic)
    async def async_fn(n: int) -> dict[str, Any]:
        return {"n": n, "kind": "async"}

    @messaging.event("s.happened", topic=topic)
    def sync_fn(n: int) -> dict[str, Any]:
        return {"n": n, "kind": "sync"}

    async def scenario() -> None:
        with pytest.raises(RuntimeError):
            async with outbox.as_async().transaction():
                await async_fn(1)
                sync_fn(1)
                raise RuntimeError("abort")
        assert outbox.pending_count() == 0
        async with outbox.as_async().transaction():
            await async_fn(2)
            sync_fn(2)
        # an async function inside a sync transaction block joins it too
        with pytest.raises(RuntimeError):
            with outbox.transaction():
                await async_fn(3)
                raise RuntimeError("abort")

    asyncio.run(scenario())
    messages = read_topic(outbox, topic, 2)
    assert sorted(
        (envelope_of(m)["data"]["kind"], envelope_of(m)["data"]["n"]) for m in messages
    ) == [
        ("async", 2),
        ("sync", 2),
    ]
    assert outbox.pending_count() == 0


def test_explicit_relaybox_transaction_argument(
    configured: messaging.MessagingSettings, outbox: relaybox.Outbox, topic: str
) -> None:
    class Service:
        @messaging.event("thing.made", topic=topic, key_field="id")
        def make(self, thing_id: int, db: relaybox.Transaction) -> dict[str, Any]:
            return {"id": thing_id}

    service = Service()
    tx = outbox.begin()
    service.make(1, tx)
    tx.rollback()
    assert outbox.pending_count() == 0
    tx = outbox.begin()
    service.make(2, db=tx)
    assert outbox.pending_count() == 0
    tx.commit()
    [message] = read_topic(outbox, topic, 1)
    assert message.key == "2"


def test_a_function_that_raises_publishes_nothing(
    configured: messaging.MessagingSettings, outbox: relaybox.Outbox
) -> None:
    @messaging.event("never.sent")
    def fail() -> dict[str, Any]:
        raise ValueError("no")

    @messaging.event("never.sent")
    async def fail_async() -> dict[str, Any]:
        raise ValueError("no")

    with pytest.raises(ValueError):
        fail()
    with pytest.raises(ValueError):
        asyncio.run(fail_async())
    assert outbox.pending_count() == 0


class UserModel(pydantic.BaseModel):
    id: int
    joined: dt.date


@dataclasses.dataclass
class UserRecord:
    id: int
    name: str


class PlainUser:
    def __init__(self, user_id: int) -> None:
        self.id = user_id
        self.name = "plain"
        self._secret = "hidden"


@pytest.mark.parametrize(
    ("result", "data", "key"),
    [
        (UserModel(id=1, joined=dt.date(2026, 2, 1)), {"id": 1, "joined": "2026-02-01"}, "1"),
        (UserRecord(id=2, name="rec"), {"id": 2, "name": "rec"}, "2"),
        (PlainUser(3), {"id": 3, "name": "plain"}, "3"),
    ],
)
def test_results_become_data(
    configured: messaging.MessagingSettings,
    outbox: relaybox.Outbox,
    topic: str,
    result: Any,
    data: dict[str, Any],
    key: str,
) -> None:
    @messaging.event("user.created", topic=topic, key_field="id")
    def create() -> Any:
        return result

    assert create() is result
    [message] = read_topic(outbox, topic, 1)
    assert envelope_of(message)["data"] == data
    assert message.key == key


def test_include_result_false_sends_empty_data_and_still_keys(
    configured: messaging.MessagingSettings, outbox: relaybox.Outbox, topic: str
) -> None:
    @messaging.event("user.deleted", topic=topic, key_field="id", include_result=False)
    def delete() -> PlainUser:
        return PlainUser(9)

    delete()
    [message] = read_topic(outbox, topic, 1)
    assert envelope_of(message)["data"] == {}
    assert message.key == "9"


def test_non_serialisable_result_raises_and_rolls_back(
    configured: messaging.MessagingSettings,
    outbox: relaybox.Outbox,
    pg: psycopg.Connection[Any],
    rows: str,
) -> None:
    @messaging.event("bad.data")
    def bad() -> dict[str, Any]:
        tx = relaybox.current_transaction()
        assert isinstance(tx, relaybox.Transaction)
        tx.execute(f"INSERT INTO {rows} (note) VALUES ('x')")
        return {"handle": object()}

    with pytest.raises(relaybox.ValidationError, match="not JSON-serialisable") as caught:
        with outbox.transaction():
            bad()
    assert caught.value.code == "invalid_message"
    assert outbox.pending_count() == 0
    assert notes(pg, rows) == []


def test_missing_key_field_raises(
    configured: messaging.MessagingSettings, outbox: relaybox.Outbox
) -> None:
    @messaging.event("user.created", key_field="id")
    def create() -> dict[str, Any]:
        return {"email": "no-id@example.com"}

    with pytest.raises(relaybox.ValidationError, match="key_field 'id'"):
        create()
    assert outbox.pending_count() == 0


def test_bad_topic_or_name_is_refused_at_decoration() -> None:
    with pytest.raises(relaybox.ValidationError) as caught:
        messaging.event("user.created", topic="user events")
    assert caught.value.code == "invalid_topic"
    with pytest.raises(relaybox.ValidationError):
        messaging.event("user\ncreated")

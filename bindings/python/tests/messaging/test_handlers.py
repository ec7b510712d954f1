"""@message_handler, @consumer/@on_event and the runner, on the database transport."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

import psycopg
import pydantic
import pytest
from conftest import wait_for

import relaybox
from relaybox import messaging
from relaybox.messaging.base import Event

from .helpers import notes


def test_retries_until_success_and_the_write_happens_once(
    configured: messaging.MessagingSettings,
    outbox: relaybox.Outbox,
    pg: psycopg.Connection[Any],
    rows: str,
    topic: str,
) -> None:
    calls: list[dict[str, Any]] = []

    @messaging.message_handler(topic=topic, max_retries=3, retry_delay=0.05)
    def process_payment(message: dict[str, Any], db: relaybox.Transaction) -> None:
        calls.append(message)
        db.execute(f"INSERT INTO {rows} (note) VALUES ($1)", [f"charged {message['amount']}"])
        if len(calls) < 3:
            raise RuntimeError("gateway down")

    messaging.get_producer().send_sync(topic, {"amount": 10})
    with messaging.start_consumers() as runner:
        [consumer] = runner.consumers
        wait_for("processed after retries", lambda: consumer.stats()["processed"] == 1)
        assert consumer.stats()["retried"] == 2
    assert calls == [{"amount": 10}] * 3
    assert notes(pg, rows) == ["charged 10"]
    assert outbox.dead_letters() == []


def test_exhausted_retries_dead_letter_the_message(
    configured: messaging.MessagingSettings, outbox: relaybox.Outbox, topic: str
) -> None:
    calls: list[int] = []

    @messaging.message_handler(topic=topic, group="always-fails", max_retries=1, retry_delay=0.05)
    async def handler(message: dict[str, Any], db: relaybox.AsyncTransaction) -> None:
        calls.append(message["n"])
        raise RuntimeError("boom")

    messaging.publish_event_sync("n.made", {"n": 1}, topic)
    with messaging.start_consumers():
        [letter] = wait_for("a dead letter", outbox.dead_letters)
    assert calls == [1, 1]
    assert "boom" in letter["last_error"]
    assert letter["origin"] == "consumer:always-fails"


class OrderCreated(pydantic.BaseModel):
    order_id: int
    user_id: int
    total: float


def test_schema_validates_and_types_the_message(
    configured: messaging.MessagingSettings, topic: str
) -> None:
    received: list[OrderCreated] = []
    done = threading.Event()

    @messaging.message_handler(topic=topic, schema=OrderCreated)
    async def handle_order(message: OrderCreated, db: relaybox.AsyncTransaction) -> None:
        received.append(message)
        done.set()

    messaging.publish_event_sync(
        "order.created", {"order_id": 1, "user_id": 2, "total": 9.5}, topic
    )
    with messaging.start_consumers():
        wait_for("the typed message", done.is_set)
    assert received == [OrderCreated(order_id=1, user_id=2, total=9.5)]


def test_schema_failure_dead_letters_at_once_with_the_error(
    configured: messaging.MessagingSettings, outbox: relaybox.Outbox, topic: str
) -> None:
    calls: list[Any] = []

    @messaging.message_handler(topic=topic, schema=OrderCreated, max_retries=5, retry_delay=0.05)
    def handle_order(message: OrderCreated, db: relaybox.Transaction) -> None:
        calls.append(message)

    messaging.get_producer().send_sync(topic, {"order_id": "not a number", "user_id": 2})
    with messaging.start_consumers() as runner:
        [letter] = wait_for("a dead letter", outbox.dead_letters)
        [consumer] = runner.consumers
        stats = consumer.stats()
    assert calls == []
    assert stats["retried"] == 0 and stats["dead_lettered"] == 1
    assert letter["attempts"] == 1
    error = letter["last_error"]
    assert "does not match schema OrderCreated" in error
    assert "order_id" in error and "total" in error


def test_a_body_that_is_not_json_is_dead_lettered(
    configured: messaging.MessagingSettings, outbox: relaybox.Outbox, topic: str
) -> None:
    @messaging.message_handler(topic=topic)
    def handle(message: Any) -> None:
        raise AssertionError("not called")

    messaging.get_producer().send_sync(topic, b"\xff not json")
    with messaging.start_consumers():
        [letter] = wait_for("a dead letter", outbox.dead_letters)
    assert "is not JSON" in letter["last_error"]
    assert letter["attempts"] == 1


def test_reject_dead_letters_with_its_reason(
    configured: messaging.MessagingSettings, outbox: relaybox.Outbox, topic: str
) -> None:
    @messaging.message_handler(topic=topic)
    def handle(message: dict[str, Any], db: relaybox.Transaction) -> None:
        raise relaybox.Reject(f"unknown customer {message['customer']}")

    messaging.get_producer().send_sync(topic, {"customer": "c-9"})
    with messaging.start_consumers():
        [letter] = wait_for("a dead letter", outbox.dead_letters)
    assert letter["last_error"] == "unknown customer c-9"


def test_envelopes_give_their_data_and_raw_messages_their_body(
    configured: messaging.MessagingSettings, topic: str
) -> None:
    seen: list[Any] = []

    @messaging.message_handler(topic=[topic, f"{topic}.b"])
    def sync_inventory(message: Any) -> None:
        seen.append(message)

    messaging.publish_event_sync("order.created", {"order_id": 1}, topic)
    messaging.get_producer().send_sync(f"{topic}.b", {"order_id": 2, "raw": True})
    with messaging.start_consumers() as runner:
        assert sorted(c.topic for c in runner.consumers) == [topic, f"{topic}.b"]
        wait_for("both messages", lambda: len(seen) == 2)
    assert sorted(seen, key=lambda m: m["order_id"]) == [
        {"order_id": 1},
        {"order_id": 2, "raw": True},
    ]


def test_consumer_class_dispatches_by_event_name(
    configured: messaging.MessagingSettings,
    outbox: relaybox.Outbox,
    pg: psycopg.Connection[Any],
    rows: str,
    topic: str,
) -> None:
    instances: list[object] = []

    @messaging.consumer("order-service", topics=[topic, f"{topic}.payments"])
    class OrderEventsConsumer:
        def __init__(self) -> None:
            instances.append(self)

        @messaging.on_event("user.created")
        async def handle_user_created(self, event: Event, db: relaybox.AsyncTransaction) -> None:
            await db.execute(
                f"INSERT INTO {rows} (note) VALUES ($1)", [f"welcome {event.data['id']}"]
            )

        @messaging.on_event("payment.completed", "payment.settled")
        async def handle_payment(self, event: Event, db: relaybox.AsyncTransaction) -> None:
            assert event.source == "test-service" and event.message is not None
            await db.execute(
                f"INSERT INTO {rows} (note) VALUES ($1)",
                [f"{event.name} {event.data['order_id']} on {event.message.topic}"],
            )

    messaging.publish_event_sync("user.created", {"id": 1}, topic)
    messaging.publish_event_sync("user.renamed", {"id": 1}, topic)  # no handler: skipped
    messaging.get_producer().send_sync(topic, {"not": "an event"})  # no handler: skipped
    messaging.publish_event_sync("payment.completed", {"order_id": 5}, f"{topic}.payments")
    messaging.publish_event_sync("payment.settled", {"order_id": 6}, f"{topic}.payments")
    with messaging.start_consumers() as runner:
        wait_for(
            "every message acknowledged",
            lambda: sum(c.stats()["processed"] for c in runner.consumers) == 5,
        )
    assert sorted(notes(pg, rows)) == [
        f"payment.completed 5 on {topic}.payments",
        f"payment.settled 6 on {topic}.payments",
        "welcome 1",
    ]
    assert len(instances) == 1
    assert outbox.dead_letters() == []


def test_sync_consumer_class_and_one_argument_methods(
    configured: messaging.MessagingSettings, topic: str
) -> None:
    seen: list[str] = []

    @messaging.consumer("sync-service", topics=topic)
    class Listener:
        @messaging.on_event("ping")
        def ping(self, event: Event) -> None:
            seen.append(event.name)

    messaging.publish_event_sync("ping", {}, topic)
    with messaging.start_consumers():
        wait_for("the ping", lambda: seen == ["ping"])


def test_events_published_by_a_handler_join_its_transaction(
    configured: messaging.MessagingSettings, outbox: relaybox.Outbox, topic: str
) -> None:
    attempts: list[int] = []
    followups: list[dict[str, Any]] = []

    @messaging.event("order.confirmed", topic=f"{topic}.confirmed", key_field="order_id")
    def confirm(order_id: int) -> dict[str, Any]:
        return {"order_id": order_id}

    @messaging.message_handler(topic=topic, retry_delay=0.05)
    def handle(message: dict[str, Any], db: relaybox.Transaction) -> None:
        attempts.append(message["order_id"])
        confirm(message["order_id"])
        if len(attempts) == 1:
            raise RuntimeError("fails after publishing: the follow-up rolls back")

    @messaging.message_handler(topic=f"{topic}.confirmed")
    def on_confirmed(message: dict[str, Any], db: relaybox.Transaction) -> None:
        followups.append(message)

    messaging.publish_event_sync("order.created", {"order_id": 3}, topic)
    with messaging.start_consumers() as runner:
        wait_for("the follow-up", lambda: followups == [{"order_id": 3}])
        wait_for(
            "both consumers done",
            lambda: [c.stats()["processed"] for c in runner.consumers] == [1, 1],
        )
    assert attempts == [3, 3]
    assert followups == [{"order_id": 3}]


def test_selection_by_topic_and_group_and_auto_start(
    configured: messaging.MessagingSettings, topic: str
) -> None:
    @messaging.message_handler(topic=[topic, f"{topic}.other"])
    def first(message: Any) -> None:
        pass

    @messaging.consumer("manual-group", topics=[topic], auto_start=False)
    class Manual:
        @messaging.on_event("x")
        def on_x(self, event: Event) -> None:
            pass

    with messaging.start_consumers() as runner:
        assert sorted(c.topic for c in runner.consumers) == [topic, f"{topic}.other"]
    with messaging.start_consumers(topics=[f"{topic}.other"]) as runner:
        assert [c.topic for c in runner.consumers] == [f"{topic}.other"]
    with messaging.start_consumers(group="manual-group", relay=False) as runner:
        assert [(c.group, c.topic) for c in runner.consumers] == [("manual-group", topic)]
        assert runner.relay is None
    with pytest.raises(relaybox.ConfigError, match="no @message_handler or @consumer"):
        messaging.start_consumers(topics=["nobody-listens"])


def test_default_group_and_conflicting_groups(configured: messaging.MessagingSettings) -> None:
    def register() -> Callable[[Any], None]:
        @messaging.message_handler(topic="orders.created")
        def handle_order_created(message: Any) -> None:
            pass

        return handle_order_created

    handler = register()
    [registration] = messaging.get_registry().all()
    assert registration.group == f"{__name__}.{handler.__qualname__}"
    register()  # the same function registered again replaces the first registration
    assert len(messaging.get_registry().all()) == 1
    with pytest.raises(relaybox.ConfigError, match="already handles topic 'orders.created'"):

        @messaging.message_handler(topic="orders.created", group=registration.group)
        def another(message: Any) -> None:
            pass


def test_decorator_misuse_is_refused() -> None:
    with pytest.raises(TypeError, match="mixes plain and async"):

        @messaging.consumer("mixed")
        class Mixed:
            @messaging.on_event("a")
            def a(self, event: Event) -> None:
                pass

            @messaging.on_event("b")
            async def b(self, event: Event) -> None:
                pass

    with pytest.raises(TypeError, match="no @on_event methods"):

        @messaging.consumer("empty")
        class Empty:
            pass

    with pytest.raises(relaybox.ValidationError):
        messaging.message_handler(topic="bad topic")
    with pytest.raises(relaybox.ConfigError, match="retry_delay"):
        messaging.message_handler(topic="t", retry_delay=0)


def test_run_consumers_async_runs_async_handlers_on_the_loop(
    configured: messaging.MessagingSettings, topic: str
) -> None:
    seen: list[Any] = []

    runners: list[messaging.ConsumerRunner] = []

    @messaging.message_handler(topic=topic)
    async def handle(message: Any, db: relaybox.AsyncTransaction) -> None:
        seen.append((message, threading.current_thread() is threading.main_thread()))
        runners[0].request_stop()

    def ready(runner: messaging.ConsumerRunner) -> None:
        runners.append(runner)
        messaging.publish_event_sync("tick", {"n": 1}, topic)

    async def scenario() -> None:
        await messaging.run_consumers_async(ready=ready, handle_signals=False)

    asyncio.run(scenario())
    assert seen == [({"n": 1}, True)]
    assert not runners[0].running


def test_run_consumers_blocks_until_asked_to_stop(
    configured: messaging.MessagingSettings, topic: str
) -> None:
    seen: list[Any] = []
    runners: list[messaging.ConsumerRunner] = []

    @messaging.message_handler(topic=topic)
    def handle(message: Any) -> None:
        seen.append(message)
        runners[0].request_stop()

    def ready(runner: messaging.ConsumerRunner) -> None:
        runners.append(runner)
        messaging.publish_event_sync("tick", {"n": 2}, topic)

    messaging.run_consumers(ready=ready)
    assert seen == [{"n": 2}]
    assert not runners[0].running

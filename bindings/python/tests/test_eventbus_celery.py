"""The Celery task base with a real worker on the Redis of ``dev/services``: what a
task writes to the outbox on success and on failure, atomically with its own rows
(read back through the database transport; the SNS leg is in test_eventbus_aws.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import celery
import psycopg
import pytest
from celery.contrib.testing.worker import start_worker
from celery.result import _set_task_join_will_block
from celery.worker import WorkController
from conftest import wait_for
from service_checks import redis_url  # noqa: F401  (fixture)

import relaybox
from relaybox.eventbus import (
    AmazonSNSPublisher,
    AmazonSNSSubscriber,
    EventFailPayload,
    EventPayload,
    subscribers,
)
from relaybox.eventbus.celery import (
    CONSUMER_PATH,
    CeleryTaskWithCallback,
    SQSConsumer,
    add_consumer_option,
)

ARN = "arn:aws:sns:us-east-1:000000000000:orders"


class OrderRegisteredPayload(EventPayload):
    id: int
    total: float


class OrderRow:
    """A plain object standing in for an ORM row."""

    def __init__(self, id: int, total: float) -> None:  # noqa: A002
        self.id, self.total, self.secret_note = id, total, "not published"


@pytest.fixture
def table(pg: psycopg.Connection[Any], prefix: str) -> str:
    name = f"{prefix}orders"
    pg.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, total float NOT NULL)")
    return name


@pytest.fixture
def app(
    redis_url: str,  # noqa: F811
    outbox: relaybox.Outbox,
    table: str,
) -> Iterator[celery.Celery]:
    publisher = AmazonSNSPublisher("OrderService", {"topic_arn": ARN}, outbox=outbox)
    app = celery.Celery(f"eventbus-{uuid.uuid4().hex[:6]}", broker=redis_url, backend=redis_url)
    app.conf.task_default_queue = f"py-eventbus-{uuid.uuid4().hex[:8]}"
    app.conf.broker_connection_retry_on_startup = True

    @app.task(  # type: ignore[untyped-decorator]
        bind=True,
        base=CeleryTaskWithCallback,
        name="tests.place_order",
        publisher=publisher,
        payload_cls=OrderRegisteredPayload,
        routing_keys={"channel": "web"},
    )
    def place_order(task: CeleryTaskWithCallback, order_id: int, total: float) -> OrderRow:
        task.db.execute(f"INSERT INTO {table} (id, total) VALUES ($1, $2)", [order_id, total])
        if total < 0:
            raise ValueError(f"order {order_id}: negative total")
        return OrderRow(order_id, total)

    @app.task(  # type: ignore[untyped-decorator]
        bind=True,
        base=CeleryTaskWithCallback,
        name="tests.place_order_quietly",
        publisher=publisher,
        entity_name="Order",
        success_event_name="OrderPlaced",
        failure_event_name="OrderRejected",
        exception_payload_cls=EventFailPayload,
        reraise_on_failure=False,
    )
    def place_order_quietly(task: CeleryTaskWithCallback, order_id: int) -> dict[str, Any]:
        raise LookupError(f"order {order_id} is unknown")

    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30):
        yield app


def outbox_messages(outbox: relaybox.Outbox, expected: int) -> list[relaybox.Message]:
    seen: list[relaybox.Message] = []

    def keep(message: relaybox.Message, tx: relaybox.Transaction) -> None:
        seen.append(message)

    with relaybox.Relay(outbox, "database", poll_interval=0.05):
        with relaybox.Consumer(
            outbox, "orders", keep, group=f"g-{uuid.uuid4().hex[:8]}", transport="database"
        ):
            wait_for(f"{expected} events", lambda: len(seen) >= expected)
    return seen


def test_task_outcomes_are_published_through_the_outbox(
    app: celery.Celery, outbox: relaybox.Outbox, pg: psycopg.Connection[Any], table: str
) -> None:
    place = app.tasks["tests.place_order"]
    assert place.delay(order_id=1, total=9.5).get(timeout=60) == {"id": 1, "total": 9.5}
    with pytest.raises(ValueError, match="order 2: negative total"):
        place.delay(order_id=2, total=-1.0).get(timeout=60)
    assert app.tasks["tests.place_order_quietly"].delay(order_id=3).get(timeout=60) is None

    rows = pg.execute(f"SELECT id FROM {table} ORDER BY id").fetchall()
    assert rows == [(1,)]
    messages = {m.type: m for m in outbox_messages(outbox, 3)}
    assert set(messages) == {"OrderRegistered", "OrderRegistrationFailed", "OrderRejected"}

    success = messages["OrderRegistered"]
    assert success.headers == {
        "entityName": "Order",
        "publisherName": "OrderService",
        "eventName": "OrderRegistered",
        "channel": "web",
    }
    assert success.key == "1"
    body = json.loads(success.payload)
    assert body["Payload"] == {"id": 1, "total": 9.5}
    assert body["Metadata"]["EntityId"] == "1"

    failed = json.loads(messages["OrderRegistrationFailed"].payload)
    assert failed["Metadata"]["EventName"] == "OrderRegistrationFailed"
    assert failed["Payload"]["code"] == "ValueError"
    assert failed["Payload"]["detail"] == "order 2: negative total"
    assert failed["Payload"]["origin"] == "tests.place_order"
    assert failed["Payload"]["data"]["kwargs"] == {"order_id": 2, "total": -1.0}
    assert failed["Payload"]["data"]["task_id"]

    rejected = messages["OrderRejected"]
    assert rejected.headers["entityName"] == "Order"
    assert json.loads(rejected.payload)["Payload"]["code"] == "LookupError"


def test_the_publisher_comes_from_the_celery_setting_or_is_a_config_error(
    outbox: relaybox.Outbox,
) -> None:
    app = celery.Celery(f"eventbus-{uuid.uuid4().hex[:6]}")

    @app.task(  # type: ignore[untyped-decorator]
        bind=True, base=CeleryTaskWithCallback, name="tests.settle", entity_name="Order"
    )
    def settle(task: CeleryTaskWithCallback, order_id: int) -> dict[str, Any]:
        return {"id": order_id}

    failed = settle.apply(kwargs={"order_id": 1})
    assert isinstance(failed.result, relaybox.ConfigError)
    assert "publisher= option" in str(failed.result) and "eventbus_publisher" in str(failed.result)

    app.conf.eventbus_publisher = "no_such_module.publisher"
    failed = settle.apply(kwargs={"order_id": 2})
    assert isinstance(failed.result, relaybox.ConfigError)
    assert "'no_such_module.publisher', which cannot be imported" in str(failed.result)

    app.conf.eventbus_publisher = "json.dumps"
    failed = settle.apply(kwargs={"order_id": 3})
    assert isinstance(failed.result, relaybox.ConfigError)
    assert "is a function, not an AmazonSNSPublisher" in str(failed.result)
    assert outbox.pending_count() == 0

    app.conf.eventbus_publisher = AmazonSNSPublisher(
        "OrderService", {"topic_arn": ARN}, outbox=outbox
    )
    assert settle.apply(kwargs={"order_id": 4}, throw=True).result == {"id": 4}
    [message] = outbox_messages(outbox, 1)
    assert message.type == "OrderRegistered"
    assert json.loads(message.payload)["Payload"] == {"id": 4}


def test_the_sqs_consumer_takes_its_subscribers_queues_off_the_task_queues(
    outbox: relaybox.Outbox,
) -> None:
    app = celery.Celery(f"eventbus-{uuid.uuid4().hex[:6]}", broker="memory://")
    add_consumer_option(app)
    add_consumer_option(app)
    [option] = app.user_options["worker"]
    assert "--consumer" in option.opts

    events, tasks = f"q-events-{uuid.uuid4().hex[:6]}", f"q-tasks-{uuid.uuid4().hex[:6]}"
    subscriber = AmazonSNSSubscriber(events, lambda event: None, outbox=outbox)
    assert subscribers()[events] is subscriber

    try:
        worker = WorkController(
            app=app, queues=[tasks, events], pool_cls="solo", consumer_cls=CONSUMER_PATH
        )
        assert isinstance(worker.consumer, SQSConsumer)
        assert worker.consumer.subscribers == [subscriber]
        assert set(app.amqp.queues.consume_from) == {tasks}

        other = celery.Celery(f"eventbus-{uuid.uuid4().hex[:6]}", broker="memory://")
        with pytest.raises(
            relaybox.ConfigError,
            match=r"no AmazonSNSSubscriber for the worker's queues \['nobody-reads-this'\]",
        ):
            WorkController(
                app=other, queues=["nobody-reads-this"], pool_cls="solo", consumer_cls=SQSConsumer
            )
    finally:
        # A worker built in this process marks it as one whose tasks must not wait for
        # results; undo that as celery.contrib.testing.worker does.
        _set_task_join_will_block(False)

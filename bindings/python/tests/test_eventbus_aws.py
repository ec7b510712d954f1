"""The event bus end to end: real Celery tasks (Redis broker) publish through the
outbox, a relay delivers to SNS (moto), and an SQS queue subscribed to the topic
receives the events — read with boto3 and through relaybox's SQS subscriber.

Needs ``dev/services start postgres redis moto`` (REDIS_URL,
RELAYBOX_AWS_ENDPOINT_URL); nothing is skipped when they are down.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import celery
import psycopg
import pytest
from celery.contrib.testing.worker import start_worker
from conftest import wait_for
from service_checks import aws_endpoint, redis_url  # noqa: F401  (fixtures)

import relaybox
from relaybox.eventbus import (
    AmazonSNSPublisher,
    AmazonSNSSubscriber,
    Event,
    EventFailPayload,
    EventPayload,
)
from relaybox.eventbus.celery import CeleryTaskWithCallback

REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
SECRET = "Bearer s3cr3t-token-never-logged"


class XRegisteredPayload(EventPayload):
    id: int
    name: str


class XRegistrationFailedPayload(EventFailPayload):
    pass


class XRow:
    """A plain object standing in for an ORM row."""

    def __init__(self, id: int, name: str) -> None:  # noqa: A002
        self.id, self.name, self.internal = id, name, "never published"


class Bus:
    """A topic with two subscribed queues: one read with boto3, one with relaybox."""

    def __init__(self, endpoint: str) -> None:
        session = boto3.session.Session(region_name=REGION, **CREDENTIALS)
        self.sns = session.client("sns", endpoint_url=endpoint)
        self.sqs = session.client("sqs", endpoint_url=endpoint)
        suffix = uuid.uuid4().hex[:10]
        self.topic_arn = self.sns.create_topic(Name=f"py-x-{suffix}")["TopicArn"]
        self.queues: dict[str, str] = {}
        for role in ("boto", "relaybox"):
            name = f"py-x-{role}-{suffix}"
            url = self.sqs.create_queue(QueueName=name)["QueueUrl"]
            arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
                "Attributes"
            ]["QueueArn"]
            self.sns.subscribe(TopicArn=self.topic_arn, Protocol="sqs", Endpoint=arn)
            self.queues[role] = name
        self.boto_url = self.sqs.get_queue_url(QueueName=self.queues["boto"])["QueueUrl"]

    def receive(self, expected: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """``expected`` SNS notifications from the boto3 queue (deleted once read)."""
        notifications: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(notifications) < expected and time.monotonic() < deadline:
            reply = self.sqs.receive_message(
                QueueUrl=self.boto_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                MessageAttributeNames=["All"],
            )
            for message in reply.get("Messages", []):
                notifications.append(json.loads(message["Body"]))
                self.sqs.delete_message(
                    QueueUrl=self.boto_url, ReceiptHandle=message["ReceiptHandle"]
                )
        assert len(notifications) == expected, f"got {notifications!r}"
        return notifications

    def assert_empty(self, wait: float = 3.0) -> None:
        reply = self.sqs.receive_message(QueueUrl=self.boto_url, WaitTimeSeconds=int(wait))
        assert reply.get("Messages", []) == []


@pytest.fixture
def bus(aws_endpoint: str) -> Bus:  # noqa: F811
    return Bus(aws_endpoint)


@pytest.fixture
def publisher(bus: Bus, outbox: relaybox.Outbox, aws_endpoint: str) -> AmazonSNSPublisher:  # noqa: F811
    return AmazonSNSPublisher(
        "XService",
        {"topic_arn": bus.topic_arn, "region": REGION, "endpoint_url": aws_endpoint, **CREDENTIALS},
        outbox=outbox,
    )


@pytest.fixture
def relay(publisher: AmazonSNSPublisher, outbox: relaybox.Outbox) -> Iterator[relaybox.Relay]:
    with publisher.relay(outbox, poll_interval=0.05, backoff_initial=0.1) as running:
        yield running


@pytest.fixture
def rows(pg: psycopg.Connection[Any], prefix: str) -> str:
    table = f"{prefix}x"
    pg.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text NOT NULL)")
    return table


@pytest.fixture
def worker_app(
    redis_url: str,  # noqa: F811
    publisher: AmazonSNSPublisher,
    rows: str,
    relay: relaybox.Relay,
) -> Iterator[celery.Celery]:
    app = celery.Celery(f"eventbus-{uuid.uuid4().hex[:6]}", broker=redis_url, backend=redis_url)
    app.conf.task_default_queue = f"py-eventbus-{uuid.uuid4().hex[:8]}"
    app.conf.broker_connection_retry_on_startup = True

    @app.task(  # type: ignore[untyped-decorator]
        bind=True,
        base=CeleryTaskWithCallback,
        name="tests.register_x",
        publisher=publisher,
        payload_cls=XRegisteredPayload,
        exception_payload_cls=XRegistrationFailedPayload,
    )
    def register_x(task: CeleryTaskWithCallback, x_id: int, name: str, fail: bool = False) -> XRow:
        task.db.execute(f"INSERT INTO {rows} (id, name) VALUES ($1, $2)", [x_id, name])
        if fail:
            raise ValueError(f"X {x_id} cannot be registered")
        return XRow(x_id, name)

    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30):
        yield app


def names_in(pg: psycopg.Connection[Any], table: str) -> list[str]:
    return [str(r[0]) for r in pg.execute(f"SELECT name FROM {table} ORDER BY id").fetchall()]


def test_celery_task_success_and_failure_reach_sqs_through_sns(
    worker_app: celery.Celery, bus: Bus, pg: psycopg.Connection[Any], rows: str
) -> None:
    task = worker_app.tasks["tests.register_x"]
    assert task.delay(x_id=1, name="first").get(timeout=60) == {"id": 1, "name": "first"}
    with pytest.raises(ValueError, match="X 2 cannot be registered"):
        task.delay(x_id=2, name="second", fail=True).get(timeout=60)
    assert names_in(pg, rows) == ["first"]

    notifications = {n["MessageAttributes"]["eventName"]["Value"]: n for n in bus.receive(2)}
    assert set(notifications) == {"XRegistered", "XRegistrationFailed"}

    success = notifications["XRegistered"]
    assert success["Type"] == "Notification" and success["TopicArn"] == bus.topic_arn
    attributes = {k: v["Value"] for k, v in success["MessageAttributes"].items()}
    assert {k: attributes[k] for k in ("entityName", "publisherName", "eventName")} == {
        "entityName": "X",
        "publisherName": "XService",
        "eventName": "XRegistered",
    }
    assert attributes["relaybox-key"] == "1"
    assert "Authorization" not in attributes
    assert all(v["Type"] == "String" for v in success["MessageAttributes"].values())
    body = json.loads(success["Message"])
    assert list(body) == ["Metadata", "Payload"]
    assert body["Payload"] == {"id": 1, "name": "first"}
    assert body["Metadata"]["EntityName"] == "X"
    assert body["Metadata"]["EntityId"] == "1"
    assert body["Metadata"]["PublisherName"] == "XService"
    assert body["Metadata"]["EventName"] == "XRegistered"

    failure = json.loads(notifications["XRegistrationFailed"]["Message"])
    assert failure["Metadata"]["EventName"] == "XRegistrationFailed"
    assert failure["Metadata"]["EntityName"] == "X"
    payload = failure["Payload"]
    assert payload["code"] == "ValueError"
    assert payload["detail"] == "X 2 cannot be registered"
    assert payload["origin"] == "tests.register_x"
    assert payload["data"]["kwargs"] == {"x_id": 2, "name": "second", "fail": True}


def test_the_relaybox_subscriber_hook_gets_the_parsed_events(
    bus: Bus,
    publisher: AmazonSNSPublisher,
    outbox: relaybox.Outbox,
    relay: relaybox.Relay,
    aws_endpoint: str,  # noqa: F811
) -> None:
    received: list[Event] = []
    traces: list[Any] = []
    lock = threading.Lock()

    def hook(event: Event, trace_ctx: Any = None) -> None:
        with lock:
            received.append(event)
            traces.append(trace_ctx)

    event = publisher.event(
        "XRegistered",
        XRow(5, "fifth"),
        payload_cls=XRegisteredPayload,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        authorization=SECRET,
    )
    with outbox.transaction():
        publisher.publish(event, routing_keys={"tenant": "acme"})

    subscriber = AmazonSNSSubscriber(
        bus.queues["relaybox"],
        hook,
        region=REGION,
        endpoint_url=aws_endpoint,
        connection_url="sqs://testing:testing@",
        outbox=outbox,
        payload_classes={"XRegistered": XRegisteredPayload},
        poll_interval=0.1,
    )
    with subscriber:
        wait_for("the event in the hook", lambda: len(received) >= 1, timeout=60)
    [got] = received
    assert got.payload == XRegisteredPayload(id=5, name="fifth")
    assert got.metadata.event_name == "XRegistered"
    assert got.metadata.publisher_name == "XService"
    assert got.metadata.authorization is not None
    assert got.metadata.authorization.get_secret_value() == SECRET
    assert "s3cr3t" not in repr(got)
    assert traces == [
        {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tracestate": None,
        }
    ]
    [notification] = bus.receive(1)
    assert notification["MessageAttributes"]["tenant"] == {"Type": "String", "Value": "acme"}


def test_a_rolled_back_transaction_publishes_nothing(
    bus: Bus, publisher: AmazonSNSPublisher, outbox: relaybox.Outbox, relay: relaybox.Relay
) -> None:
    event = publisher.event("XRegistered", XRegisteredPayload(id=9, name="ninth"))
    with pytest.raises(RuntimeError):
        with outbox.transaction():
            publisher.publish(event)
            raise RuntimeError("the caller's transaction fails")
    with outbox.transaction():
        publisher.publish(publisher.event("XRegistered", XRegisteredPayload(id=10, name="tenth")))
    [only] = bus.receive(1)
    assert json.loads(only["Message"])["Payload"] == {"id": 10, "name": "tenth"}
    bus.assert_empty()

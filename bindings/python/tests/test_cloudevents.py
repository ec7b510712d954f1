"""CloudEvents on the wire: what a ``relaybox.Relay`` publishes with the ``cloudevents``
option is read by the official CloudEvents Python SDK, not by relaybox.

Kafka records go through the SDK's Kafka binding, RabbitMQ messages through its AMQP
and RabbitMQ bindings; SQS has no binding, so its ``ce_*`` message attributes (read
with boto3) must make a CloudEvent the SDK accepts. Needs ``dev/services start
postgres kafka rabbitmq moto``.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import boto3
import pika  # type: ignore[import-untyped]
import psycopg
import pytest
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import amqp, kafka, rabbitmq
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from conftest import wait_for
from service_checks import aws_endpoint, rabbitmq_url  # noqa: F401  (fixtures)

import relaybox


def created_at(pg: psycopg.Connection[Any], prefix: str, message_id: str) -> dt.datetime:
    """The ``created_at`` relaybox stored for a message (read before it is relayed)."""
    row = pg.execute(
        f'SELECT created_at FROM "{prefix}outbox" WHERE id = %s::uuid', (message_id,)
    ).fetchone()
    assert row is not None
    value: dt.datetime = row[0]
    return value


def header_bytes(headers: Any) -> dict[str, bytes]:
    """A Kafka record's headers as the SDK's ``KafkaMessage`` takes them."""
    pairs = headers.items() if isinstance(headers, dict) else headers or []
    return {
        name: value.encode() if isinstance(value, str) else value or b"" for name, value in pairs
    }


def relay_all(outbox: relaybox.Outbox, transport: relaybox.Transport, n: int) -> None:
    """Relay the outbox's ``n`` messages through ``transport``."""
    with relaybox.Relay(outbox, transport) as relay:
        wait_for(f"{n} messages relayed", lambda: relay.stats()["delivered"] == n)


def test_kafka_records_are_cloudevents_for_the_sdk(
    outbox: relaybox.Outbox, pg: psycopg.Connection[Any], prefix: str, kafka_bootstrap: str
) -> None:
    topic = f"py-ce-{uuid.uuid4().hex[:8]}"
    placed = outbox.enqueue(
        topic,
        {"order": 7},
        key="o-7",
        type="com.example.OrderPlaced",
        headers={"source": "/shop/orders"},
    )
    note = outbox.enqueue(topic, "seven", content_type="text/plain")
    created = {i: created_at(pg, prefix, i) for i in (placed, note)}
    transport = relaybox.Kafka(
        bootstrap_servers=kafka_bootstrap,
        create_topics=True,
        topic_partitions=1,
        cloudevents="urn:example:shop",
    )
    relay_all(outbox, transport, 2)

    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"ce-{topic}"})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    events: list[BaseCloudEvent] = []

    def read() -> int:
        record = consumer.poll(0.5)
        if record is not None and record.error() is None:
            key = record.key()
            message = kafka.KafkaMessage(
                headers=header_bytes(record.headers()),
                key=key.decode() if key is not None else None,
                value=record.value() or b"",
            )
            events.append(kafka.from_binary(message, JSONFormat()))
        return len(events)

    try:
        wait_for("2 records read from Kafka", lambda: read() >= 2)
    finally:
        consumer.close()

    # Messages of different keys may reach the partition in either order.
    by_id = {event.get_id(): event for event in events}
    first, second = by_id[placed], by_id[note]
    assert first.get_id() == placed
    assert first.get_source() == "/shop/orders"
    assert first.get_type() == "com.example.OrderPlaced"
    assert first.get_specversion() == "1.0"
    assert first.get_time() == created[placed]
    assert first.get_datacontenttype() == "application/json"
    assert first.get_data() == {"order": 7}
    assert first.get_extension("partitionkey") == "o-7"
    # Without a source header or a type: the option's source, the topic as type.
    assert second.get_id() == note
    assert second.get_source() == "urn:example:shop"
    assert second.get_type() == topic
    assert second.get_time() == created[note]
    assert second.get_datacontenttype() == "text/plain"
    assert second.get_data() == "seven"

    # A relaybox consumer reads the same messages as without the attributes.
    seen: dict[str, tuple[str, dict[str, str], dt.datetime, str | None]] = {}

    def handle(message: relaybox.Message, tx: relaybox.Transaction) -> None:
        seen[message.id] = (message.type, message.headers, message.created_at, message.key)

    with relaybox.Consumer(outbox, topic, handle, group=f"rb-{topic}", transport=transport) as c:
        wait_for("both consumed by relaybox", lambda: c.stats()["processed"] == 2, timeout=60)
    assert seen[placed] == (
        "com.example.OrderPlaced",
        {"source": "/shop/orders"},
        created[placed],
        "o-7",
    )
    assert seen[note] == ("", {}, created[note], None)


def test_rabbitmq_messages_are_cloudevents_for_both_sdk_bindings(
    outbox: relaybox.Outbox,
    pg: psycopg.Connection[Any],
    prefix: str,
    rabbitmq_url: str,  # noqa: F811
) -> None:
    run = uuid.uuid4().hex[:8]
    exchange, topic = f"relaybox-ce-{run}", f"orders.{run}.paid"
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        channel = connection.channel()
        channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
        queue = channel.queue_declare(queue="", exclusive=True).method.queue
        channel.queue_bind(queue=queue, exchange=exchange, routing_key=topic)
        paid = outbox.enqueue(topic, {"order": 8, "paid": True}, type="com.example.OrderPaid")
        paid_at = created_at(pg, prefix, paid)
        relay_all(
            outbox,
            {"rabbitmq": {"url": rabbitmq_url, "exchange": exchange, "cloudevents": True}},
            1,
        )
        got: list[tuple[Any, bytes]] = []

        def receive() -> int:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is not None:
                got.append((properties, body))
            return len(got)

        wait_for("the message in RabbitMQ", receive)
    finally:
        connection.close()
    [(properties, body)] = got
    headers = {
        k: v.decode() if isinstance(v, bytes) else v for k, v in (properties.headers or {}).items()
    }
    amqp_event = amqp.from_binary(
        amqp.AMQPMessage(
            properties={"content-type": properties.content_type},
            application_properties=headers,
            application_data=body,
        ),
        JSONFormat(),
    )
    rabbitmq_event = rabbitmq.from_binary(
        rabbitmq.RabbitMQMessage(headers=headers, content_type=properties.content_type, body=body),
        JSONFormat(),
    )
    for event in (amqp_event, rabbitmq_event):
        assert event.get_id() == paid
        assert event.get_source() == "relaybox"
        assert event.get_type() == "com.example.OrderPaid"
        assert event.get_specversion() == "1.0"
        assert event.get_time() == paid_at
        assert event.get_datacontenttype() == "application/json"
        assert event.get_data() == {"order": 8, "paid": True}
    assert headers["relaybox-id"] == paid, "relaybox's own headers stay"


def test_sqs_attributes_make_a_cloudevent(
    outbox: relaybox.Outbox,
    pg: psycopg.Connection[Any],
    prefix: str,
    aws_endpoint: str,  # noqa: F811
) -> None:
    queue = f"py-ce-{uuid.uuid4().hex[:8]}"
    shipped = outbox.enqueue(queue, {"order": 9}, key="o-9", type="com.example.OrderShipped")
    shipped_at = created_at(pg, prefix, shipped)
    credentials = {"region": "us-east-1", "access_key_id": "testing"}
    transport = {
        "sqs": {
            **credentials,
            "endpoint_url": aws_endpoint,
            "secret_access_key": "testing",
            "create_queues": True,
            "cloudevents": "https://shop.example/orders",
        }
    }
    relay_all(outbox, transport, 1)

    sqs = boto3.client(
        "sqs",
        endpoint_url=aws_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    reply = sqs.receive_message(QueueUrl=url, MessageAttributeNames=["All"], WaitTimeSeconds=5)
    [message] = reply["Messages"]
    attributes = {k: v["StringValue"] for k, v in message["MessageAttributes"].items()}
    ce = {k.removeprefix("ce_"): v for k, v in attributes.items() if k.startswith("ce_")}
    assert set(ce) == {"id", "source", "type", "specversion", "time"}
    event = CloudEvent(
        {
            **ce,
            "time": dt.datetime.fromisoformat(ce["time"].replace("Z", "+00:00")),
            "datacontenttype": attributes["content-type"],
        },
        json.loads(message["Body"]),
    )
    assert event.get_id() == shipped
    assert event.get_source() == "https://shop.example/orders"
    assert event.get_type() == "com.example.OrderShipped"
    assert event.get_specversion() == "1.0"
    assert event.get_time() == shipped_at
    assert event.get_datacontenttype() == "application/json"
    assert event.get_data() == {"order": 9}
    assert attributes["relaybox-id"] == shipped, "relaybox's own attributes stay"


@pytest.mark.parametrize("value", [5, "", "not a uri", ["urn:x"]])
def test_a_bad_cloudevents_value_is_a_config_error(outbox: relaybox.Outbox, value: Any) -> None:
    for transport in ({"kafka": {"cloudevents": value}}, {"sqs": {"cloudevents": value}}):
        with pytest.raises(relaybox.ConfigError, match="cloudevents") as caught:
            relaybox.Relay(outbox, transport).start()
        assert caught.value.code == "invalid_config"

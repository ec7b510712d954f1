"""The event bus without AWS: payload models, the PascalCase wire form, the masked
Authorization, and what the SNS publisher writes to the outbox (read back through
the database transport)."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest
from conftest import wait_for
from pydantic import SecretStr

import relaybox
from relaybox.eventbus import (
    AmazonSNSPublisher,
    Event,
    EventFailPayload,
    EventPayload,
    Metadata,
    parse_body,
)

SECRET = "Bearer s3cr3t-token-never-logged"
ARN = "arn:aws:sns:eu-west-1:000000000000:users"


class UserRegisteredPayload(EventPayload):
    id: int
    email: str


class UserRow:
    """A plain object standing in for an ORM row (attributes, not a mapping)."""

    def __init__(self, id: int, email: str) -> None:  # noqa: A002
        self.id = id
        self.email = email
        self.password_hash = "not-a-payload-field"


def publisher(outbox: relaybox.Outbox) -> AmazonSNSPublisher:
    return AmazonSNSPublisher(
        "UserService",
        {
            "topic_arn": ARN,
            "endpoint_url": "http://127.0.0.1:1",
            "aws_access_key_id": "AKIDX",
            "aws_secret_access_key": "very-secret-key",
        },
        outbox=outbox,
    )


def test_payloads_validate_from_plain_objects() -> None:
    payload = UserRegisteredPayload.model_validate(UserRow(7, "ada@example.com"))
    assert payload == UserRegisteredPayload(id=7, email="ada@example.com")
    assert payload.model_dump() == {"id": 7, "email": "ada@example.com"}

    failure = EventFailPayload(code="ValueError", detail="no such user", origin="tasks.register")
    assert failure.model_dump() == {
        "code": "ValueError",
        "data": None,
        "detail": "no such user",
        "origin": "tasks.register",
    }


def test_event_wire_form_is_pascal_case_and_round_trips() -> None:
    event = Event(
        metadata=Metadata(
            entity_id="7",
            entity_name="User",
            publisher_name="UserService",
            event_name="UserRegistered",
            traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            authorization=SecretStr(SECRET),
        ),
        payload=UserRegisteredPayload(id=7, email="ada@example.com"),
    )
    wire = event.to_wire()
    assert list(wire) == ["Metadata", "Payload"]
    assert list(wire["Metadata"]) == [
        "ContainsPersonalData",
        "Tracestate",
        "Traceparent",
        "Authorization",
        "PublishDate",
        "EntityId",
        "EntityName",
        "PublisherName",
        "EventName",
    ]
    assert wire["Metadata"]["EntityId"] == "7"
    assert wire["Metadata"]["Authorization"] == SECRET
    assert wire["Metadata"]["PublishDate"].endswith("Z")
    assert wire["Payload"] == {"id": 7, "email": "ada@example.com"}

    parsed = Event.from_wire(event.to_wire_json(), UserRegisteredPayload)
    assert parsed.metadata == event.metadata
    assert parsed.payload == event.payload
    loose = Event.from_wire(event.to_wire_json())
    assert isinstance(loose.payload, EventPayload)
    assert loose.payload.id == 7  # type: ignore[attr-defined]


def test_authorization_is_masked_everywhere_but_the_wire() -> None:
    metadata = Metadata(
        entity_name="User", publisher_name="P", event_name="E", authorization=SecretStr(SECRET)
    )
    event = Event(metadata=metadata, payload={"id": 1})
    for text in (
        repr(event),
        str(event),
        repr(metadata),
        event.model_dump_json(),
        str(event.model_dump()),
    ):
        assert "s3cr3t" not in text
    assert "s3cr3t" in event.to_wire_json().decode()


def test_sns_notification_bodies_are_unwrapped() -> None:
    event = Event(
        metadata=Metadata(entity_name="User", publisher_name="P", event_name="UserRegistered"),
        payload={"id": 3, "email": "x@example.com"},
    )
    notification = {
        "Type": "Notification",
        "MessageId": str(uuid.uuid4()),
        "TopicArn": ARN,
        "Message": event.to_wire_json().decode(),
        "MessageAttributes": {"eventName": {"Type": "String", "Value": "UserRegistered"}},
    }
    for body in (json.dumps(notification).encode(), event.to_wire_json()):
        parsed = parse_body(body, {"UserRegistered": UserRegisteredPayload})
        assert parsed.payload == UserRegisteredPayload(id=3, email="x@example.com")
        assert parsed.metadata.event_name == "UserRegistered"
    with pytest.raises(ValueError, match="not an event"):
        parse_body(b'{"hello": 1}')


def test_publisher_config_errors_name_the_field(outbox: relaybox.Outbox) -> None:
    with pytest.raises(relaybox.ConfigError, match="topic_arn"):
        AmazonSNSPublisher("UserService", {"region": "us-east-1"}, outbox=outbox)
    with pytest.raises(relaybox.ConfigError, match="topic_arn"):
        AmazonSNSPublisher("UserService", {"topic_arn": "users"}, outbox=outbox)
    with pytest.raises(relaybox.ConfigError, match="aws_secret_access_key"):
        AmazonSNSPublisher("S", {"topic_arn": ARN, "aws_access_key_id": "AKID"}, outbox=outbox)


def test_publisher_transport_and_repr_hide_the_credentials(outbox: relaybox.Outbox) -> None:
    pub = publisher(outbox)
    sns = pub.transport["sns"]
    assert sns["topic_arn"] == ARN
    assert sns["region"] == "eu-west-1"
    assert sns["endpoint_url"] == "http://127.0.0.1:1"
    assert "very-secret-key" not in repr(pub)
    assert pub.topic == "users"


def read_back(outbox: relaybox.Outbox, topic: str, expected: int) -> list[relaybox.Message]:
    seen: list[relaybox.Message] = []

    def keep(message: relaybox.Message, tx: relaybox.Transaction) -> None:
        seen.append(message)

    with relaybox.Relay(outbox, "database", poll_interval=0.05):
        with relaybox.Consumer(
            outbox, topic, keep, group=f"g-{uuid.uuid4().hex[:8]}", transport="database"
        ):
            wait_for(f"{expected} messages", lambda: len(seen) >= expected)
    return seen


def test_publish_writes_headers_key_and_wire_body_in_the_callers_transaction(
    outbox: relaybox.Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pub = publisher(outbox)
    event = pub.event(
        "UserRegistered",
        UserRow(42, "ada@example.com"),
        payload_cls=UserRegisteredPayload,
        authorization=SECRET,
    )
    assert event.metadata.entity_name == "User"
    assert event.metadata.entity_id == "42"

    with pytest.raises(RuntimeError, match="boom"):
        with outbox.transaction():
            pub.publish(event)
            raise RuntimeError("boom")
    assert outbox.pending_count() == 0

    with outbox.transaction() as tx:
        pub.publish(event, routing_keys={"tenant": "acme"}, db=tx)
    [message] = read_back(outbox, "users", 1)
    assert message.headers == {
        "entityName": "User",
        "publisherName": "UserService",
        "eventName": "UserRegistered",
        "tenant": "acme",
    }
    assert message.key == "42"
    assert message.type == "UserRegistered"
    body: dict[str, Any] = json.loads(message.payload)
    assert body["Payload"] == {"id": 42, "email": "ada@example.com"}
    assert body["Metadata"]["Authorization"] == SECRET
    assert body["Metadata"]["EventName"] == "UserRegistered"
    assert "s3cr3t" not in caplog.text

    with pytest.raises(relaybox.ConfigError, match="eventName"):
        pub.publish(event, routing_keys={"eventName": "spoofed"})

"""The façade writes the event envelope of tests/fixtures/facade_envelope.json, as Node's does."""

from __future__ import annotations

import json
import re

from conftest import FIXTURES

import relaybox
from relaybox import messaging
from relaybox.messaging.base import format_timestamp

from .helpers import read_topic

FIXTURE = json.loads((FIXTURES / "facade_envelope.json").read_text(encoding="utf-8"))
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_publish_event_writes_the_fixture_envelope(outbox: relaybox.Outbox) -> None:
    given = FIXTURE["publish"]
    messaging.configure_messaging(broker="database", outbox=outbox, source=given["source"])
    event = messaging.publish_event_sync(
        given["name"],
        given["data"],
        given["topic"],
        given["key"],
        metadata=given["metadata"],
    )
    # The event's own id and creation time are the fixture's only variables.
    timestamp = format_timestamp(event.timestamp)
    assert UUID.match(event.id) and TIMESTAMP.match(timestamp)

    def fill(text: str) -> str:
        return text.replace("<event id>", event.id).replace("<timestamp>", timestamp)

    (message,) = read_topic(outbox, given["topic"], 1)
    assert message.payload == fill(FIXTURE["payload"]).encode("utf-8")
    want = FIXTURE["message"]
    assert message.topic == want["topic"]
    assert message.key == want["key"]
    assert message.type == want["type"]
    assert message.content_type == want["content_type"]
    assert message.headers == {name: fill(value) for name, value in want["headers"].items()}

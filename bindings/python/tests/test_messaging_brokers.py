"""The 002 façade on RabbitMQ and Redis: ``broker="rabbitmq"|"redis"`` picks relaybox's
transport, and an event makes the round trip through the real server (outbox → relay
→ broker → ``@message_handler``).

Needs ``dev/services start postgres rabbitmq redis`` (RABBITMQ_URL, REDIS_URL).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import amqp
import pytest
import redis
from conftest import wait_for
from service_checks import rabbitmq_url, redis_url  # noqa: F401  (fixtures)

import relaybox
from relaybox import messaging

WAIT = 60.0
BROKER_VARIABLES = ("MESSAGE_BROKER", "KAFKA_BOOTSTRAP_SERVERS", "RABBITMQ_URL", "REDIS_URL")


@pytest.fixture(autouse=True)
def clean_facade() -> Iterator[None]:
    messaging.close_messaging()
    messaging.clear_registry()
    yield
    messaging.clear_registry()
    messaging.close_messaging()


@pytest.fixture
def no_broker_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in BROKER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_broker_names_map_to_the_core_transports(no_broker_env: pytest.MonkeyPatch) -> None:
    rabbit = messaging.configure_messaging(
        "rabbitmq", rabbitmq_url="amqp://u:pw@127.0.0.1:5672/%2f"
    )
    assert rabbit.transport == {
        "rabbitmq": {
            "url": "amqp://u:pw@127.0.0.1:5672/%2f",
            "exchange": "core_events",
            "codec": "envelope",
        }
    }
    assert "pw@" not in repr(rabbit)
    no_broker_env.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    redis = messaging.configure_messaging()
    assert redis.broker == "redis"
    assert redis.transport == {"redis": {"url": "redis://127.0.0.1:6379/0", "maxlen": 10000}}


@pytest.mark.parametrize(
    ("broker", "variable"), [("rabbitmq", "RABBITMQ_URL"), ("redis", "REDIS_URL")]
)
def test_a_broker_without_its_url_is_a_config_error(
    no_broker_env: pytest.MonkeyPatch, broker: str, variable: str
) -> None:
    with pytest.raises(relaybox.ConfigError, match=f"{broker}_url") as caught:
        messaging.configure_messaging(broker)
    assert variable in str(caught.value)
    assert caught.value.code == "invalid_config"


def new_topic() -> str:
    return f"py-brk-{uuid.uuid4().hex[:10]}"


def round_trip(
    outbox: relaybox.Outbox, topic: str, before_second: Callable[[], None] = lambda: None
) -> None:
    """Two events (and a rolled-back one) from the outbox to an ``@on_event`` handler.

    The second event is published once the first was handled, after ``before_second``.
    """
    seen: list[messaging.Event] = []
    lock = threading.Lock()

    @messaging.consumer("broker-test", topics=[topic])
    class Users:
        @messaging.on_event("user.created")
        def on_user(self, event: messaging.Event, db: relaybox.Transaction) -> None:
            with lock:
                seen.append(event)

    @messaging.event("user.created", topic=topic, key_field="id")
    def register(email: str) -> dict[str, Any]:
        return {"id": 7, "email": email}

    with outbox.transaction():
        register("ada@example.com")
    with pytest.raises(RuntimeError):
        with outbox.transaction():
            register("rolled-back@example.com")
            raise RuntimeError("rolled back")

    with messaging.start_consumers(relay=True):
        wait_for("the first event in the handler", lambda: len(seen) >= 1, timeout=WAIT)
        before_second()
        messaging.publish_event_sync(
            "user.created", {"id": 8, "email": "bob@example.com"}, topic, key=8
        )
        wait_for("both events in the handler", lambda: len(seen) >= 2, timeout=WAIT)
    assert sorted((e.name, e.data["email"], e.source) for e in seen) == [
        ("user.created", "ada@example.com", "test-service"),
        ("user.created", "bob@example.com", "test-service"),
    ]
    by_email = {e.data["email"]: e for e in seen}
    assert by_email["ada@example.com"].message is not None
    assert by_email["ada@example.com"].message.key == "7"
    assert by_email["ada@example.com"].message.headers["event_name"] == "user.created"


def test_rabbitmq_round_trip(outbox: relaybox.Outbox, rabbitmq_url: str) -> None:  # noqa: F811
    topic = new_topic()
    parts = urlsplit(rabbitmq_url)
    probe = amqp.Connection(
        host=f"{parts.hostname}:{parts.port or 5672}",
        userid=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        virtual_host=unquote(parts.path[1:] or "/"),
    )
    probe.connect()
    try:
        channel = probe.channel()
        queue, _, _ = channel.queue_declare("", exclusive=True)

        def bind_probe() -> None:
            # Bound once the handlers' queue exists: a message published while
            # no queue is bound stays in the outbox (mandatory publishing),
            # one published to the probe alone would never reach the handler.
            channel.queue_bind(queue, "core_events", routing_key=topic)

        messaging.configure_messaging(
            "rabbitmq", rabbitmq_url=rabbitmq_url, outbox=outbox, source="test-service"
        )
        round_trip(outbox, topic, bind_probe)
        message = channel.basic_get(queue, no_ack=True)
        assert message is not None
        assert channel.basic_get(queue, no_ack=True) is None
    finally:
        probe.close()
    assert message.properties["correlation_id"] == "8"
    envelope = json.loads(message.body)
    assert set(envelope) == {"id", "name", "data", "timestamp", "source", "metadata"}
    assert envelope["data"] == {"id": 8, "email": "bob@example.com"}
    assert message.properties["delivery_mode"] == 2
    assert message.properties["application_headers"]["event_name"] == "user.created"
    assert message.properties["application_headers"]["event_id"] == envelope["id"]
    assert message.delivery_info["routing_key"] == topic


def test_redis_round_trip(outbox: relaybox.Outbox, redis_url: str) -> None:  # noqa: F811
    topic = new_topic()
    messaging.configure_messaging(
        "redis", redis_url=redis_url, outbox=outbox, source="test-service"
    )
    round_trip(outbox, topic)

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        entries: list[tuple[str, dict[str, str]]] = client.xrange(topic)  # type: ignore[assignment]
    finally:
        client.close()
    fields = {entry["key"]: entry for _, entry in entries}
    assert set(fields) == {"7", "8"}
    envelope = json.loads(fields["7"]["data"])
    assert envelope["name"] == "user.created"
    assert envelope["data"] == {"id": 7, "email": "ada@example.com"}
    assert json.loads(fields["7"]["headers"])["event_name"] == "user.created"

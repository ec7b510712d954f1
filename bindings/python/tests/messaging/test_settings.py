"""configure_messaging: arguments, environment, broker → transport, bad settings."""

from __future__ import annotations

import pytest

import relaybox
from relaybox import messaging

ENV = (
    "MESSAGE_BROKER",
    "KAFKA_BOOTSTRAP_SERVERS",
    "RELAYBOX_KAFKA_BOOTSTRAP",
    "RABBITMQ_URL",
    "REDIS_URL",
    "RELAYBOX_DATABASE_URL",
    "DATABASE_URL",
    "MESSAGING_EVENT_SOURCE",
    "MESSAGING_DEFAULT_TOPIC",
    "RELAYBOX_TABLE_PREFIX",
)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment without any of the façade's variables."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_without_environment(env: pytest.MonkeyPatch) -> None:
    settings = messaging.configure_messaging()
    assert settings.broker == "database"
    assert settings.default_topic == "events"
    assert settings.source == ""
    assert settings.database_url is None
    assert settings.transport == "database"


def test_settings_come_from_the_environment(env: pytest.MonkeyPatch) -> None:
    env.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-1:9092,broker-2:9092")
    env.setenv("RELAYBOX_DATABASE_URL", "postgresql+asyncpg://app@db/app")
    env.setenv("MESSAGING_EVENT_SOURCE", "user-service")
    env.setenv("MESSAGING_DEFAULT_TOPIC", "domain-events")
    env.setenv("RELAYBOX_TABLE_PREFIX", "app_")
    settings = messaging.get_settings()
    assert settings.broker == "kafka"
    assert settings.bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert settings.database_url == "postgresql://app@db/app"
    assert settings.source == "user-service"
    assert settings.default_topic == "domain-events"
    assert settings.table_prefix == "app_"
    transport = settings.transport
    assert isinstance(transport, relaybox.Kafka)
    assert transport.bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert transport.create_topics


def test_arguments_override_the_environment(env: pytest.MonkeyPatch) -> None:
    env.setenv("MESSAGE_BROKER", "kafka")
    env.setenv("MESSAGING_EVENT_SOURCE", "from-env")
    settings = messaging.configure_messaging(
        "database", source="from-args", default_topic="orders", database_url="sqlite://x.db"
    )
    assert (settings.broker, settings.source, settings.default_topic) == (
        "database",
        "from-args",
        "orders",
    )
    assert settings.database_url == "sqlite://x.db"


def test_bootstrap_servers_argument_picks_kafka(env: pytest.MonkeyPatch) -> None:
    settings = messaging.configure_messaging(bootstrap_servers="localhost:9092")
    assert settings.broker == "kafka"


@pytest.mark.parametrize(
    ("variable", "broker"),
    [("RABBITMQ_URL", "rabbitmq"), ("REDIS_URL", "redis")],
)
def test_broker_urls_come_from_the_environment(
    env: pytest.MonkeyPatch, variable: str, broker: str
) -> None:
    with pytest.raises(relaybox.ConfigError, match=f"needs {broker}_url") as caught:
        messaging.configure_messaging(broker)
    assert caught.value.code == "invalid_config"
    env.setenv(variable, f"{broker}://localhost/")
    settings = messaging.get_settings()
    assert settings.broker == broker
    assert settings.transport[broker]["url"] == f"{broker}://localhost/"  # type: ignore[index, call-overload]


def test_unknown_broker_is_a_config_error(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(relaybox.ConfigError, match="unknown broker 'nats'"):
        messaging.configure_messaging("nats")


def test_bad_default_topic_and_source_are_refused(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(relaybox.ValidationError) as caught:
        messaging.configure_messaging(default_topic="not a topic")
    assert caught.value.code == "invalid_topic"
    with pytest.raises(relaybox.ValidationError):
        messaging.configure_messaging(source="two\nlines")


def test_publishing_without_a_database_says_what_to_set(env: pytest.MonkeyPatch) -> None:
    messaging.configure_messaging("database")
    with pytest.raises(relaybox.ConfigError, match="RELAYBOX_DATABASE_URL"):
        messaging.publish_event_sync("user.created", {"id": 1})


def test_the_outbox_opens_lazily_from_the_url(
    env: pytest.MonkeyPatch, pg_url: str, prefix: str
) -> None:
    messaging.configure_messaging("database", database_url=pg_url, table_prefix=prefix)
    box = messaging.get_outbox()
    assert box is messaging.get_outbox()
    assert box.table_prefix == prefix
    messaging.close_messaging()
    assert box.closed


def test_an_outbox_passed_in_is_used_and_left_open(
    env: pytest.MonkeyPatch, outbox: relaybox.Outbox
) -> None:
    messaging.configure_messaging("database", outbox=outbox)
    assert messaging.get_outbox() is outbox
    messaging.close_messaging()
    assert not outbox.closed

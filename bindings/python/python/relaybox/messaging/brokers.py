"""Broker name → relaybox transport: the one place that maps them.

=============  ==========================================================
``broker``     transport
=============  ==========================================================
``database``   the outbox database's own log table (``"database"``)
``kafka``      :class:`relaybox.Kafka` with the configured bootstrap
               servers and librdkafka properties; missing topics are
               created unless ``create_topics=False``
``rabbitmq``   relaybox's RabbitMQ transport on ``rabbitmq_url``: the
               topic exchange ``core_events``, routing key = topic,
               persistent messages with the envelope as JSON body
               (the ``envelope`` codec), ``correlation_id`` = key
``redis``      relaybox's Redis Streams transport on ``redis_url``: one
               stream per topic, ``XADD ... MAXLEN ~ 10000``
=============  ==========================================================

``rabbitmq`` and ``redis`` need their URL (argument or ``RABBITMQ_URL`` /
``REDIS_URL``); without it :class:`relaybox.ConfigError` names the setting.

A new transport plugs in by adding an entry to :data:`BROKERS`; nothing
else in the façade names brokers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from ..errors import ConfigError
from ..transport import Kafka, Transport

if TYPE_CHECKING:
    from .settings import MessagingSettings

__all__ = ["BROKERS", "RABBITMQ_EXCHANGE", "REDIS_MAXLEN", "config_error", "transport_for"]

RABBITMQ_EXCHANGE = "core_events"
"""The topic exchange events are published to on RabbitMQ."""

REDIS_MAXLEN = 10000
"""Approximate length each Redis stream is trimmed to (``MAXLEN ~``)."""


def config_error(message: str) -> ConfigError:
    """A :class:`relaybox.ConfigError` with the core's ``invalid_config`` code."""
    error = ConfigError(message)
    error.code = "invalid_config"
    return error


def _database(settings: MessagingSettings) -> Transport:
    return "database"


def _kafka(settings: MessagingSettings) -> Transport:
    return Kafka(
        bootstrap_servers=settings.bootstrap_servers,
        properties=dict(settings.kafka_properties),
        create_topics=settings.create_topics,
    )


def _url(name: str, url: Optional[str], variable: str) -> str:
    if not url:
        raise config_error(
            f"broker {name!r} needs {name}_url: pass configure_messaging({name}_url=...) "
            f"or set {variable}"
        )
    return url


def _rabbitmq(settings: MessagingSettings) -> Transport:
    url = _url("rabbitmq", settings.rabbitmq_url, "RABBITMQ_URL")
    config: dict[str, Any] = {"url": url, "exchange": RABBITMQ_EXCHANGE, "codec": "envelope"}
    return {"rabbitmq": config}


def _redis(settings: MessagingSettings) -> Transport:
    url = _url("redis", settings.redis_url, "REDIS_URL")
    return {"redis": {"url": url, "maxlen": REDIS_MAXLEN}}


BROKERS: dict[str, Callable[[MessagingSettings], Transport]] = {
    "database": _database,
    "kafka": _kafka,
    "rabbitmq": _rabbitmq,
    "redis": _redis,
}
"""Broker name → function building the relaybox transport from the settings."""


def transport_for(settings: MessagingSettings) -> Transport:
    """The relaybox transport of ``settings.broker``; :class:`relaybox.ConfigError` if none."""
    factory = BROKERS.get(settings.broker)
    if factory is None:
        known = ", ".join(repr(name) for name in BROKERS)
        raise config_error(f"unknown broker {settings.broker!r}; expected one of {known}")
    return factory(settings)

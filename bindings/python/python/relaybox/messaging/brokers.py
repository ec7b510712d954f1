"""Broker name → relaybox transport: the one place that maps them.

=============  ==========================================================
``broker``     transport
=============  ==========================================================
``database``   the outbox database's own log table (``"database"``)
``kafka``      :class:`relaybox.Kafka` with the configured bootstrap
               servers and librdkafka properties; missing topics are
               created unless ``create_topics=False``
``rabbitmq``   not available yet: :class:`relaybox.ConfigError`
``redis``      not available yet: :class:`relaybox.ConfigError`
=============  ==========================================================

A new transport plugs in by adding an entry to :data:`BROKERS`; nothing
else in the façade names brokers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ..errors import ConfigError
from ..transport import Kafka, Transport

if TYPE_CHECKING:
    from .settings import MessagingSettings

__all__ = ["BROKERS", "config_error", "transport_for"]


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


def _unavailable(name: str) -> Callable[[MessagingSettings], Transport]:
    def factory(settings: MessagingSettings) -> Transport:
        raise config_error(
            f"broker {name!r}: the {name} transport is not available in relaybox yet; "
            "use broker='kafka' or broker='database' (MESSAGE_BROKER)"
        )

    return factory


BROKERS: dict[str, Callable[[MessagingSettings], Transport]] = {
    "database": _database,
    "kafka": _kafka,
    "rabbitmq": _unavailable("rabbitmq"),
    "redis": _unavailable("redis"),
}
"""Broker name → function building the relaybox transport from the settings."""


def transport_for(settings: MessagingSettings) -> Transport:
    """The relaybox transport of ``settings.broker``; :class:`relaybox.ConfigError` if none."""
    factory = BROKERS.get(settings.broker)
    if factory is None:
        known = ", ".join(repr(name) for name in BROKERS)
        raise config_error(f"unknown broker {settings.broker!r}; expected one of {known}")
    return factory(settings)

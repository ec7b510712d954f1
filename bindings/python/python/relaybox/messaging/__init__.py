"""Decorator-style messaging over relaybox: ``@event``, ``@message_handler``, ``@consumer``.

A thin façade with the API of a web framework's ``core.messaging``: events
are JSON envelopes written to relaybox's transactional outbox (in your
transaction when there is one), relayed to the broker, and handled by
idempotent relaybox consumers::

    from relaybox.messaging import configure_messaging, event, message_handler

    configure_messaging(broker="kafka", bootstrap_servers="localhost:9092",
                        database_url="postgres://...", source="user-service")

    @event("user.created", topic="user-events", key_field="id")
    async def register(email: str, db) -> dict:
        ...
        return {"id": 1, "email": email}

    @message_handler(topic="user-events")
    async def on_user(message: dict, db) -> None:
        ...

Run the handlers with ``relaybox consumer --app my.module`` or
:func:`run_consumers`. See ``docs/python-messaging.md``.
"""

from __future__ import annotations

from .base import Event
from .brokers import BROKERS
from .emit import event
from .handlers import consumer, message_handler, on_event
from .producer import Producer, get_producer, publish_event, publish_event_sync
from .registry import Registration, Registry, clear_registry, get_registry
from .runner import ConsumerRunner, run_consumers, run_consumers_async, start_consumers
from .settings import (
    MessagingSettings,
    close_messaging,
    configure_messaging,
    get_outbox,
    get_outbox_async,
    get_settings,
)

__all__ = [
    "BROKERS",
    "ConsumerRunner",
    "Event",
    "MessagingSettings",
    "Producer",
    "Registration",
    "Registry",
    "clear_registry",
    "close_messaging",
    "configure_messaging",
    "consumer",
    "event",
    "get_outbox",
    "get_outbox_async",
    "get_producer",
    "get_registry",
    "get_settings",
    "message_handler",
    "on_event",
    "publish_event",
    "publish_event_sync",
    "run_consumers",
    "run_consumers_async",
    "start_consumers",
]

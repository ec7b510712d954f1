"""Settings of the messaging façade and the outbox it opens.

:func:`configure_messaging` takes its arguments, then the environment, then
the defaults:

==========================  ===========================  ==============================
setting                     environment variable         default
==========================  ===========================  ==============================
``broker``                  ``MESSAGE_BROKER``           inferred, see below
``bootstrap_servers``       ``KAFKA_BOOTSTRAP_SERVERS``  ``localhost:9092``
                            (or ``RELAYBOX_KAFKA_BOOTSTRAP``)
``rabbitmq_url``            ``RABBITMQ_URL``             none
``redis_url``               ``REDIS_URL``                none
``database_url``            ``RELAYBOX_DATABASE_URL``    none (required to publish)
                            (or ``DATABASE_URL``)
``source``                  ``MESSAGING_EVENT_SOURCE``   ``""``
``default_topic``           ``MESSAGING_DEFAULT_TOPIC``  ``events``
``table_prefix``            ``RELAYBOX_TABLE_PREFIX``    relaybox's (``relaybox_``)
==========================  ===========================  ==============================

Without a broker named, the first of ``bootstrap_servers`` /
``KAFKA_BOOTSTRAP_SERVERS``, ``RABBITMQ_URL``, ``REDIS_URL`` that is set picks
``kafka``, ``rabbitmq`` or ``redis``; with none, the broker is ``database``
(relaybox's log table in the outbox database).

The outbox (:func:`get_outbox`) is opened on first use, not by
:func:`configure_messaging`; events are written to it whatever the broker,
and the relay started by :func:`~relaybox.messaging.run_consumers` moves them
to the broker.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from ..outbox import AnyOutbox, AsyncOutbox, Outbox
from ..transport import Transport
from .base import check_names
from .brokers import config_error, transport_for

__all__ = [
    "MessagingSettings",
    "close_messaging",
    "configure_messaging",
    "get_outbox",
    "get_outbox_async",
    "get_settings",
]

_DRIVER_SUFFIX = re.compile(r"^(postgres(?:ql)?)\+[A-Za-z0-9_]+://")


@dataclass(frozen=True)
class MessagingSettings:
    """The façade's settings (see the module documentation for their sources)."""

    broker: str = "database"
    """``"kafka"``, ``"database"``, ``"rabbitmq"`` or ``"redis"``."""
    bootstrap_servers: str = "localhost:9092"
    """Kafka bootstrap servers."""
    rabbitmq_url: Optional[str] = field(default=None, repr=False)
    """AMQP URL of the RabbitMQ broker (``amqp://user:password@host:5672/vhost``)."""
    redis_url: Optional[str] = field(default=None, repr=False)
    """URL of the Redis server (``redis://host:6379/0``)."""
    database_url: Optional[str] = field(default=None, repr=False)
    """URL of the outbox database (``postgres://...`` or ``sqlite://...``)."""
    source: str = ""
    """Event source written in every envelope and in the ``event_source`` header."""
    default_topic: str = "events"
    """Topic of events and handlers that name none."""
    table_prefix: Optional[str] = None
    """Prefix of relaybox's tables (``None``: relaybox's default)."""
    migrate: bool = True
    """Create or update relaybox's tables when the outbox opens."""
    kafka_properties: Mapping[str, str] = field(default_factory=dict)
    """Extra librdkafka settings (SASL, SSL, ...)."""
    create_topics: bool = True
    """Create missing Kafka topics."""
    outbox: Optional[AnyOutbox] = field(default=None, repr=False, compare=False)
    """An outbox to use instead of opening ``database_url`` (the façade never closes it)."""
    handler_db: Any = field(default=None, repr=False, compare=False)
    """What handlers' ``db`` is: ``None`` (a :class:`relaybox.Transaction`), a SQLAlchemy
    ``sessionmaker`` / ``async_sessionmaker`` (a ``Session`` / ``AsyncSession``), or
    ``"django"`` (Django's connection, inside ``transaction.atomic()``). In each case
    it holds the message's inbox row, and the handler's writes commit with it."""

    @property
    def transport(self) -> Transport:
        """The relaybox transport of :attr:`broker` (see :mod:`relaybox.messaging.brokers`)."""
        return transport_for(self)


def _env(name: str) -> Optional[str]:
    value = os.environ.get(name, "").strip()
    return value or None


def _first(*values: Optional[str]) -> Optional[str]:
    for value in values:
        if value:
            return value
    return None


def _normalise_url(url: str) -> str:
    """``postgresql+asyncpg://...`` (SQLAlchemy style) → ``postgresql://...``."""
    return _DRIVER_SUFFIX.sub(r"\1://", url)


def _infer_broker(bootstrap_servers: Optional[str]) -> str:
    if bootstrap_servers or _env("KAFKA_BOOTSTRAP_SERVERS"):
        return "kafka"
    if _env("RABBITMQ_URL"):
        return "rabbitmq"
    if _env("REDIS_URL"):
        return "redis"
    return "database"


def _build(
    broker: Optional[str] = None,
    *,
    bootstrap_servers: Optional[str] = None,
    database_url: Optional[str] = None,
    source: Optional[str] = None,
    default_topic: Optional[str] = None,
    table_prefix: Optional[str] = None,
    rabbitmq_url: Optional[str] = None,
    redis_url: Optional[str] = None,
    migrate: bool = True,
    kafka_properties: Optional[Mapping[str, str]] = None,
    create_topics: bool = True,
    outbox: Optional[AnyOutbox] = None,
    handler_db: Any = None,
) -> MessagingSettings:
    _check_handler_db(handler_db)
    name = _first(broker, _env("MESSAGE_BROKER")) or _infer_broker(bootstrap_servers)
    url = _first(database_url, _env("RELAYBOX_DATABASE_URL"), _env("DATABASE_URL"))
    settings = MessagingSettings(
        broker=name.strip().lower(),
        bootstrap_servers=_first(
            bootstrap_servers, _env("KAFKA_BOOTSTRAP_SERVERS"), _env("RELAYBOX_KAFKA_BOOTSTRAP")
        )
        or "localhost:9092",
        rabbitmq_url=_first(rabbitmq_url, _env("RABBITMQ_URL")),
        redis_url=_first(redis_url, _env("REDIS_URL")),
        database_url=None if url is None else _normalise_url(url),
        source=source if source is not None else (os.environ.get("MESSAGING_EVENT_SOURCE") or ""),
        default_topic=_first(default_topic, _env("MESSAGING_DEFAULT_TOPIC")) or "events",
        table_prefix=_first(table_prefix, _env("RELAYBOX_TABLE_PREFIX")),
        migrate=migrate,
        kafka_properties=dict(kafka_properties or {}),
        create_topics=create_topics,
        outbox=outbox,
        handler_db=handler_db,
    )
    transport_for(settings)
    check_names(settings.default_topic, source=settings.source)
    return settings


def _check_handler_db(handler_db: Any) -> None:
    if handler_db is None or handler_db == "django":
        return
    if sys.modules.get("sqlalchemy") is not None:
        from sqlalchemy.orm import sessionmaker

        if isinstance(handler_db, sessionmaker):
            return
        if "sqlalchemy.ext.asyncio" in sys.modules:
            from sqlalchemy.ext.asyncio import async_sessionmaker

            if isinstance(handler_db, async_sessionmaker):
                return
    raise config_error(
        f"handler_db={type(handler_db).__qualname__}: handlers can run in a SQLAlchemy "
        "sessionmaker's or async_sessionmaker's session, or in Django's connection "
        '(handler_db="django"), or in a relaybox transaction (None)'
    )


class _State:
    """The configured settings and the outbox opened for them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.settings: Optional[MessagingSettings] = None
        self.outbox: Optional[Outbox] = None
        self.owned = False

    def release(self) -> None:
        """Close the outbox if the façade opened it, and forget it."""
        outbox, owned = self.outbox, self.owned
        self.outbox, self.owned = None, False
        if outbox is not None and owned and not outbox.closed:
            outbox.close()


_state = _State()


def configure_messaging(
    broker: Optional[str] = None,
    *,
    bootstrap_servers: Optional[str] = None,
    database_url: Optional[str] = None,
    source: Optional[str] = None,
    default_topic: Optional[str] = None,
    table_prefix: Optional[str] = None,
    rabbitmq_url: Optional[str] = None,
    redis_url: Optional[str] = None,
    migrate: bool = True,
    kafka_properties: Optional[Mapping[str, str]] = None,
    create_topics: bool = True,
    outbox: Optional[AnyOutbox] = None,
    handler_db: Any = None,
) -> MessagingSettings:
    """Configure the façade; return the settings in force.

    Arguments left ``None`` come from the environment, then the defaults
    (see :mod:`relaybox.messaging.settings`). ``outbox`` reuses an open
    :class:`relaybox.Outbox` instead of opening ``database_url``. Nothing
    connects here: the outbox opens on first use. ``handler_db`` makes
    handlers run in your ORM's transaction (see
    :attr:`MessagingSettings.handler_db`): a SQLAlchemy ``sessionmaker`` or
    ``async_sessionmaker``, or ``"django"``; anything else is a
    :class:`relaybox.ConfigError`.

    Raises :class:`relaybox.ConfigError` for an unknown broker or one whose
    URL is missing (``rabbitmq_url``, ``redis_url``), and
    :class:`relaybox.ValidationError` for an invalid ``default_topic`` or
    ``source``. Configuring again closes the outbox the façade had opened
    (stop running consumers first).
    """
    settings = _build(
        broker,
        bootstrap_servers=bootstrap_servers,
        database_url=database_url,
        source=source,
        default_topic=default_topic,
        table_prefix=table_prefix,
        rabbitmq_url=rabbitmq_url,
        redis_url=redis_url,
        migrate=migrate,
        kafka_properties=kafka_properties,
        create_topics=create_topics,
        outbox=outbox,
        handler_db=handler_db,
    )
    with _state.lock:
        _state.release()
        _state.settings = settings
    return settings


def get_settings() -> MessagingSettings:
    """The settings in force; from the environment if :func:`configure_messaging` was not called."""
    with _state.lock:
        if _state.settings is None:
            _state.settings = _build()
        return _state.settings


def _open_spec(settings: MessagingSettings) -> str:
    if settings.database_url is None:
        raise config_error(
            "no outbox database: set RELAYBOX_DATABASE_URL or call "
            "configure_messaging(database_url=...)"
        )
    return settings.database_url


def get_outbox() -> Outbox:
    """The façade's :class:`relaybox.Outbox`, opened (and migrated) on first use."""
    settings = get_settings()
    if settings.outbox is not None:
        return _sync(settings.outbox)
    with _state.lock:
        if _state.outbox is None or _state.outbox.closed:
            url = _open_spec(settings)
            _state.outbox = Outbox(
                url, migrate=settings.migrate, table_prefix=settings.table_prefix
            )
            _state.owned = True
        return _state.outbox


async def get_outbox_async() -> AsyncOutbox:
    """The façade's outbox as an :class:`relaybox.AsyncOutbox`; connecting does not block."""
    settings = get_settings()
    if settings.outbox is not None:
        return (
            settings.outbox.as_async() if isinstance(settings.outbox, Outbox) else settings.outbox
        )
    with _state.lock:
        if _state.outbox is not None and not _state.outbox.closed:
            return _state.outbox.as_async()
    url = _open_spec(settings)
    opened = await AsyncOutbox.open(
        url, migrate=settings.migrate, table_prefix=settings.table_prefix
    )
    with _state.lock:
        if _state.outbox is None or _state.outbox.closed:
            _state.outbox, _state.owned = opened.as_sync(), True
            return opened
        current = _state.outbox
    await opened.close()
    return current.as_async()


def _sync(outbox: AnyOutbox) -> Outbox:
    return outbox if isinstance(outbox, Outbox) else outbox.as_sync()


def close_messaging() -> None:
    """Close the outbox the façade opened and forget the settings (they are re-read on next use)."""
    with _state.lock:
        _state.release()
        _state.settings = None

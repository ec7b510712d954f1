"""Publishing by hand: :func:`publish_event` (an envelope) and :func:`get_producer` (raw JSON).

Both write to the outbox, in the caller's transaction when there is one
(see :mod:`relaybox.messaging.writer`); the relay delivers afterwards. An
invalid topic or data that is not JSON-serialisable raises
:class:`relaybox.ValidationError` and writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from .base import Event
from .encoding import event_data, json_bytes
from .settings import get_settings
from .writer import Outgoing, write, write_async

__all__ = ["Producer", "event_message", "get_producer", "publish_event", "publish_event_sync"]


def event_message(
    event: Event,
    topic: str,
    key: Optional[Any] = None,
    headers: Optional[Mapping[str, str]] = None,
) -> Outgoing:
    """The outbox message of ``event``: its envelope, type = name, and the event headers.

    ``headers`` are sent too; the event headers win over them.
    """
    all_headers = dict(headers or {})
    all_headers.update(event.headers())
    return Outgoing(
        topic=topic,
        payload=event.to_json(),
        key=None if key is None else str(key),
        type=event.name,
        headers=all_headers,
    )


def _raw_message(
    topic: str, message: Any, key: Optional[Any], headers: Optional[Mapping[str, str]]
) -> Outgoing:
    if isinstance(message, (bytes, bytearray, memoryview)):
        payload, content_type = bytes(message), "application/octet-stream"
    else:
        payload, content_type = json_bytes(message), "application/json"
    return Outgoing(
        topic=topic,
        payload=payload,
        key=None if key is None else str(key),
        headers=dict(headers) if headers else None,
        content_type=content_type,
    )


def _event(
    event_name: str, data: Any, source: Optional[str], metadata: Optional[Mapping[str, Any]]
) -> Event:
    return Event(
        name=event_name,
        data=event_data(data),
        source=get_settings().source if source is None else source,
        metadata=dict(metadata or {}),
    )


async def publish_event(
    event_name: str,
    data: Any = None,
    topic: Optional[str] = None,
    key: Optional[Any] = None,
    *,
    source: Optional[str] = None,
    metadata: Optional[Mapping[str, Any]] = None,
    headers: Optional[Mapping[str, str]] = None,
    db: Any = None,
) -> Event:
    """Publish an event envelope to ``topic`` (default: the configured default topic).

    ``data`` is converted like an ``@event`` result (a dict, a pydantic model,
    ...); ``source`` defaults to the configured source. Returns the event.
    """
    event = _event(event_name, data, source, metadata)
    out = event_message(event, topic or get_settings().default_topic, key, headers)
    await write_async(out, db)
    return event


def publish_event_sync(
    event_name: str,
    data: Any = None,
    topic: Optional[str] = None,
    key: Optional[Any] = None,
    *,
    source: Optional[str] = None,
    metadata: Optional[Mapping[str, Any]] = None,
    headers: Optional[Mapping[str, str]] = None,
    db: Any = None,
) -> Event:
    """:func:`publish_event` for sync code."""
    event = _event(event_name, data, source, metadata)
    out = event_message(event, topic or get_settings().default_topic, key, headers)
    write(out, db)
    return event


class Producer:
    """Sends raw JSON messages (no envelope) through the outbox.

    ``message`` is anything :func:`relaybox.messaging.encoding.json_bytes`
    accepts (dicts, lists, pydantic models, ...); ``bytes`` are sent untouched
    as ``application/octet-stream``. Every method returns the relaybox message id.
    """

    async def send(
        self,
        topic: str,
        message: Any,
        key: Optional[Any] = None,
        headers: Optional[Mapping[str, str]] = None,
        *,
        db: Any = None,
    ) -> str:
        """Write ``message`` to ``topic`` (in the caller's transaction, if any)."""
        return await write_async(_raw_message(topic, message, key, headers), db)

    def send_sync(
        self,
        topic: str,
        message: Any,
        key: Optional[Any] = None,
        headers: Optional[Mapping[str, str]] = None,
        *,
        db: Any = None,
    ) -> str:
        """:meth:`send` for sync code."""
        return write(_raw_message(topic, message, key, headers), db)

    async def send_event(
        self,
        topic: str,
        event: Event,
        key: Optional[Any] = None,
        headers: Optional[Mapping[str, str]] = None,
        *,
        db: Any = None,
    ) -> str:
        """Write ``event`` as an envelope to ``topic``."""
        return await write_async(event_message(event, topic, key, headers), db)

    def send_event_sync(
        self,
        topic: str,
        event: Event,
        key: Optional[Any] = None,
        headers: Optional[Mapping[str, str]] = None,
        *,
        db: Any = None,
    ) -> str:
        """:meth:`send_event` for sync code."""
        return write(event_message(event, topic, key, headers), db)

    async def start(self) -> None:
        """Nothing to start: the outbox opens on first use (kept for compatibility)."""

    async def stop(self) -> None:
        """Nothing to stop: delivery is the relay's job (kept for compatibility)."""


_producer = Producer()


def get_producer() -> Producer:
    """The façade's producer."""
    return _producer

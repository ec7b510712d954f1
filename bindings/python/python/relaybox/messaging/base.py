"""The event envelope: :class:`Event`, its JSON form and its headers.

An event travels as one JSON object, the envelope::

    {"id": "...", "name": "user.created", "data": {...},
     "timestamp": "2026-02-01T12:00:00.000000Z", "source": "my-service", "metadata": {}}

with three headers beside it (Kafka record headers on Kafka): ``event_name``,
``event_id`` and ``event_source``. The relaybox message's ``type`` is the event
name too, and its key is the event's key.
"""

from __future__ import annotations

import datetime as _dt
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from .. import _native
from .._spec import message_spec
from ..consumer import Message
from .encoding import json_bytes

__all__ = [
    "Event",
    "HEADER_EVENT_ID",
    "HEADER_EVENT_NAME",
    "HEADER_EVENT_SOURCE",
    "ENVELOPE_FIELDS",
    "check_names",
    "format_timestamp",
    "parse_timestamp",
]

HEADER_EVENT_NAME = "event_name"
"""Header carrying the event name."""
HEADER_EVENT_ID = "event_id"
"""Header carrying the event id."""
HEADER_EVENT_SOURCE = "event_source"
"""Header carrying the event source."""
ENVELOPE_FIELDS = ("id", "name", "data", "timestamp", "source", "metadata")
"""The keys of the JSON envelope, in the order they are written."""


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _new_id() -> str:
    return str(uuid.uuid4())


def format_timestamp(moment: _dt.datetime) -> str:
    """ISO 8601 in UTC with microseconds and a ``Z``: ``2026-02-01T12:00:00.000000Z``.

    A naive datetime is taken to be UTC.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    utc = moment.astimezone(_dt.timezone.utc).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


def parse_timestamp(text: str) -> _dt.datetime:
    """Parse an ISO 8601 timestamp (``Z`` or an offset; naive means UTC) to an aware datetime."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    moment = _dt.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    return moment


@dataclass
class Event:
    """One event: what ``@event`` and :func:`publish_event` send and ``@on_event`` receives.

    ``id`` is a UUID of the event itself (it is not the relaybox message id,
    which :attr:`message` carries on the consuming side); ``timestamp`` is
    when the event was created, in UTC.
    """

    name: str
    """Event name, e.g. ``"user.created"``."""
    data: Any = field(default_factory=dict)
    """The payload: usually a dict."""
    id: str = field(default_factory=_new_id)
    """Unique id of the event (UUID text)."""
    timestamp: _dt.datetime = field(default_factory=_now)
    """Creation time (timezone-aware)."""
    source: str = ""
    """Name of the producing service."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free-form metadata (correlation ids and the like)."""
    message: Optional[Message] = field(default=None, repr=False, compare=False)
    """On the consuming side: the relaybox message the event arrived in (topic, key, headers)."""

    def to_dict(self) -> dict[str, Any]:
        """The envelope as a dict (``timestamp`` as ISO 8601 text)."""
        return {
            "id": self.id,
            "name": self.name,
            "data": self.data,
            "timestamp": format_timestamp(self.timestamp),
            "source": self.source,
            "metadata": self.metadata,
        }

    def to_json(self) -> bytes:
        """The envelope as compact UTF-8 JSON.

        Raises :class:`relaybox.ValidationError` when ``data`` or ``metadata``
        is not JSON-serialisable.
        """
        return json_bytes(self.to_dict())

    def headers(self) -> dict[str, str]:
        """The headers sent with the envelope: ``event_name``, ``event_id``, ``event_source``."""
        return {
            HEADER_EVENT_NAME: self.name,
            HEADER_EVENT_ID: self.id,
            HEADER_EVENT_SOURCE: self.source,
        }

    @classmethod
    def from_dict(cls, envelope: Mapping[str, Any], message: Optional[Message] = None) -> Event:
        """Build an event from an envelope dict.

        Missing fields get their defaults; a missing or unparseable
        ``timestamp`` becomes the message's creation time (or now).
        """
        stamp = envelope.get("timestamp")
        metadata = envelope.get("metadata")
        try:
            timestamp = parse_timestamp(stamp) if isinstance(stamp, str) else None
        except ValueError:
            timestamp = None
        if timestamp is None:
            timestamp = message.created_at if message is not None else _now()
        return cls(
            name=str(envelope.get("name") or ""),
            data=envelope.get("data", {}),
            id=str(envelope.get("id") or _new_id()),
            timestamp=timestamp,
            source=str(envelope.get("source") or ""),
            metadata=dict(metadata) if isinstance(metadata, Mapping) else {},
            message=message,
        )

    @classmethod
    def from_json(cls, text: str | bytes, message: Optional[Message] = None) -> Event:
        """Parse an envelope from JSON text or bytes."""
        value = json.loads(text)
        if not isinstance(value, Mapping):
            raise ValueError("an event envelope is a JSON object")
        return cls.from_dict(value, message)

    @classmethod
    def from_message(cls, message: Message) -> Event:
        """The event carried by a relaybox message (see :func:`relaybox.messaging.decode`)."""
        from .decode import decode

        return decode(message).event


def check_names(topic: str, event_name: Optional[str] = None, source: Optional[str] = None) -> None:
    """Check a topic, an event name and a source with the core's rules, writing nothing.

    Raises :class:`relaybox.ValidationError` (code ``invalid_topic``,
    ``invalid_message`` or ``invalid_header``).
    """
    headers: dict[str, str] = {}
    if event_name is not None:
        headers[HEADER_EVENT_NAME] = event_name
    if source is not None:
        headers[HEADER_EVENT_SOURCE] = source
    _native.canonical_json_of(message_spec(topic, b"", type=event_name, headers=headers))

"""Incoming messages: envelope or raw JSON, and what handlers receive.

A message is an *envelope* when it carries the ``event_name`` header, or when
its body is a JSON object with at least the keys ``id``, ``name``, ``data`` and
``timestamp`` (an envelope that lost its headers on the way). Then
``@message_handler`` functions receive the envelope's ``data`` and
``@on_event`` methods an :class:`~relaybox.messaging.base.Event`. Any other
message is *raw*: handlers receive its decoded JSON body, and ``@on_event``
sees it as an event named after the message's relaybox ``type`` whose
``data`` is that body.

A body that is not JSON cannot be handled: :func:`decode` raises
:class:`relaybox.Reject`, which sends the message to dead letters at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from ..consumer import Message
from ..errors import Reject
from .base import HEADER_EVENT_ID, HEADER_EVENT_NAME, HEADER_EVENT_SOURCE, Event

__all__ = ["Decoded", "decode", "event_name_of"]

_ENVELOPE_KEYS = frozenset({"id", "name", "data", "timestamp"})


@dataclass(frozen=True)
class Decoded:
    """A message as the façade sees it."""

    event: Event
    """The event (for raw messages: named after the message type, ``data`` = the body)."""
    envelope: bool
    """Whether the message was an event envelope."""

    @property
    def value(self) -> Any:
        """What a ``@message_handler`` function receives: the envelope's ``data`` or the body."""
        return self.event.data


def event_name_of(message: Message) -> Optional[str]:
    """The event name from the headers alone (no body parsing), or ``None``."""
    return message.headers.get(HEADER_EVENT_NAME)


def _body(message: Message) -> Any:
    try:
        return json.loads(message.payload)
    except ValueError as exc:
        raise Reject(
            f"message {message.id} on topic {message.topic!r} is not JSON "
            f"(content type {message.content_type!r}): {exc}"
        ) from None


def _looks_like_envelope(body: Any) -> bool:
    return (
        isinstance(body, Mapping)
        and _ENVELOPE_KEYS <= body.keys()
        and isinstance(body.get("name"), str)
    )


def decode(message: Message) -> Decoded:
    """Decode ``message``; raises :class:`relaybox.Reject` when the body is not JSON."""
    body = _body(message)
    headers = message.headers
    header_name = headers.get(HEADER_EVENT_NAME)
    if header_name is not None or _looks_like_envelope(body):
        envelope: Mapping[str, Any] = (
            body if isinstance(body, Mapping) and "data" in body else {"data": body}
        )
        event = Event.from_dict(envelope, message)
        if header_name is not None:
            event.name = header_name
            event.id = headers.get(HEADER_EVENT_ID, event.id)
            event.source = headers.get(HEADER_EVENT_SOURCE, event.source)
        return Decoded(event=event, envelope=True)
    event = Event(name=message.type, data=body, id=message.id, source="", message=message)
    event.timestamp = message.created_at
    return Decoded(event=event, envelope=False)

"""The enqueue keywords, declared once, and the spec dict the native layer reads (internal)."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional, TypedDict, Union

from . import _tracing
from ._payload import encode

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Delay", "EnqueueOptions", "message_spec"]

Delay = Union[float, _dt.timedelta, None]


class EnqueueOptions(TypedDict, total=False):
    """The keywords of every enqueue call (``tx.enqueue``, ``relaybox.sqlalchemy.enqueue``, ...).

    Each is optional. In a batch, each message is a mapping of ``topic``,
    ``payload`` and these keys.
    """

    key: Optional[Any]
    """Ordering key: messages of one key are delivered in order (``str()`` of the value)."""
    type: Optional[str]
    """The message's type, e.g. ``"OrderPlaced"``."""
    headers: Optional[Mapping[str, str]]
    """Text headers carried to the broker."""
    content_type: Optional[str]
    """MIME type of the payload; detected from the payload when omitted."""
    delay: Delay
    """Deliver no sooner than this many seconds (or this ``timedelta``) after commit."""
    available_at: Optional[_dt.datetime]
    """Deliver no sooner than this instant."""
    idempotency_key: Optional[str]
    """The producer's idempotency key: a second enqueue with the same key on the same
    topic writes nothing and returns the first message's id (see docs/python.md)."""


_KEYWORDS = frozenset(EnqueueOptions.__annotations__)


def message_spec(topic: str, payload: Any, **options: Unpack[EnqueueOptions]) -> dict[str, Any]:
    """The spec dict of one message; an unknown keyword is a ``TypeError``.

    ``payload`` may be ``bytes`` (sent untouched), ``str``, a pydantic model,
    a dataclass or any JSON-serialisable value. With OpenTelemetry installed,
    the headers carry the trace context of the message's ``create`` span.
    """
    unknown = set(options) - _KEYWORDS
    if unknown:
        raise TypeError(
            f"unexpected enqueue keyword(s): {', '.join(sorted(unknown))} "
            f"(expected: {', '.join(sorted(_KEYWORDS))})"
        )
    data, detected = encode(payload)
    delay = options.get("delay")
    if isinstance(delay, _dt.timedelta):
        delay = delay.total_seconds()
    key = options.get("key")
    headers = options.get("headers")
    return {
        "topic": topic,
        "payload": data,
        "key": None if key is None else str(key),
        "type": options.get("type"),
        "headers": _tracing.stamp(topic, headers, options.get("type")),
        "content_type": options.get("content_type") or detected,
        "delay": delay,
        "available_at": options.get("available_at"),
        "idempotency_key": options.get("idempotency_key"),
    }

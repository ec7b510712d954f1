"""Message specs: the keyword form the native layer turns into core messages (internal)."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any, Optional, Union

from ._payload import encode

Delay = Union[float, _dt.timedelta, None]


def message_spec(
    topic: str,
    payload: Any,
    *,
    key: Optional[Any] = None,
    type: Optional[str] = None,  # noqa: A002 - the message field's name
    headers: Optional[Mapping[str, str]] = None,
    content_type: Optional[str] = None,
    delay: Delay = None,
    available_at: Optional[_dt.datetime] = None,
) -> dict[str, Any]:
    """Build the spec dict of one message (see :meth:`relaybox.Transaction.enqueue`)."""
    data, detected = encode(payload)
    if isinstance(delay, _dt.timedelta):
        delay = delay.total_seconds()
    return {
        "topic": topic,
        "payload": data,
        "key": None if key is None else str(key),
        "type": type,
        "headers": dict(headers) if headers is not None else None,
        "content_type": content_type or detected,
        "delay": delay,
        "available_at": available_at,
    }

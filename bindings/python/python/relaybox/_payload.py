"""Turning Python payloads into bytes and a content type (internal)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from .errors import ValidationError

JSON = "application/json"


def encode(payload: Any) -> tuple[bytes, str]:
    """Return ``(bytes, content_type)`` for a payload.

    ``bytes``-like values are sent untouched (``application/octet-stream``),
    ``str`` as UTF-8 (``text/plain; charset=utf-8``), pydantic models, dataclass
    instances and anything ``json.dumps`` accepts as compact JSON
    (``application/json``). Anything else raises :class:`ValidationError`.
    """
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload), "application/octet-stream"
    if isinstance(payload, str):
        return payload.encode("utf-8"), "text/plain; charset=utf-8"
    dump_json = getattr(payload, "model_dump_json", None)
    if callable(dump_json) and not isinstance(payload, type):
        return str(dump_json()).encode("utf-8"), JSON
    if dataclasses.is_dataclass(payload) and not isinstance(payload, type):
        payload = dataclasses.asdict(payload)
    return dumps(payload), JSON


def dumps(value: Any) -> bytes:
    """Compact JSON bytes of ``value``; :class:`ValidationError` if it is not JSON-serialisable."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
            "utf-8"
        )
    except (TypeError, ValueError) as exc:
        error = ValidationError(f"payload is not JSON-serialisable: {exc}")
        error.code = "invalid_message"
        raise error from None

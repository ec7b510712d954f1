"""Python values to JSON: event data from a function's result, keys, message bodies.

``data`` of an event built from a result (``@event``) or passed to
:func:`~relaybox.messaging.publish_event`:

- ``None`` (or ``include_result=False``): ``{}``;
- a mapping: a dict of it;
- a pydantic model: ``model_dump(mode="json")``;
- a dataclass instance: ``dataclasses.asdict``;
- an object with a ``to_dict()`` method: what it returns;
- a SQLAlchemy-mapped object (its class has ``__table__``): its columns;
- any other object with a ``__dict__`` (a plain class instance): its public attributes;
- anything else (numbers, strings, lists): ``{"result": value}``.

JSON encoding also accepts ``datetime``/``date``/``time`` (ISO 8601), ``UUID``
and ``Decimal`` (as text), enums (their value) and sets (as lists); any other
value raises :class:`relaybox.ValidationError` and nothing is written.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import json
import uuid
from collections.abc import Mapping
from typing import Any, Optional

from ..errors import ValidationError

__all__ = ["event_data", "json_bytes", "message_key", "to_jsonable"]


def _default(value: Any) -> Any:
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, decimal.Decimal)):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return list(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _invalid(reason: str) -> ValidationError:
    error = ValidationError(reason)
    error.code = "invalid_message"
    return error


def json_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON of ``value``; :class:`relaybox.ValidationError` when it cannot be."""
    try:
        text = json.dumps(
            value, default=_default, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise _invalid(f"event data is not JSON-serialisable: {exc}") from None
    return text.encode("utf-8")


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (dicts, lists, strings, numbers, booleans, ``None``)."""
    return json.loads(json_bytes(value))


def _columns(value: Any) -> Optional[dict[str, Any]]:
    table = getattr(type(value), "__table__", None)
    columns = getattr(table, "columns", None)
    if columns is None:
        return None
    return {column.key: getattr(value, column.key, None) for column in columns}


def event_data(result: Any) -> Any:
    """The ``data`` of an event made from ``result`` (see the module documentation)."""
    if result is None:
        return {}
    if isinstance(result, Mapping):
        return dict(result)
    if isinstance(result, (str, bytes, bytearray, int, float, bool, list, tuple)):
        return {"result": result}
    dump = getattr(result, "model_dump", None)
    if callable(dump) and not isinstance(result, type):
        return dump(mode="json")
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    to_dict = getattr(result, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    columns = _columns(result)
    if columns is not None:
        return columns
    attributes = getattr(result, "__dict__", None)
    if isinstance(attributes, dict) and not isinstance(result, type):
        return {k: v for k, v in attributes.items() if not k.startswith("_")}
    return {"result": result}


def message_key(result: Any, data: Any, key_field: str) -> str:
    """The message key: ``data[key_field]``, else ``result[key_field]`` or ``result.key_field``.

    Raises :class:`relaybox.ValidationError` when the field is missing or ``None``.
    """
    value: Any = None
    for source in (data, result):
        if isinstance(source, Mapping):
            value = source.get(key_field)
        elif source is not None:
            value = getattr(source, key_field, None)
        if value is not None:
            break
    if value is None:
        error = ValidationError(
            f"key_field {key_field!r} is missing or None in the result; "
            "it is needed as the message key"
        )
        error.code = "invalid_message"
        raise error
    return str(value)

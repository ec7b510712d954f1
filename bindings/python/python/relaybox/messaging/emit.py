"""``@event``: publish an event after a function returns successfully.

The envelope is written to the outbox once the function has returned (see
:mod:`relaybox.messaging.writer` for which transaction it joins); if the
function raises, nothing is written. Building the envelope can fail after the
function ran (a result that is not JSON-serialisable, a missing ``key_field``):
then :class:`relaybox.ValidationError` propagates and nothing is written, so a
surrounding transaction block rolls back.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar, cast

from .base import Event, check_names
from .encoding import event_data, message_key
from .producer import event_message
from .settings import get_settings
from .writer import Outgoing, write, write_async

__all__ = ["EventSpec", "event"]

F = TypeVar("F", bound=Callable[..., Any])

_PLACEHOLDER_TOPIC = "events"


@dataclass(frozen=True)
class EventSpec:
    """What an ``@event`` decorator publishes (kept on the wrapper as ``__relaybox_event__``)."""

    event_name: str
    topic: Optional[str]
    key_field: Optional[str]
    include_result: bool

    def message(self, result: Any) -> Outgoing:
        """The outbox message for a function result."""
        settings = get_settings()
        data = event_data(result) if self.include_result else {}
        key = None if self.key_field is None else message_key(result, data, self.key_field)
        envelope = Event(name=self.event_name, data=data, source=settings.source)
        return event_message(envelope, self.topic or settings.default_topic, key)


def _db_position(func: Callable[..., Any]) -> Optional[int]:
    try:
        parameters = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None
    for index, parameter in enumerate(parameters):
        if parameter.name == "db" and parameter.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            return index
    return None


def _db_argument(args: tuple[Any, ...], kwargs: dict[str, Any], position: Optional[int]) -> Any:
    if "db" in kwargs:
        return kwargs["db"]
    if position is not None and position < len(args):
        return args[position]
    return None


def event(
    event_name: str,
    topic: Optional[str] = None,
    key_field: Optional[str] = None,
    include_result: bool = True,
) -> Callable[[F], F]:
    """Publish ``event_name`` after the decorated function (sync or ``async``) succeeds.

    - ``topic``: where to publish (default: the configured default topic);
    - ``key_field``: the message key is ``result[key_field]`` (or that
      attribute); a missing key raises :class:`relaybox.ValidationError`;
    - ``include_result``: the event's ``data`` is the result converted as
      :mod:`relaybox.messaging.encoding` says, else ``{}``.

    The function's return value is passed through unchanged. A ``db``
    argument of the function (a relaybox transaction, a psycopg or asyncpg
    connection, a SQLAlchemy session or connection) is the transaction the
    event is written in; any other ``db`` raises :class:`relaybox.ConfigError`. The topic and
    event name are checked here, at decoration time.
    """
    check_names(topic or _PLACEHOLDER_TOPIC, event_name)
    spec = EventSpec(event_name, topic, key_field, include_result)

    def decorate(func: F) -> F:
        position = _db_position(func)

        async def finish(awaitable: Awaitable[Any], db: Any) -> Any:
            result = await awaitable
            await write_async(spec.message(result), db)
            return result

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await finish(func(*args, **kwargs), _db_argument(args, kwargs, position))

            async_wrapper.__dict__["__relaybox_event__"] = spec
            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = func(*args, **kwargs)
            db = _db_argument(args, kwargs, position)
            if inspect.isawaitable(result):
                return finish(result, db)
            write(spec.message(result), db)
            return result

        wrapper.__dict__["__relaybox_event__"] = spec
        return cast(F, wrapper)

    return decorate

"""Consumer decorators: ``@message_handler`` functions, ``@consumer`` classes, ``@on_event``.

Handlers are plain functions or ``async def``; they receive ``(message, db)``
(or just ``(message)`` when they take one argument), where ``db`` is the
relaybox transaction of the consumer (:class:`relaybox.Transaction` for plain
functions, :class:`relaybox.AsyncTransaction` for ``async def``). Writes
through ``db`` commit atomically with the mark that the message was processed;
events published while a handler runs (``@event``, :func:`publish_event`, the
producer) join that transaction too.

A handler that raises is retried (``max_retries`` times, waiting
``retry_delay`` seconds), then the message goes to dead letters; raising
:class:`relaybox.Reject` dead-letters it at once. What ``message`` is, for
envelopes and raw messages, is described in :mod:`relaybox.messaging.decode`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Callable, Optional, TypeVar, Union, cast

from ..consumer import AsyncHandler, Handler, Message
from ..errors import Reject
from ..outbox import AsyncTransaction, Transaction
from .base import check_names
from .brokers import config_error
from .decode import decode, event_name_of
from .registry import Registration, default_group, get_registry
from .writer import handler_scope

__all__ = ["consumer", "message_handler", "on_event"]

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)

Validator = Callable[[Any], Any]

_ON_EVENT = "__relaybox_on_event__"
_PLACEHOLDER_TOPIC = "events"


def _topics(topic: Union[str, Sequence[str], None]) -> tuple[str, ...]:
    if topic is None:
        return ()
    names = (topic,) if isinstance(topic, str) else tuple(topic)
    for name in names:
        check_names(name)
    return names


def _takes_db(func: Callable[..., Any], skip: int = 0) -> bool:
    """Whether ``func`` accepts a second positional argument (after ``skip`` bound ones)."""
    try:
        parameters = list(inspect.signature(func).parameters.values())[skip:]
    except (TypeError, ValueError):
        return True
    positional = 0
    for parameter in parameters:
        if parameter.kind == inspect.Parameter.VAR_POSITIONAL:
            return True
        if parameter.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            positional += 1
    return positional >= 2


def _validator(schema: Any) -> Validator:
    validate = getattr(schema, "model_validate", None)
    if callable(validate):
        return cast(Validator, validate)
    if isinstance(schema, type):
        try:
            import pydantic
        except ImportError:
            raise TypeError(
                f"schema={schema.__name__} needs pydantic (pip install 'relaybox[pydantic]')"
            ) from None
        adapter: Any = pydantic.TypeAdapter(schema)
        return cast(Validator, adapter.validate_python)
    if callable(schema):
        return cast(Validator, schema)
    raise TypeError(f"schema must be a pydantic model, a type or a callable, not {schema!r}")


def _describe(error: Exception) -> str:
    """One line: pydantic's errors as ``field: message; ...``, else ``str(error)``."""
    errors = getattr(error, "errors", None)
    if callable(errors):
        try:
            items = errors()
            return "; ".join(
                f"{'.'.join(str(part) for part in item['loc']) or '(root)'}: {item['msg']}"
                for item in items
            )
        except (TypeError, KeyError):
            pass
    return " ".join(str(error).split())


def _schema_name(schema: Any) -> str:
    return str(getattr(schema, "__name__", None) or repr(schema))


def _retry_settings(
    max_retries: Optional[int], retry_delay: Optional[float], retry_delay_max: Optional[float]
) -> tuple[Optional[int], Optional[float], Optional[float]]:
    if max_retries is not None and max_retries < 0:
        raise config_error("max_retries must be 0 or more")
    if retry_delay is not None and retry_delay <= 0:
        raise config_error("retry_delay must be positive (seconds)")
    if retry_delay is not None and retry_delay_max is None:
        retry_delay_max = retry_delay
    if retry_delay_max is not None and retry_delay is not None and retry_delay_max < retry_delay:
        raise config_error("retry_delay_max must be at least retry_delay")
    return max_retries, retry_delay, retry_delay_max


def message_handler(
    topic: Union[str, Sequence[str], None] = None,
    group: Optional[str] = None,
    max_retries: int = 3,
    retry_delay: float = 1.0,
    schema: Any = None,
    *,
    retry_delay_max: Optional[float] = None,
    auto_start: bool = True,
) -> Callable[[F], F]:
    """Register the decorated function as the handler of ``topic`` (a name or a list).

    - ``group``: consumer group; default ``"<module>.<qualname>"`` of the
      function. Renaming or moving the function changes that group, and a new
      group starts from the oldest message still kept, so give long-lived
      handlers an explicit group.
    - ``max_retries`` / ``retry_delay``: a failing message is retried
      ``max_retries`` times, ``retry_delay`` seconds apart (doubling up to
      ``retry_delay_max`` when that is larger), then dead-lettered.
    - ``schema``: a pydantic model (or any type pydantic validates, or a
      callable): ``message`` is validated and passed as the model; a message
      that fails goes to dead letters at once with the validation error.

    ``topic=None`` consumes the configured default topic. The function itself
    is returned unchanged.
    """
    topics = _topics(topic)
    retries = _retry_settings(max_retries, retry_delay, retry_delay_max)
    validate = None if schema is None else _validator(schema)
    schema_name = _schema_name(schema)

    def value_of(message: Message) -> Any:
        value = decode(message).value
        if validate is None:
            return value
        try:
            return validate(value)
        except (ValueError, TypeError) as exc:
            raise Reject(
                f"message {message.id} does not match schema {schema_name}: {_describe(exc)}"
            ) from None

    def decorate(func: F) -> F:
        name = f"{func.__module__}.{func.__qualname__}"
        with_db = _takes_db(func)
        is_async = inspect.iscoroutinefunction(func)

        def make_handler() -> Union[Handler, AsyncHandler]:
            if is_async:

                async def handle_async(message: Message, tx: AsyncTransaction) -> None:
                    value = value_of(message)
                    with handler_scope(tx):
                        await (func(value, tx) if with_db else func(value))

                return handle_async

            def handle(message: Message, tx: Transaction) -> None:
                value = value_of(message)
                with handler_scope(tx):
                    if with_db:
                        func(value, tx)
                    else:
                        func(value)

            return handle

        registration = Registration(
            name=name,
            kind="message_handler",
            group=group or default_group(name),
            topics=topics,
            make_handler=make_handler,
            is_async=is_async,
            auto_start=auto_start,
            max_retries=retries[0],
            retry_delay=retries[1],
            retry_delay_max=retries[2],
        )
        get_registry().add(registration)
        func.__dict__["__relaybox_handler__"] = registration
        return func

    return decorate


def on_event(event_name: str, *more: str) -> Callable[[F], F]:
    """Mark a method of a ``@consumer`` class as the handler of ``event_name`` (and ``more``).

    The method is called as ``method(self, event, db)`` (or ``(self, event)``)
    with an :class:`~relaybox.messaging.base.Event`.
    """
    names = (event_name, *more)
    for name in names:
        check_names(_PLACEHOLDER_TOPIC, name)

    def decorate(func: F) -> F:
        existing: tuple[str, ...] = func.__dict__.get(_ON_EVENT, ())
        func.__dict__[_ON_EVENT] = existing + tuple(n for n in names if n not in existing)
        return func

    return decorate


def _routes(cls: type) -> dict[str, str]:
    """Event name → method name, over the class and its bases (subclasses override)."""
    by_attribute: dict[str, tuple[str, ...]] = {}
    for klass in reversed(cls.__mro__):
        for attribute, value in vars(klass).items():
            names = getattr(value, _ON_EVENT, None)
            if names:
                by_attribute[attribute] = names
            elif attribute in by_attribute:
                del by_attribute[attribute]
    routes: dict[str, str] = {}
    for attribute, names in by_attribute.items():
        for name in names:
            if name in routes:
                raise TypeError(
                    f"{cls.__qualname__}: event {name!r} is handled by both "
                    f"{routes[name]} and {attribute}"
                )
            routes[name] = attribute
    return routes


def consumer(
    group_id: str,
    topics: Union[Sequence[str], str, None] = None,
    auto_start: bool = True,
    *,
    max_retries: Optional[int] = None,
    retry_delay: Optional[float] = None,
    retry_delay_max: Optional[float] = None,
) -> Callable[[C], C]:
    """Register the decorated class: its ``@on_event`` methods handle events of ``topics``.

    ``group_id`` is the consumer group (shared by all the class's topics);
    ``topics=None`` consumes the configured default topic. The class is
    instantiated once, without arguments, when its consumers start. Events
    whose name has no ``@on_event`` method are acknowledged and skipped. The
    methods must be all plain or all ``async def``. With ``auto_start=False``
    the class runs only when its group is asked for
    (``run_consumers(group=...)``, ``relaybox consumer --group``).
    """
    topic_names = _topics(topics)
    retries = _retry_settings(max_retries, retry_delay, retry_delay_max)
    if not group_id:
        raise config_error("@consumer needs a group_id")

    def decorate(cls: C) -> C:
        routes = _routes(cls)
        if not routes:
            raise TypeError(f"@consumer class {cls.__qualname__} has no @on_event methods")
        kinds = {inspect.iscoroutinefunction(getattr(cls, a)) for a in routes.values()}
        if len(kinds) > 1:
            raise TypeError(
                f"@consumer class {cls.__qualname__} mixes plain and async @on_event methods; "
                "make them all `def` or all `async def`"
            )
        is_async = kinds.pop()
        with_db = {a: _takes_db(getattr(cls, a), skip=1) for a in routes.values()}

        def make_handler() -> Union[Handler, AsyncHandler]:
            instance = cls()

            def route(message: Message) -> Optional[tuple[Callable[..., Any], Any, bool]]:
                header = event_name_of(message)
                if header is not None and header not in routes:
                    return None
                try:
                    event = decode(message).event
                except Reject:
                    if header is None and message.type not in routes:
                        return None
                    raise
                attribute = routes.get(event.name)
                if attribute is None:
                    return None
                return getattr(instance, attribute), event, with_db[attribute]

            if is_async:

                async def handle_async(message: Message, tx: AsyncTransaction) -> None:
                    found = route(message)
                    if found is None:
                        return
                    method, event, takes_db = found
                    with handler_scope(tx):
                        await (method(event, tx) if takes_db else method(event))

                return handle_async

            def handle(message: Message, tx: Transaction) -> None:
                found = route(message)
                if found is None:
                    return
                method, event, takes_db = found
                with handler_scope(tx):
                    if takes_db:
                        method(event, tx)
                    else:
                        method(event)

            return handle

        registration = Registration(
            name=f"{cls.__module__}.{cls.__qualname__}",
            kind="consumer",
            group=group_id,
            topics=topic_names,
            make_handler=make_handler,
            is_async=is_async,
            auto_start=auto_start,
            max_retries=retries[0],
            retry_delay=retries[1],
            retry_delay_max=retries[2],
        )
        get_registry().add(registration)
        cls.__relaybox_consumer__ = registration  # type: ignore[attr-defined]
        return cls

    return decorate

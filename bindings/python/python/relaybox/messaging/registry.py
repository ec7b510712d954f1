"""The registry of consumer handlers that ``@message_handler`` and ``@consumer`` fill.

Each registration is consumed as its own consumer group on each of its topics
(the inbox deduplicates per group, so two handlers sharing a group on one
topic would each see only part of the messages). Registering two different
handlers with the same group on the same topic raises
:class:`relaybox.ConfigError`; registering the same function or class again
(a module imported twice, say) replaces the earlier registration.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Callable, Optional, Union

from ..consumer import AsyncHandler, Handler
from .brokers import config_error

__all__ = [
    "Registration",
    "Registry",
    "clear_registry",
    "default_group",
    "get_registry",
]

_MAX_GROUP = 200


def default_group(qualified_name: str) -> str:
    """The group of a handler registered without one: its ``module.qualname``.

    Names longer than the core's 200 characters are shortened with a hash suffix.
    """
    if len(qualified_name) <= _MAX_GROUP:
        return qualified_name
    digest = hashlib.sha1(qualified_name.encode("utf-8")).hexdigest()[:16]
    return f"{qualified_name[: _MAX_GROUP - 17]}-{digest}"


@dataclass(frozen=True)
class Registration:
    """One registered ``@message_handler`` function or ``@consumer`` class."""

    name: str
    """``module.qualname`` of the function or class."""
    kind: str
    """``"message_handler"`` or ``"consumer"``."""
    group: str
    """Consumer group."""
    topics: tuple[str, ...]
    """Topics; empty means the configured default topic."""
    make_handler: Callable[[], Union[Handler, AsyncHandler]]
    """Builds the ``handler(message, tx)`` of its ``relaybox.Consumer`` / ``AsyncConsumer``."""
    is_async: bool
    """Whether the handler is ``async def``."""
    auto_start: bool = True
    """Whether :func:`~relaybox.messaging.run_consumers` starts it without naming its group."""
    max_retries: Optional[int] = None
    """Retries before dead letters (``None``: relaybox's default)."""
    retry_delay: Optional[float] = None
    """First delay between attempts, in seconds (``None``: relaybox's default)."""
    retry_delay_max: Optional[float] = None
    """Longest delay between attempts, in seconds (``None``: relaybox's default)."""

    def topics_or(self, default_topic: str) -> tuple[str, ...]:
        """:attr:`topics`, or ``(default_topic,)`` when there are none."""
        return self.topics or (default_topic,)


class Registry:
    """Registrations in the order they were made (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, Registration] = {}

    def add(self, registration: Registration) -> None:
        """Add ``registration``, replacing one of the same name.

        Raises :class:`relaybox.ConfigError` when another handler already
        uses its group on one of its topics.
        """
        with self._lock:
            others = [r for r in self._items.values() if r.name != registration.name]
            _check_unique([*others, registration], None)
            self._items[registration.name] = registration

    def remove(self, name: str) -> None:
        """Forget the registration called ``name`` (no error if absent)."""
        with self._lock:
            self._items.pop(name, None)

    def clear(self) -> None:
        """Forget every registration."""
        with self._lock:
            self._items.clear()

    def all(self) -> list[Registration]:
        """Every registration, in registration order."""
        with self._lock:
            return list(self._items.values())

    def select(
        self,
        default_topic: str,
        topics: Optional[Iterable[str]] = None,
        group: Optional[str] = None,
    ) -> list[tuple[Registration, str]]:
        """The ``(registration, topic)`` pairs to consume.

        Without ``group``, registrations with ``auto_start=False`` are left
        out; with it, only that group's registrations are kept. With
        ``topics``, only those topics are kept.
        """
        wanted = None if topics is None else set(topics)
        pairs: list[tuple[Registration, str]] = []
        for registration in self.all():
            if group is not None and registration.group != group:
                continue
            if group is None and not registration.auto_start:
                continue
            for topic in registration.topics_or(default_topic):
                if wanted is None or topic in wanted:
                    pairs.append((registration, topic))
        _check_unique([r for r, _ in pairs], default_topic)
        return pairs


def _check_unique(registrations: list[Registration], default_topic: Optional[str]) -> None:
    seen: dict[tuple[str, str], str] = {}
    for registration in registrations:
        topics = registration.topics
        if default_topic is not None:
            topics = registration.topics_or(default_topic)
        for topic in topics:
            owner = seen.setdefault((registration.group, topic), registration.name)
            if owner != registration.name:
                raise config_error(
                    f"consumer group {registration.group!r} already handles topic {topic!r} "
                    f"({owner}); give {registration.name} a group of its own"
                )


_registry = Registry()


def get_registry() -> Registry:
    """The registry the decorators fill."""
    return _registry


def clear_registry() -> None:
    """Forget every registered handler (for tests)."""
    _registry.clear()

"""The exceptions relaybox raises.

Every error of the Rust core arrives as a subclass of :class:`RelayboxError`
carrying the core's machine-readable fields: ``code`` (stable, e.g.
``"invalid_topic"``), ``retryable`` (whether the same call may succeed later)
and ``message_id`` (the message concerned, if any). Messages never contain
credentials.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "RelayboxError",
    "ValidationError",
    "ConfigError",
    "ClosedError",
    "SchemaError",
    "StoreError",
    "TransportError",
    "HandlerError",
    "TimeoutError",
    "NotFoundError",
    "InternalError",
    "Reject",
]


class RelayboxError(Exception):
    """Base class of every relaybox error."""

    code: str = "internal"
    """Stable machine-readable error code."""
    retryable: bool = False
    """Whether the same call may succeed if tried again later."""
    message_id: Optional[str] = None
    """Id of the message the error concerns, if any."""


class ValidationError(RelayboxError, ValueError):
    """A message or parameter is invalid (topic, payload size, header, key, value).

    Nothing was written.
    """


class ConfigError(RelayboxError, ValueError):
    """A setting is missing, of the wrong type or out of range."""


class ClosedError(RelayboxError):
    """The outbox, transaction, relay or consumer was already closed."""


class SchemaError(RelayboxError):
    """The database schema is missing or newer than this version of relaybox."""


class StoreError(RelayboxError):
    """The database failed; see ``retryable``."""


class TransportError(RelayboxError):
    """The broker failed or refused a message; see ``retryable``."""


class HandlerError(RelayboxError):
    """A consumer handler failed."""


class TimeoutError(RelayboxError):  # noqa: A001 - relaybox.TimeoutError, like asyncio's
    """An operation did not finish in time."""


class NotFoundError(RelayboxError):
    """Something that should exist does not (a dead letter, a topic)."""


class InternalError(RelayboxError):
    """A bug inside relaybox (including a caught Rust panic); please report it."""


class Reject(Exception):
    """Raise in a consumer handler to send the message to dead letters at once.

    Use it when the message itself can never be handled (it fails validation,
    say); other exceptions are retried. ``str(exc)`` is recorded as the dead
    letter's error.
    """

"""relaybox: reliable event delivery from your database to a message broker.

- :class:`Outbox` writes events in the same database transaction as your rows
  (``with outbox.transaction() as tx``), or inside your own psycopg
  transaction (:mod:`relaybox.psycopg`).
- :class:`Relay` moves committed events to the broker, in order per key.
- :class:`Consumer` handles each message once in effect, atomically with
  your own writes.
- :mod:`relaybox.messaging` offers the ``@event`` / ``@message_handler``
  decorator API.

All delivery logic runs in relaybox's Rust core; blocking calls release the
GIL. Sync classes stand beside ``Async…`` ones with the same methods,
awaitable (:class:`Outbox` / :class:`AsyncOutbox`, :class:`Transaction` /
:class:`AsyncTransaction`, :class:`Relay` / :class:`AsyncRelay`,
:class:`Consumer` / :class:`AsyncConsumer`); module functions that wait are
``f`` (blocking) and ``f_async`` (awaitable).
"""

from __future__ import annotations

from . import _native, psycopg
from .consumer import AsyncConsumer, AsyncHandler, Consumer, ConsumerOptions, Handler, Message
from .errors import (
    ClosedError,
    ConfigError,
    HandlerError,
    InternalError,
    NotFoundError,
    Reject,
    RelayboxError,
    SchemaError,
    StoreError,
    TimeoutError,
    TransportError,
    ValidationError,
)
from .outbox import (
    AnyOutbox,
    AsyncOutbox,
    AsyncTransaction,
    AsyncTransactionScope,
    EnqueueOptions,
    Outbox,
    OutboxOptions,
    Transaction,
    TransactionScope,
    current_transaction,
)
from .relay import AsyncRelay, Relay
from .transport import Kafka, Route, Transport

__version__: str = _native.__version__

schema_sql = _native.schema_sql
"""``schema_sql(dialect, table_prefix="relaybox_", partitions=16)``: the schema as plain SQL."""

__all__ = [
    "AnyOutbox",
    "AsyncConsumer",
    "AsyncHandler",
    "AsyncOutbox",
    "AsyncRelay",
    "AsyncTransaction",
    "AsyncTransactionScope",
    "ClosedError",
    "ConfigError",
    "Consumer",
    "ConsumerOptions",
    "EnqueueOptions",
    "Handler",
    "HandlerError",
    "InternalError",
    "Kafka",
    "Message",
    "NotFoundError",
    "Outbox",
    "OutboxOptions",
    "Reject",
    "Route",
    "Relay",
    "RelayboxError",
    "SchemaError",
    "StoreError",
    "TimeoutError",
    "Transaction",
    "TransactionScope",
    "Transport",
    "TransportError",
    "ValidationError",
    "current_transaction",
    "psycopg",
    "schema_sql",
]

"""Where a message is written: the caller's transaction, or a transaction of its own.

The first of these that applies is used:

1. an explicit ``db`` (the ``db`` argument of an ``@event`` function, or
   ``db=`` of :func:`~relaybox.messaging.publish_event` and the producer) that
   is a :class:`relaybox.Transaction`, a :class:`relaybox.AsyncTransaction`, a
   psycopg 3 ``Connection`` / ``AsyncConnection`` (or cursor), or a
   :class:`relaybox.Outbox`;
2. the transaction of the innermost ``outbox.transaction()`` block
   (:func:`relaybox.current_transaction`);
3. inside a consumer handler, the handler's transaction (so what a handler
   publishes commits together with the message being marked processed);
4. otherwise the façade's outbox, in a transaction of its own that commits at once.

In cases 1 to 3 the message commits or rolls back with that transaction.
Other ``db`` values (an ORM session, say) are not recognised and are ignored.

Sync code writing into an :class:`~relaybox.AsyncTransaction` uses the same
database transaction through its blocking calls; async code writing into a
:class:`~relaybox.Transaction` awaits it without blocking. Sync code cannot
write through a psycopg ``AsyncConnection`` (``TypeError``).
"""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional, Union

from .. import psycopg as _pg
from ..outbox import AsyncTransaction, Outbox, Transaction, current_transaction
from .settings import get_outbox, get_outbox_async

__all__ = ["Outgoing", "handler_scope", "target", "write", "write_async"]

AnyTransaction = Union[Transaction, AsyncTransaction]

_handler_tx: contextvars.ContextVar[Optional[AnyTransaction]] = contextvars.ContextVar(
    "relaybox_messaging_handler_transaction", default=None
)


@contextmanager
def handler_scope(tx: AnyTransaction) -> Iterator[None]:
    """Make ``tx`` the transaction messages go to while a consumer handler runs."""
    token = _handler_tx.set(tx)
    try:
        yield
    finally:
        _handler_tx.reset(token)


@dataclass(frozen=True)
class Outgoing:
    """One message to write: a JSON body with its key, type and headers."""

    topic: str
    payload: bytes
    key: Optional[str] = None
    type: Optional[str] = None
    headers: Optional[dict[str, str]] = None
    content_type: str = "application/json"


def _psycopg_kind(db: Any) -> Optional[str]:
    module = sys.modules.get("psycopg")
    if module is None:
        return None
    if isinstance(db, (module.AsyncConnection, module.AsyncCursor)):
        return "async"
    if isinstance(db, (module.Connection, module.Cursor)):
        return "sync"
    return None


def _recognised(db: Any) -> bool:
    return isinstance(db, (Transaction, AsyncTransaction, Outbox)) or _psycopg_kind(db) is not None


def target(db: Any = None) -> Any:
    """The object a message will be written through, or ``None`` for a transaction of its own."""
    if db is not None and _recognised(db):
        return db
    scoped = current_transaction()
    if scoped is not None:
        return scoped
    return _handler_tx.get()


def write(message: Outgoing, db: Any = None) -> str:
    """Write ``message`` (blocking); return the relaybox message id."""
    where = target(db)
    fields: dict[str, Any] = {
        "key": message.key,
        "type": message.type,
        "headers": message.headers,
        "content_type": message.content_type,
    }
    if isinstance(where, Transaction):
        return where.enqueue(message.topic, message.payload, **fields)
    if isinstance(where, AsyncTransaction):
        return Transaction(where._tx).enqueue(message.topic, message.payload, **fields)
    if isinstance(where, Outbox):
        return where.enqueue(message.topic, message.payload, **fields)
    kind = _psycopg_kind(where)
    if kind == "sync":
        return _pg.enqueue(where, get_outbox(), message.topic, message.payload, **fields)
    if kind == "async":
        raise TypeError(
            "a psycopg AsyncConnection can only be written from async code: "
            "make the function `async def` or use `await publish_event(...)`"
        )
    return get_outbox().enqueue(message.topic, message.payload, **fields)


async def write_async(message: Outgoing, db: Any = None) -> str:
    """Write ``message`` without blocking the event loop; return the relaybox message id."""
    where = target(db)
    fields: dict[str, Any] = {
        "key": message.key,
        "type": message.type,
        "headers": message.headers,
        "content_type": message.content_type,
    }
    if isinstance(where, AsyncTransaction):
        return await where.enqueue(message.topic, message.payload, **fields)
    if isinstance(where, Transaction):
        return await AsyncTransaction(where._tx).enqueue(message.topic, message.payload, **fields)
    if isinstance(where, Outbox):
        return await where.enqueue_async(message.topic, message.payload, **fields)
    kind = _psycopg_kind(where)
    if kind == "async":
        outbox = await get_outbox_async()
        return await _pg.enqueue_async(where, outbox, message.topic, message.payload, **fields)
    if kind == "sync":
        return _pg.enqueue(
            where, await get_outbox_async(), message.topic, message.payload, **fields
        )
    outbox = await get_outbox_async()
    return await outbox.enqueue_async(message.topic, message.payload, **fields)

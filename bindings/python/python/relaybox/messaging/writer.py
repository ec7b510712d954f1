"""Where a message is written: the caller's transaction, or a transaction of its own.

The first of these that applies is used:

1. an explicit ``db`` (the ``db`` argument of an ``@event`` function, or
   ``db=`` of :func:`~relaybox.messaging.publish_event` and the producer) that
   is a :class:`relaybox.Transaction`, a :class:`relaybox.AsyncTransaction`, a
   psycopg 3 ``Connection`` / ``AsyncConnection`` (or cursor), a SQLAlchemy
   ``Session`` / ``Connection`` / ``AsyncSession`` / ``AsyncConnection``
   (:mod:`relaybox.sqlalchemy`), an asyncpg ``Connection`` in a transaction
   (:mod:`relaybox.asyncpg`), a Django connection (``django.db.connection``,
   inside ``transaction.atomic()``; :mod:`relaybox.django`), or a
   :class:`relaybox.Outbox` / :class:`relaybox.AsyncOutbox`;
2. the transaction of the innermost ``outbox.transaction()`` block
   (:func:`relaybox.current_transaction`);
3. inside a consumer handler, the handler's ``db`` (so what a handler
   publishes commits together with the message being marked processed);
4. with ``relaybox.django`` installed, Django's connection when a
   ``transaction.atomic()`` block is open on it;
5. otherwise the façade's outbox, in a transaction of its own that commits at once.

In cases 1 to 4 the message commits or rolls back with that transaction.
Any other ``db`` is an error (:class:`relaybox.ConfigError` naming its type)
and nothing is written: relaybox never falls back to a transaction of its
own when it was given one it cannot write through.

Sync code writing into an :class:`~relaybox.AsyncTransaction` uses the same
database transaction through its blocking calls; async code writing into a
:class:`~relaybox.Transaction` awaits it without blocking. Sync code cannot
write through a psycopg ``AsyncConnection``, a SQLAlchemy ``AsyncSession`` /
``AsyncConnection`` or an asyncpg connection (``TypeError``: make the
function ``async def``).
"""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from .. import psycopg as _pg
from ..errors import ConfigError
from ..outbox import (
    AnyOutbox,
    AsyncOutbox,
    AsyncTransaction,
    Outbox,
    Transaction,
    current_transaction,
)
from .settings import get_outbox, get_outbox_async

__all__ = ["Outgoing", "handler_scope", "target", "write", "write_async"]

AnyTransaction = Union[Transaction, AsyncTransaction]

_handler_tx: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "relaybox_messaging_handler_transaction", default=None
)


@contextmanager
def handler_scope(tx: Any) -> Iterator[None]:
    """Make ``tx`` the ``db`` messages go to while a consumer handler runs.

    ``tx`` is the handler's ``db``: a relaybox transaction, or the SQLAlchemy
    session or Django connection that holds the inbox row.
    """
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


def _sqlalchemy_kind(db: Any) -> Optional[str]:
    if sys.modules.get("sqlalchemy") is None:
        return None
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    if isinstance(db, (Session, Connection)):
        return "sync"
    if "sqlalchemy.ext.asyncio" in sys.modules:
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

        if isinstance(db, (AsyncSession, AsyncConnection)):
            return "async"
    return None


def _django_alias(db: Any) -> Optional[str]:
    """The alias of ``db`` when it is a Django database connection."""
    if sys.modules.get("django.db") is None:
        return None
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.utils.connection import ConnectionProxy

    # django.db.connection is a proxy of the current thread's default connection.
    return str(db.alias) if isinstance(db, (BaseDatabaseWrapper, ConnectionProxy)) else None


def _django_atomic() -> Any:
    """Relaybox's Django connection while a ``transaction.atomic()`` block is open on it."""
    if sys.modules.get("django.db") is None:
        return None
    from django.apps import apps
    from django.conf import settings

    if not settings.configured or not apps.ready or not apps.is_installed("relaybox.django"):
        return None
    from django.db import connections

    from ..django._conf import alias

    conn = connections[alias()]
    return conn if conn.in_atomic_block else None


def _is_asyncpg(db: Any) -> bool:
    module = sys.modules.get("asyncpg")
    return module is not None and isinstance(db, module.Connection)


def _kind(db: Any) -> str:
    """How ``db`` is written through; :class:`~relaybox.ConfigError` when it cannot be.

    One of ``relaybox``, ``psycopg``, ``psycopg-async``, ``sqlalchemy``,
    ``sqlalchemy-async`` or ``asyncpg``.
    """
    if isinstance(db, (Transaction, AsyncTransaction, Outbox, AsyncOutbox)):
        return "relaybox"
    psycopg_kind = _psycopg_kind(db)
    if psycopg_kind is not None:
        return "psycopg" if psycopg_kind == "sync" else "psycopg-async"
    sa_kind = _sqlalchemy_kind(db)
    if sa_kind is not None:
        return "sqlalchemy" if sa_kind == "sync" else "sqlalchemy-async"
    if _is_asyncpg(db):
        return "asyncpg"
    if _django_alias(db) is not None:
        return "django"
    raise ConfigError(
        f"relaybox cannot write an event through db={type(db).__module__}.{type(db).__qualname__}: "
        "pass a relaybox Transaction or Outbox, a psycopg connection, a SQLAlchemy "
        "Session/Connection/AsyncSession/AsyncConnection, an asyncpg connection or a "
        "Django connection "
        "(or no db, to write in a transaction of its own)"
    )


def target(db: Any = None) -> Any:
    """The object a message will be written through, or ``None`` for a transaction of its own.

    A ``db`` relaybox cannot write through raises :class:`relaybox.ConfigError`.
    """
    if db is not None:
        _kind(db)
        return db
    scoped = current_transaction()
    if scoped is not None:
        return scoped
    handler_db = _handler_tx.get()
    if handler_db is not None:
        return handler_db
    return _django_atomic()


def _async_only(kind: str) -> TypeError:
    return TypeError(
        f"a {kind} connection can only be written from async code: "
        "make the function `async def` or use `await publish_event(...)`"
    )


def write(message: Outgoing, db: Any = None, outbox: Optional[AnyOutbox] = None) -> str:
    """Write ``message`` (blocking); return the relaybox message id.

    ``outbox`` is where a message without a transaction to join is written,
    and the outbox the driver integrations write into (default: the façade's).
    """
    where = target(db)
    fields = _fields(message)
    box = _sync_outbox(outbox)
    if where is None:
        return box().enqueue(message.topic, message.payload, **fields)
    if isinstance(where, Transaction):
        return where.enqueue(message.topic, message.payload, **fields)
    if isinstance(where, AsyncTransaction):
        return Transaction(where._tx).enqueue(message.topic, message.payload, **fields)
    if isinstance(where, (Outbox, AsyncOutbox)):
        return _sync_outbox(where)().enqueue(message.topic, message.payload, **fields)
    kind = _kind(where)
    if kind == "psycopg":
        return _pg.enqueue(where, box(), message.topic, message.payload, **fields)
    if kind == "sqlalchemy":
        from .. import sqlalchemy as _sa

        return _sa.enqueue(where, box(), message.topic, message.payload, **fields)
    if kind == "django":
        from .. import django as _dj

        return _dj.enqueue(message.topic, message.payload, using=where.alias, **fields)
    raise _async_only({"psycopg-async": "psycopg AsyncConnection"}.get(kind, kind))


async def write_async(message: Outgoing, db: Any = None, outbox: Optional[AnyOutbox] = None) -> str:
    """Write ``message`` without blocking the event loop; return the relaybox message id."""
    where = target(db)
    fields = _fields(message)
    if where is None:
        box = await _async_outbox(outbox)
        return await box.enqueue(message.topic, message.payload, **fields)
    if isinstance(where, AsyncTransaction):
        return await where.enqueue(message.topic, message.payload, **fields)
    if isinstance(where, Transaction):
        return await AsyncTransaction(where._tx).enqueue(message.topic, message.payload, **fields)
    if isinstance(where, (Outbox, AsyncOutbox)):
        box = await _async_outbox(where)
        return await box.enqueue(message.topic, message.payload, **fields)
    kind = _kind(where)
    if kind == "django":
        raise TypeError(
            "Django's database connection is used from sync code: publish from a plain "
            "function (or `publish_event_sync`) inside transaction.atomic()"
        )
    abox = await _async_outbox(outbox)
    if kind == "psycopg-async":
        return await _pg.enqueue_async(where, abox, message.topic, message.payload, **fields)
    if kind == "psycopg":
        return _pg.enqueue(where, abox, message.topic, message.payload, **fields)
    if kind == "sqlalchemy-async":
        from .. import sqlalchemy as _sa

        return await _sa.enqueue_async(where, abox, message.topic, message.payload, **fields)
    if kind == "sqlalchemy":
        from .. import sqlalchemy as _sa

        return _sa.enqueue(where, abox, message.topic, message.payload, **fields)
    from .. import asyncpg as _apg

    return await _apg.enqueue_async(where, abox, message.topic, message.payload, **fields)


def _fields(message: Outgoing) -> dict[str, Any]:
    return {
        "key": message.key,
        "type": message.type,
        "headers": message.headers,
        "content_type": message.content_type,
    }


def _sync_outbox(outbox: Optional[AnyOutbox]) -> Callable[[], Outbox]:
    """The outbox to write into, opened only when needed (default: the façade's)."""
    if outbox is None:
        return get_outbox
    sync = outbox if isinstance(outbox, Outbox) else outbox.as_sync()
    return lambda: sync


async def _async_outbox(outbox: Optional[AnyOutbox]) -> AsyncOutbox:
    if outbox is None:
        return await get_outbox_async()
    return outbox if isinstance(outbox, AsyncOutbox) else outbox.as_async()

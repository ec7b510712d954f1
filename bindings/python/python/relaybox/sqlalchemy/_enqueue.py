"""Enqueue into a SQLAlchemy session or connection, sync or async.

``Session`` / ``Connection`` (sync) or ``AsyncSession`` / ``AsyncConnection``
(async).
The statements come from the core (named ``:p1`` placeholders, run through
``text()``); a session with no transaction begun autobegins one, and the
outbox rows belong to it until ``commit()`` or ``rollback()``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection
    from typing_extensions import Unpack


from .._host import (
    IDENTITY_SQL,
    Statement,
    check_same,
    one,
    outbox_identity,
    outbox_identity_async,
    statements,
)
from .._spec import EnqueueOptions
from ..errors import ConfigError
from ..outbox import AnyOutbox

__all__ = ["enqueue", "enqueue_async", "enqueue_batch", "enqueue_batch_async"]


def _async_types() -> tuple[type[Any], type[Any]]:
    """``(AsyncSession, AsyncConnection)``, imported on first use (they need greenlet)."""
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    return AsyncSession, AsyncConnection


_NAME = "relaybox.sqlalchemy"
_DIALECTS = ("psycopg", "asyncpg")

# An engine always reaches the same database: check it once.
_checked: weakref.WeakKeyDictionary[Engine, tuple[Any, ...]] = weakref.WeakKeyDictionary()


def _check_dialect(engine: Engine) -> None:
    dialect = engine.dialect
    if dialect.name != "postgresql":
        raise ConfigError(
            f"{_NAME}: the session's engine is on {dialect.name}, the outbox on PostgreSQL: "
            "the event would not commit with your rows"
        )
    if dialect.driver not in _DIALECTS:
        raise ConfigError(
            f"{_NAME}: the postgresql+{dialect.driver} dialect is not supported; "
            "use postgresql+psycopg or postgresql+asyncpg"
        )


def _sync_connection(db: Any) -> Connection:
    if isinstance(db, Session):
        return db.connection()
    if isinstance(db, Connection):
        return db
    if type(db).__name__ in ("AsyncSession", "AsyncConnection"):
        raise ConfigError(
            f"{_NAME}.enqueue got an {type(db).__name__}: use `await {_NAME}.enqueue_async(...)`"
        )
    raise ConfigError(
        f"{_NAME}.enqueue needs a SQLAlchemy Session or Connection, not {type(db).__name__}"
    )


def _run(conn: Connection, planned: list[Statement]) -> list[str]:
    ids: list[str] = []
    for sql, params, message_ids, _wake in planned:
        conn.execute(text(sql), params)
        ids.extend(message_ids)
    wake = planned[-1][3] if planned else None
    if wake is not None:
        conn.execute(text(wake))
    return ids


def enqueue_batch(db: Any, outbox: AnyOutbox, messages: Iterable[Mapping[str, Any]]) -> list[str]:
    """Write many messages in ``db``'s transaction; return their ids.

    ``db`` is a ``sqlalchemy.orm.Session`` or ``sqlalchemy.engine.Connection``
    on PostgreSQL (psycopg dialect) reaching the outbox's database. Each item
    of ``messages`` holds ``topic``, ``payload`` and the keywords of
    :func:`enqueue`. All are validated before any is written. When the
    session has no transaction yet, SQLAlchemy begins one (autobegin): the
    rows are written in it and committed by ``session.commit()``, discarded
    by ``rollback()`` or by closing the session without committing.
    """
    items = list(messages)
    conn = _sync_connection(db)
    engine = conn.engine
    _check_dialect(engine)
    planned = statements(outbox, items, "named", _NAME)
    if not planned:
        return []
    host = _checked.get(engine)
    if host is None:
        host = tuple(conn.execute(text(IDENTITY_SQL)).one())
        check_same(host, outbox_identity(outbox), _NAME)
        _checked[engine] = host
    return _run(conn, planned)


def enqueue(
    db: Any, outbox: AnyOutbox, topic: str, payload: Any, **options: Unpack[EnqueueOptions]
) -> str:
    """Write one message in ``db``'s transaction (see :func:`enqueue_batch`); return its id.

    Keywords are those of :meth:`relaybox.Transaction.enqueue`.
    """
    return enqueue_batch(db, outbox, one(topic, payload, options))[0]


async def _async_connection(db: Any) -> AsyncConnection:
    async_session, async_connection = _async_types()
    if isinstance(db, async_session):
        conn: AsyncConnection = await db.connection()
        return conn
    if isinstance(db, async_connection):
        return cast("AsyncConnection", db)
    if isinstance(db, (Session, Connection)):
        raise ConfigError(f"{_NAME}.enqueue_async got a {type(db).__name__}: use {_NAME}.enqueue")
    raise ConfigError(
        f"{_NAME}.enqueue_async needs a SQLAlchemy AsyncSession or AsyncConnection, "
        f"not {type(db).__name__}"
    )


async def enqueue_batch_async(
    db: Any, outbox: AnyOutbox, messages: Iterable[Mapping[str, Any]]
) -> list[str]:
    """:func:`enqueue_batch` on an ``AsyncSession`` or ``AsyncConnection``.

    The engine is ``postgresql+asyncpg`` or ``postgresql+psycopg``.
    """
    items = list(messages)
    conn = await _async_connection(db)
    engine = conn.sync_engine
    _check_dialect(engine)
    planned = statements(outbox, items, "named", _NAME)
    if not planned:
        return []
    host = _checked.get(engine)
    if host is None:
        host = tuple((await conn.execute(text(IDENTITY_SQL))).one())
        check_same(host, await outbox_identity_async(outbox), _NAME)
        _checked[engine] = host
    ids: list[str] = []
    for sql, params, message_ids, _wake in planned:
        await conn.execute(text(sql), params)
        ids.extend(message_ids)
    wake = planned[-1][3]
    if wake is not None:
        await conn.execute(text(wake))
    return ids


async def enqueue_async(
    db: Any, outbox: AnyOutbox, topic: str, payload: Any, **options: Unpack[EnqueueOptions]
) -> str:
    """:func:`enqueue` on an ``AsyncSession`` or ``AsyncConnection``; return the id."""
    return (await enqueue_batch_async(db, outbox, one(topic, payload, options)))[0]

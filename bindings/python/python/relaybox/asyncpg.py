"""Enqueue inside your own asyncpg transaction.

relaybox generates the INSERT (``$1`` placeholders; the SQL casts text, so
asyncpg binds ``str``, ``int`` and ``bytes`` as they are); asyncpg runs it on
your connection, inside ``conn.transaction()``, together with the NOTIFY
that wakes relays when that transaction commits::

    async with conn.transaction():
        await conn.execute("INSERT INTO orders (id) VALUES ($1)", 42)
        await relaybox.asyncpg.enqueue_async(conn, outbox, "orders", {"id": 42}, key="42")

A connection outside a transaction is refused (``ConfigError``): each
statement would commit on its own, the event apart from your rows.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._host import (
    IDENTITY_SQL,
    check_same,
    one,
    outbox_identity_async,
    statements,
)
from .errors import ConfigError
from .outbox import AnyOutbox

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._spec import EnqueueOptions

__all__ = ["enqueue_async", "enqueue_batch_async"]

_NAME = "relaybox.asyncpg"

# A connection always reaches the same database: check it once.
_checked: weakref.WeakKeyDictionary[Any, tuple[Any, ...]] = weakref.WeakKeyDictionary()


def _check_connection(conn: Any) -> None:
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - asyncpg is what the caller passes
        raise ConfigError(f"{_NAME} needs asyncpg installed") from exc
    if not isinstance(conn, asyncpg.Connection):
        raise ConfigError(f"{_NAME} needs an asyncpg Connection, not {type(conn).__name__}")
    if not conn.is_in_transaction():
        raise ConfigError(
            f"{_NAME}: the connection is not in a transaction; enqueue inside "
            "`async with conn.transaction():` so the event commits with your rows"
        )


async def enqueue_batch_async(
    conn: Any, outbox: AnyOutbox, messages: Iterable[Mapping[str, Any]]
) -> list[str]:
    """Write many messages on an asyncpg connection in a transaction; return their ids.

    Each item of ``messages`` holds ``topic``, ``payload`` and the keywords
    of :func:`enqueue_async`. All are validated before any is written; they are
    delivered only if the transaction commits.
    """
    items = list(messages)
    _check_connection(conn)
    planned = statements(outbox, items, "dollar", _NAME)
    if not planned:
        return []
    host = _checked.get(conn)
    if host is None:
        row = await conn.fetchrow(IDENTITY_SQL)
        host = tuple(row.values())
        check_same(host, await outbox_identity_async(outbox), _NAME)
        _checked[conn] = host
    ids: list[str] = []
    for sql, params, message_ids, _wake in planned:
        await conn.execute(sql, *params)
        ids.extend(message_ids)
    wake = planned[-1][3]
    if wake is not None:
        await conn.execute(wake)
    return ids


async def enqueue_async(
    conn: Any, outbox: AnyOutbox, topic: str, payload: Any, **options: Unpack[EnqueueOptions]
) -> str:
    """Write one message on an asyncpg connection in a transaction; return its id.

    Keywords: :class:`relaybox.EnqueueOptions`.
    """
    return (await enqueue_batch_async(conn, outbox, one(topic, payload, options)))[0]

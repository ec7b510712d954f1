"""Enqueue inside your own psycopg 3 transaction.

relaybox generates the INSERT (one source of truth for the SQL, ``%s``
placeholders); psycopg runs it on your connection, so the event commits or
rolls back with your rows::

    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute("INSERT INTO orders (id) VALUES (%s)", (42,))
        relaybox.psycopg.enqueue(conn, outbox, "orders", {"id": 42}, key="42")

The same transaction also sends the NOTIFY that wakes relays at commit, in
every process. :func:`enqueue` / :func:`enqueue_batch` take a
``psycopg.Connection`` (or cursor); :func:`enqueue_async` /
:func:`enqueue_batch_async` a ``psycopg.AsyncConnection`` (or async cursor).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._host import one, run_statements, statements
from .outbox import AnyOutbox

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._spec import EnqueueOptions

__all__ = ["enqueue", "enqueue_async", "enqueue_batch", "enqueue_batch_async"]

_NAME = "relaybox.psycopg"


def enqueue_batch(conn: Any, outbox: AnyOutbox, messages: Iterable[Mapping[str, Any]]) -> list[str]:
    """Write many messages on a ``psycopg.Connection`` (or cursor); return their ids.

    They are part of whatever transaction the connection is in: delivered
    only if that transaction commits. Each item of ``messages`` holds
    ``topic``, ``payload`` and the keywords of :func:`enqueue`; all are
    validated before any is written.
    """
    return run_statements(conn.execute, statements(outbox, messages, "percent", _NAME))


def enqueue(
    conn: Any, outbox: AnyOutbox, topic: str, payload: Any, **options: Unpack[EnqueueOptions]
) -> str:
    """Write one message on a ``psycopg.Connection`` (or cursor); return its id.

    Keywords: :class:`relaybox.EnqueueOptions`.
    """
    return enqueue_batch(conn, outbox, one(topic, payload, options))[0]


async def enqueue_batch_async(
    conn: Any, outbox: AnyOutbox, messages: Iterable[Mapping[str, Any]]
) -> list[str]:
    """:func:`enqueue_batch` on a ``psycopg.AsyncConnection`` (or async cursor)."""
    planned = statements(outbox, messages, "percent", _NAME)
    ids: list[str] = []
    for sql, params, message_ids, _wake in planned:
        await conn.execute(sql, params)
        ids.extend(message_ids)
    wake = planned[-1][3] if planned else None
    if wake is not None:
        await conn.execute(wake)
    return ids


async def enqueue_async(
    conn: Any, outbox: AnyOutbox, topic: str, payload: Any, **options: Unpack[EnqueueOptions]
) -> str:
    """:func:`enqueue` on a ``psycopg.AsyncConnection`` (or async cursor); return its id."""
    return (await enqueue_batch_async(conn, outbox, one(topic, payload, options)))[0]

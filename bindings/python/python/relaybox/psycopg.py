"""Enqueue inside your own psycopg 3 transaction.

relaybox generates the INSERT (one source of truth for the SQL); psycopg runs
it on your connection, so the event commits or rolls back with your rows::

    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute("INSERT INTO orders (id) VALUES (%s)", (42,))
        relaybox.psycopg.enqueue(conn, outbox, "orders", {"id": 42}, key="42")

On PostgreSQL the same transaction also sends the NOTIFY that wakes relays at
commit, in every process.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any, Optional

from ._spec import Delay
from .outbox import Outbox

__all__ = ["enqueue", "enqueue_async"]


def _statements(
    outbox: Outbox,
    topic: str,
    payload: Any,
    key: Optional[Any],
    type: Optional[str],  # noqa: A002
    headers: Optional[Mapping[str, str]],
    content_type: Optional[str],
    delay: Delay,
    available_at: Optional[_dt.datetime],
) -> tuple[str, tuple[Any, ...], str]:
    if outbox.dialect != "postgres":
        raise TypeError("relaybox.psycopg needs an outbox on PostgreSQL")
    return outbox.insert_statement(
        topic,
        payload,
        placeholders="percent",
        key=key,
        type=type,
        headers=headers,
        content_type=content_type,
        delay=delay,
        available_at=available_at,
    )


def enqueue(
    conn: Any,
    outbox: Outbox,
    topic: str,
    payload: Any,
    *,
    key: Optional[Any] = None,
    type: Optional[str] = None,  # noqa: A002
    headers: Optional[Mapping[str, str]] = None,
    content_type: Optional[str] = None,
    delay: Delay = None,
    available_at: Optional[_dt.datetime] = None,
) -> str:
    """Write one message on a ``psycopg.Connection`` (or cursor); return its id.

    It is part of whatever transaction the connection is in: it is delivered
    only if that transaction commits. Arguments are those of
    :meth:`relaybox.Transaction.enqueue`.
    """
    sql, params, message_id = _statements(
        outbox, topic, payload, key, type, headers, content_type, delay, available_at
    )
    conn.execute(sql, params)
    wake = outbox.wake_statement
    if wake is not None:
        conn.execute(wake)
    return message_id


async def enqueue_async(
    conn: Any,
    outbox: Outbox,
    topic: str,
    payload: Any,
    *,
    key: Optional[Any] = None,
    type: Optional[str] = None,  # noqa: A002
    headers: Optional[Mapping[str, str]] = None,
    content_type: Optional[str] = None,
    delay: Delay = None,
    available_at: Optional[_dt.datetime] = None,
) -> str:
    """:func:`enqueue` on a ``psycopg.AsyncConnection`` (or async cursor)."""
    sql, params, message_id = _statements(
        outbox, topic, payload, key, type, headers, content_type, delay, available_at
    )
    await conn.execute(sql, params)
    wake = outbox.wake_statement
    if wake is not None:
        await conn.execute(wake)
    return message_id

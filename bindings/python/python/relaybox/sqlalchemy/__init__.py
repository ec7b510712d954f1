"""relaybox inside SQLAlchemy 2.x: the event commits with your ORM rows.

:func:`enqueue` / :func:`enqueue_batch` write outbox rows into a
``Session`` or ``Connection``, :func:`enqueue_async` /
:func:`enqueue_batch_async` into an ``AsyncSession`` or ``AsyncConnection``,
on the psycopg, psycopg-async and asyncpg dialects: the rows and the relays'
wake-up are part of that session's transaction, so the event exists exactly
when ``session.commit()`` commits your rows, and a rollback discards both::

    with Session(engine) as session:
        session.add(Order(id=42))
        relaybox.sqlalchemy.enqueue(session, outbox, "orders", {"id": 42}, key="42")
        session.commit()
"""

from __future__ import annotations

from ._enqueue import enqueue, enqueue_async, enqueue_batch, enqueue_batch_async

__all__ = ["enqueue", "enqueue_async", "enqueue_batch", "enqueue_batch_async"]

from ._consumer import AsyncConsumer, Consumer  # noqa: E402

__all__ += ["AsyncConsumer", "Consumer"]

"""The façade writes through the ``db`` it is given: SQLAlchemy sessions (sync
and async), asyncpg connections; anything else is an error, never ignored."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import psycopg
import pytest
from conftest import count, sa_url
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import relaybox
from relaybox import messaging

from .helpers import read_topic


def test_event_in_a_sqlalchemy_session(
    configured: messaging.MessagingSettings,
    outbox: relaybox.Outbox,
    pg_url: str,
    prefix: str,
    topic: str,
    pg: psycopg.Connection[Any],
) -> None:
    pg.execute(f"CREATE TABLE {prefix}users (id int)")

    @messaging.event("user.registered", topic=topic)
    def register(user_id: int, db: Session) -> dict[str, Any]:
        db.execute(text(f"INSERT INTO {prefix}users VALUES (:id)"), {"id": user_id})
        return {"id": user_id}

    engine = create_engine(sa_url(pg_url, "psycopg"))
    try:
        with Session(engine) as session:
            register(1, session)
            session.rollback()
        assert outbox.pending_count() == 0 and count(pg, f"{prefix}users") == 0
        with Session(engine) as session:
            register(2, db=session)
            messaging.publish_event_sync("user.audited", {"id": 2}, topic, db=session)
            assert outbox.pending_count() == 0, "not before the commit"
            session.commit()
    finally:
        engine.dispose()
    bodies = sorted(m.payload for m in read_topic(outbox, topic, 2))
    assert len(bodies) == 2 and count(pg, f"{prefix}users") == 1


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_async_event_in_an_async_session(
    driver: str,
    configured: messaging.MessagingSettings,
    outbox: relaybox.Outbox,
    pg_url: str,
    topic: str,
) -> None:
    @messaging.event("order.placed", topic=topic)
    async def place(order_id: int, *, db: AsyncSession) -> dict[str, Any]:
        return {"id": order_id}

    async def scenario() -> None:
        engine = create_async_engine(sa_url(pg_url, driver))
        try:
            async with AsyncSession(engine) as session:
                await place(1, db=session)
                await session.rollback()
            assert outbox.pending_count() == 0
            async with AsyncSession(engine) as session:
                await place(2, db=session)
                await messaging.get_producer().send(topic, {"raw": 2}, db=session)
                await session.commit()
        finally:
            await engine.dispose()

    asyncio.run(scenario())
    assert len(read_topic(outbox, topic, 2)) == 2


def test_event_on_an_asyncpg_connection(
    configured: messaging.MessagingSettings,
    outbox: relaybox.Outbox,
    pg_url: str,
    topic: str,
) -> None:
    async def scenario() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await messaging.publish_event("a.b", {"n": 1}, topic, db=conn)
                    raise RuntimeError("abort")
            async with conn.transaction():
                await messaging.publish_event("a.b", {"n": 2}, topic, db=conn)
        finally:
            await conn.close()

    asyncio.run(scenario())
    [message] = read_topic(outbox, topic, 1)
    assert b'"n":2' in message.payload


def test_a_db_relaybox_cannot_write_through_is_an_error(
    configured: messaging.MessagingSettings, outbox: relaybox.Outbox, topic: str
) -> None:
    class Unknown:
        pass

    with pytest.raises(relaybox.ConfigError, match="cannot write an event through db=.*Unknown"):
        messaging.publish_event_sync("a.b", {"n": 1}, topic, db=Unknown())
    with pytest.raises(relaybox.ConfigError, match="Unknown"):
        asyncio.run(messaging.get_producer().send(topic, {"n": 1}, db=Unknown()))

    @messaging.event("a.b", topic=topic)
    def act(db: Any) -> dict[str, Any]:
        return {}

    with pytest.raises(relaybox.ConfigError):
        act(db=object())
    assert outbox.pending_count() == 0


def test_handlers_run_in_a_sqlalchemy_session_with_the_inbox_row(
    outbox: relaybox.Outbox, pg_url: str, prefix: str, topic: str, pg: psycopg.Connection[Any]
) -> None:
    from conftest import wait_for
    from sqlalchemy.orm import sessionmaker

    pg.execute(f"CREATE TABLE {prefix}shipments (order_id int)")
    engine = create_engine(sa_url(pg_url, "psycopg"))
    messaging.configure_messaging(broker="database", outbox=outbox, handler_db=sessionmaker(engine))
    attempts: list[int] = []
    followups: list[dict[str, Any]] = []

    @messaging.message_handler(topic=topic, retry_delay=0.05)
    def ship(message: dict[str, Any], db: Session) -> None:
        attempts.append(message["order_id"])
        assert isinstance(db, Session)
        db.execute(text(f"INSERT INTO {prefix}shipments VALUES (:order_id)"), message)
        messaging.publish_event_sync("order.shipped", message, f"{topic}.shipped")
        if len(attempts) == 1:
            raise RuntimeError("fails after writing: the row and the follow-up roll back")

    @messaging.message_handler(topic=f"{topic}.shipped")
    def shipped(message: dict[str, Any], db: Session) -> None:
        followups.append(message)

    try:
        messaging.publish_event_sync("order.created", {"order_id": 7}, topic)
        with messaging.start_consumers() as runner:
            wait_for("the follow-up", lambda: followups == [{"order_id": 7}])
            wait_for(
                "both consumers done",
                lambda: [c.stats()["processed"] for c in runner.consumers] == [1, 1],
            )
            assert all(
                type(c).__module__.startswith("relaybox.sqlalchemy") for c in runner.consumers
            )
    finally:
        engine.dispose()
    assert attempts == [7, 7]
    assert count(pg, f"{prefix}shipments") == 1
    assert count(pg, f"{prefix}inbox") == 2


def test_handler_db_that_cannot_hold_the_inbox_row_is_refused(
    outbox: relaybox.Outbox, pg_url: str, topic: str
) -> None:
    from sqlalchemy.orm import sessionmaker

    with pytest.raises(relaybox.ConfigError, match="handler_db=Session"):
        messaging.configure_messaging(outbox=outbox, handler_db=Session())
    engine = create_engine(sa_url(pg_url, "psycopg"))
    messaging.configure_messaging(broker="database", outbox=outbox, handler_db=sessionmaker(engine))

    @messaging.message_handler(topic=topic)
    async def handle(message: dict[str, Any], db: AsyncSession) -> None:
        pass

    try:
        with pytest.raises(relaybox.ConfigError, match="the handler must be plain"):
            messaging.start_consumers()
    finally:
        engine.dispose()

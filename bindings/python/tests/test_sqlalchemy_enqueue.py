"""Enqueue inside a SQLAlchemy transaction: Session and Connection (psycopg),
AsyncSession and AsyncConnection (psycopg async, asyncpg), on real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import count, sa_url, wait_for
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import relaybox
import relaybox.sqlalchemy as rsa


@pytest.fixture
def orders(pg: psycopg.Connection[Any], prefix: str) -> str:
    table = f"{prefix}orders"
    pg.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    return table


def log_ids(pg: psycopg.Connection[Any], prefix: str) -> list[str]:
    return [str(r[0]) for r in pg.execute(f"SELECT id FROM {prefix}log ORDER BY position")]


def idle_relay(outbox: relaybox.Outbox) -> relaybox.Relay:
    """A relay that polls only every 30 s: only the commit's wake-up delivers fast."""
    relay = relaybox.Relay(outbox, poll_interval=30.0)
    relay.start()
    time.sleep(1.0)  # leases taken, idle
    return relay


@pytest.mark.parametrize("kind", ["session", "connection"])
def test_sync_rollback_commit_batch_and_wake(
    kind: str,
    engine: Engine,
    outbox: relaybox.Outbox,
    orders: str,
    prefix: str,
    pg: psycopg.Connection[Any],
) -> None:
    relay = idle_relay(outbox)
    try:
        # Rollback: neither the row nor the event.
        with Session(engine) if kind == "session" else engine.connect() as db:
            db.execute(text(f"INSERT INTO {orders} VALUES (1)"))
            rsa.enqueue(db, outbox, "orders", {"id": 1}, key="1")
            db.rollback()
        assert count(pg, orders) == 0
        assert outbox.pending_count() == 0

        # Commit: the row and its events, delivered once, woken by the commit.
        with Session(engine) if kind == "session" else engine.connect() as db:
            db.execute(text(f"INSERT INTO {orders} VALUES (2)"))
            first = rsa.enqueue(db, outbox, "orders", {"id": 2}, key="2", type="OrderPlaced")
            batch = rsa.enqueue_batch(
                db,
                outbox,
                [{"topic": "orders", "payload": {"n": n}, "key": "2"} for n in range(5)],
            )
            committed = time.monotonic()
            db.commit()
        expected = [first, *batch]
        delivered = wait_for(
            "the events in the log",
            lambda: len(log_ids(pg, prefix)) == 6 and log_ids(pg, prefix),
            timeout=10,
        )
        assert time.monotonic() - committed < 10, "woken by the commit, not the 30 s poll"
        assert delivered == expected, "each once, in order for the key"
        assert count(pg, orders) == 1
        rows = pg.execute(f"SELECT type, payload FROM {prefix}log ORDER BY position").fetchall()
        assert (rows[0][0], bytes(rows[0][1])) == ("OrderPlaced", b'{"id":2}')
    finally:
        relay.stop()


def test_session_without_a_transaction_autobegins(
    engine: Engine, outbox: relaybox.Outbox, orders: str, pg: psycopg.Connection[Any]
) -> None:
    with Session(engine) as session:
        assert not session.in_transaction()
        rsa.enqueue(session, outbox, "orders", {"id": 3})
        assert session.in_transaction(), "SQLAlchemy began the session's transaction"
        assert outbox.pending_count() == 0, "not visible before the commit"
    # Closed without commit: rolled back.
    assert outbox.pending_count() == 0
    with Session(engine) as session:
        rsa.enqueue(session, outbox, "orders", {"id": 4})
        session.commit()
    assert outbox.pending_count() == 1


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
@pytest.mark.parametrize("kind", ["session", "connection"])
def test_async_rollback_commit_batch_and_wake(
    driver: str,
    kind: str,
    pg_url: str,
    outbox: relaybox.Outbox,
    orders: str,
    prefix: str,
    pg: psycopg.Connection[Any],
) -> None:
    async def scenario() -> list[str]:
        engine = create_async_engine(sa_url(pg_url, driver))
        try:
            if kind == "session":
                async with AsyncSession(engine) as session:
                    await session.execute(text(f"INSERT INTO {orders} VALUES (1)"))
                    await rsa.enqueue_async(session, outbox, "orders", {"id": 1})
                    await session.rollback()
                async with AsyncSession(engine) as session:
                    await session.execute(text(f"INSERT INTO {orders} VALUES (2)"))
                    ids = [await rsa.enqueue_async(session, outbox, "orders", {"id": 2}, key="k")]
                    ids += await rsa.enqueue_batch_async(
                        session, outbox, [{"topic": "orders", "payload": b"x", "key": "k"}] * 3
                    )
                    await session.commit()
            else:
                async with engine.connect() as conn:
                    assert isinstance(conn, AsyncConnection)
                    await conn.execute(text(f"INSERT INTO {orders} VALUES (1)"))
                    await rsa.enqueue_async(conn, outbox, "orders", {"id": 1})
                    await conn.rollback()
                async with engine.begin() as conn:
                    await conn.execute(text(f"INSERT INTO {orders} VALUES (2)"))
                    ids = [await rsa.enqueue_async(conn, outbox, "orders", {"id": 2}, key="k")]
                    ids += await rsa.enqueue_batch_async(
                        conn, outbox, [{"topic": "orders", "payload": b"x", "key": "k"}] * 3
                    )
            return ids
        finally:
            await engine.dispose()

    relay = idle_relay(outbox)
    try:
        ids = asyncio.run(scenario())
        committed = time.monotonic()
        delivered = wait_for(
            "the events in the log", lambda: len(log_ids(pg, prefix)) == 4 and log_ids(pg, prefix)
        )
        assert time.monotonic() - committed < 10, "woken by the commit, not the 30 s poll"
    finally:
        relay.stop()
    assert delivered == ids
    assert [r[0] for r in pg.execute(f"SELECT id FROM {orders}")] == [2]
    assert outbox.pending_count() == 0


def test_session_of_another_database_is_refused(
    pg_url: str, outbox: relaybox.Outbox, pg: psycopg.Connection[Any]
) -> None:
    other = pg_url.rsplit("/", 1)[0] + "/postgres"
    engine = create_engine(sa_url(other, "psycopg"))
    try:
        with Session(engine) as session:
            with pytest.raises(relaybox.ConfigError) as info:
                rsa.enqueue(session, outbox, "orders", {"id": 1})
            session.commit()
        assert "not to the outbox's database" in str(info.value)
        assert "'postgres'" in str(info.value)
    finally:
        engine.dispose()
    assert outbox.pending_count() == 0


def test_sqlite_engine_and_foreign_objects_are_refused(
    tmp_path: Path, outbox: relaybox.Outbox
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    try:
        with Session(engine) as session:
            with pytest.raises(relaybox.ConfigError, match="engine is on sqlite"):
                rsa.enqueue(session, outbox, "orders", {"id": 1})
    finally:
        engine.dispose()
    with pytest.raises(relaybox.ConfigError, match="not dict"):
        rsa.enqueue({}, outbox, "orders", {"id": 1})
    with pytest.raises(relaybox.ConfigError, match="not str"):
        asyncio.run(rsa.enqueue_async("session", outbox, "orders", {"id": 1}))
    assert outbox.pending_count() == 0


def test_invalid_message_writes_nothing(
    engine: Engine, outbox: relaybox.Outbox, orders: str
) -> None:
    with Session(engine) as session:
        with pytest.raises(relaybox.ValidationError) as info:
            rsa.enqueue_batch(
                session,
                outbox,
                [{"topic": "orders", "payload": {}}, {"topic": "bad topic", "payload": {}}],
            )
        assert info.value.code == "invalid_topic"
        session.commit()
    assert outbox.pending_count() == 0

"""The consumer in host-transaction mode on SQLAlchemy: the handler writes
through the ORM ``Session`` (or ``AsyncSession``) that holds the message's
inbox row, on real PostgreSQL. Processed once; a redelivery skipped; a
handler that writes then raises leaves nothing, is retried, then
dead-lettered."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from conftest import count, sa_url, wait_for
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import relaybox
import relaybox.sqlalchemy as rsa


def shipment_model(prefix: str) -> Any:
    class Base(DeclarativeBase):
        pass

    class Shipment(Base):
        __tablename__ = f"{prefix}shipments"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
        message_id: Mapped[str]
        order: Mapped[int]

    return Shipment


@pytest.fixture
def shipments(pg: psycopg.Connection[Any], prefix: str) -> Any:
    pg.execute(
        f"CREATE TABLE {prefix}shipments (id serial PRIMARY KEY, message_id text NOT NULL, "
        '"order" int NOT NULL)'
    )
    return shipment_model(prefix)


def rows(pg: psycopg.Connection[Any], prefix: str) -> dict[str, int]:
    return {
        str(r[0]): int(r[1])
        for r in pg.execute(
            f"SELECT message_id, count(*) FROM {prefix}shipments GROUP BY message_id"
        )
    }


def test_processed_once_and_a_redelivery_is_skipped(
    outbox: relaybox.Outbox,
    engine: Engine,
    shipments: Any,
    pg: psycopg.Connection[Any],
    prefix: str,
) -> None:
    with outbox.transaction() as tx:
        ids = [tx.enqueue("orders", {"id": i}, key=f"k{i % 3}") for i in range(12)]
    sessions = sessionmaker(engine)

    def ship(message: relaybox.Message, session: Session) -> None:
        session.add(shipments(message_id=message.id, order=message.json()["id"]))

    with relaybox.Relay(outbox):
        with rsa.Consumer(outbox, "orders", ship, group="ship", sessionmaker=sessions) as c:
            wait_for("12 processed", lambda: c.stats()["processed"] == 12)
        assert rows(pg, prefix) == dict.fromkeys(ids, 1)
        assert count(pg, f"{prefix}inbox") == 12
        # Forget the group's position: every message comes again.
        pg.execute(f"DELETE FROM {prefix}positions")
        with rsa.Consumer(outbox, "orders", ship, group="ship", sessionmaker=sessions) as c:
            wait_for("12 duplicates", lambda: c.stats()["duplicates"] == 12)
        assert c.stats()["processed"] == 0
    assert rows(pg, prefix) == dict.fromkeys(ids, 1)


def test_a_handler_that_writes_then_raises_leaves_nothing_and_is_dead_lettered(
    outbox: relaybox.Outbox,
    engine: Engine,
    shipments: Any,
    pg: psycopg.Connection[Any],
    prefix: str,
) -> None:
    with outbox.transaction() as tx:
        bad = tx.enqueue("orders", {"id": 0}, key="k")
        good = tx.enqueue("orders", {"id": 1}, key="k")
    calls: list[str] = []

    def ship(message: relaybox.Message, session: Session) -> None:
        calls.append(message.id)
        session.add(shipments(message_id=message.id, order=message.json()["id"]))
        session.flush()
        if message.id == bad:
            raise ValueError("no such warehouse")

    with (
        relaybox.Relay(outbox),
        rsa.Consumer(
            outbox,
            "orders",
            ship,
            group="ship",
            sessionmaker=sessionmaker(engine),
            max_retries=2,
            retry_delay=0.01,
        ) as c,
    ):
        wait_for("settled", lambda: c.stats()["processed"] == 1 and c.stats()["dead_lettered"] == 1)
    assert calls.count(bad) == 3 and calls.count(good) == 1
    assert c.stats()["retried"] == 2
    assert rows(pg, prefix) == {good: 1}
    letters = outbox.dead_letters()
    assert [d["message"]["id"] for d in letters] == [bad]
    assert "ValueError: no such warehouse" in letters[0]["last_error"]
    assert letters[0]["attempts"] == 3
    assert count(pg, f"{prefix}inbox") == 1


def test_async_session_handler(
    outbox: relaybox.Outbox,
    pg_url: str,
    shipments: Any,
    pg: psycopg.Connection[Any],
    prefix: str,
) -> None:
    with outbox.transaction() as tx:
        ids = [tx.enqueue("orders", {"id": i}, key=f"k{i % 2}") for i in range(6)]
    bad = ids[2]

    async def scenario() -> dict[str, int]:
        engine = create_async_engine(sa_url(pg_url, "asyncpg"))
        sessions = async_sessionmaker(engine)

        async def ship(message: relaybox.Message, session: AsyncSession) -> None:
            session.add(shipments(message_id=message.id, order=message.json()["id"]))
            await session.flush()
            if message.id == bad:
                raise relaybox.Reject("bad order")

        async with relaybox.AsyncRelay(outbox):
            async with rsa.AsyncConsumer(
                outbox, "orders", ship, group="ship", sessionmaker=sessions
            ) as c:
                while c.stats()["processed"] < 5 or c.stats()["dead_lettered"] < 1:
                    await asyncio.sleep(0.02)
            pg.execute(f"DELETE FROM {prefix}positions")
            async with rsa.AsyncConsumer(
                outbox, "orders", ship, group="ship", sessionmaker=sessions
            ) as again:
                # The dead-lettered message has no inbox row: it is tried again.
                while again.stats()["duplicates"] < 5 or again.stats()["dead_lettered"] < 1:
                    await asyncio.sleep(0.02)
        await engine.dispose()
        return again.stats()

    stats = asyncio.run(scenario())
    assert stats["processed"] == 0
    assert rows(pg, prefix) == {i: 1 for i in ids if i != bad}


class RunRecordingConsumer(rsa.Consumer):
    """Records how many messages each host transaction of a run carried."""

    runs: list[int]

    def _host_call_run(
        self, messages: list[relaybox.Message], sql: str, params: dict[str, Any]
    ) -> list[str]:
        self.runs.append(len(messages))
        return super()._host_call_run(messages, sql, params)


def test_consecutive_messages_of_a_key_share_one_transaction_and_take_effect_once(
    outbox: relaybox.Outbox,
    engine: Engine,
    shipments: Any,
    pg: psycopg.Connection[Any],
    prefix: str,
) -> None:
    with outbox.transaction() as tx:
        bad = tx.enqueue("orders", {"id": -1}, key="k")
        ids = [tx.enqueue("orders", {"id": i}, key="k") for i in range(40)]
    order: list[int] = []

    def ship(message: relaybox.Message, session: Session) -> None:
        session.add(shipments(message_id=message.id, order=message.json()["id"]))
        session.flush()
        if message.id == bad:
            raise relaybox.Reject("no such order")
        order.append(message.json()["id"])

    with relaybox.Relay(outbox):
        wait_for("all relayed", lambda: outbox.pending_count() == 0)
        consumer = RunRecordingConsumer(
            outbox, "orders", ship, group="runs", sessionmaker=sessionmaker(engine)
        )
        consumer.runs = []
        with consumer as c:
            wait_for("40 processed", lambda: c.stats()["processed"] == 40)
    assert max(consumer.runs) > 1, consumer.runs
    assert rows(pg, prefix) == dict.fromkeys(ids, 1)
    assert [i for i in order if i >= 0][-40:] == list(range(40))
    assert c.stats()["dead_lettered"] == 1 and c.stats()["duplicates"] == 0
    assert [letter["message"]["id"] for letter in outbox.dead_letters()] == [bad]

"""The guarantees of the host-transaction consumers on SQLAlchemy, on real PostgreSQL
(and real Kafka): a process killed between the handler's commit and the
acknowledgement gets the message again and its rows exist once; the messages of
each key are handled in order with several lanes at work; a handler that writes
and then raises leaves nothing, is retried, then dead-lettered while other keys
go on."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Optional

import psycopg
import pytest
from conftest import count, sa_url, wait_for
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import relaybox
import relaybox.sqlalchemy as rsa

PROCS = Path(__file__).resolve().parent / "host_consumer_procs"
KAFKA_CONSUMER = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "2000"}
"""A member killed without leaving the group holds its partitions this long."""
HOLD = 1.5
"""Seconds between the marked commit and the kill: longer than the Kafka consumer's
auto-commit interval (1 s) and the core's acknowledgement interval, so that an
acknowledgement made before the host's commit would be recorded."""


def handled_model(prefix: str) -> Any:
    class Base(DeclarativeBase):
        pass

    class Handled(Base):
        __tablename__ = f"{prefix}handled"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
        message_id: Mapped[str]
        key: Mapped[str]
        seq: Mapped[int]

    return Handled


@pytest.fixture
def handled(pg: psycopg.Connection[Any], prefix: str) -> Any:
    """The handlers' table: one row per handled message, in commit order by ``id``."""
    pg.execute(
        f"CREATE TABLE {prefix}handled (id bigserial PRIMARY KEY, message_id text NOT NULL, "
        "key text NOT NULL, seq int NOT NULL)"
    )
    return handled_model(prefix)


def handled_counts(pg: psycopg.Connection[Any], prefix: str) -> dict[str, int]:
    return {
        str(r[0]): int(r[1])
        for r in pg.execute(f"SELECT message_id, count(*) FROM {prefix}handled GROUP BY 1")
    }


def handled_seqs(pg: psycopg.Connection[Any], prefix: str) -> dict[str, list[int]]:
    """Per key, the ``seq`` of its rows in commit order."""
    seqs: dict[str, list[int]] = {}
    for key, seq in pg.execute(f"SELECT key, seq FROM {prefix}handled ORDER BY id"):
        seqs.setdefault(str(key), []).append(int(seq))
    return seqs


def inbox_rows(pg: psycopg.Connection[Any], prefix: str, group: str) -> int:
    row = pg.execute(
        f"SELECT count(*) FROM {prefix}inbox WHERE consumer_group = %s", (group,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def enqueue_keyed(
    outbox: relaybox.Outbox, topic: str, keys: list[str], per_key: int, per_tx: int = 100
) -> list[tuple[str, str, int]]:
    """``per_key`` messages ``{"seq": n}`` per key, keys interleaved; ``(id, key, seq)``."""
    items = [(key, seq) for seq in range(per_key) for key in keys]
    sent: list[tuple[str, str, int]] = []
    for start in range(0, len(items), per_tx):
        with outbox.transaction() as tx:
            for key, seq in items[start : start + per_tx]:
                sent.append((tx.enqueue(topic, {"seq": seq}, key=key), key, seq))
    return sent


def relay_all(outbox: relaybox.Outbox, transport: relaybox.Transport, n: int) -> None:
    with relaybox.Relay(outbox, transport, poll_interval=0.05) as relay:
        wait_for(f"{n} relayed", lambda: relay.stats()["delivered"] >= n)


class RecordingConsumer(rsa.Consumer):
    """The SQLAlchemy consumer, noting the outcome it reports for each delivery."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outcomes: dict[str, list[str]] = {}

    def _host_call(self, message: relaybox.Message, sql: str, params: dict[str, Any]) -> str:
        outcome = super()._host_call(message, sql, params)
        self.outcomes.setdefault(message.id, []).append(outcome)
        return outcome


@pytest.mark.parametrize("transport_kind", ["database", "kafka"])
def test_killed_after_the_commit_before_the_ack_the_message_comes_again_and_is_skipped(
    transport_kind: str,
    request: pytest.FixtureRequest,
    outbox: relaybox.Outbox,
    engine: Engine,
    handled: Any,
    pg: psycopg.Connection[Any],
    pg_url: str,
    prefix: str,
) -> None:
    topic = f"py-host-kill-{uuid.uuid4().hex[:8]}"
    group = "host-kill"
    bootstrap: Optional[str] = None
    relay_transport: relaybox.Transport = None
    consumer_transport: relaybox.Transport = None
    if transport_kind == "kafka":
        bootstrap = str(request.getfixturevalue("kafka_bootstrap"))
        relay_transport = relaybox.Kafka(
            bootstrap_servers=bootstrap, create_topics=True, topic_partitions=3
        )
        consumer_transport = relaybox.Kafka(
            bootstrap_servers=bootstrap, consumer_properties=KAFKA_CONSUMER
        )
    sent = enqueue_keyed(outbox, topic, ["k0", "k1", "k2"], per_key=10)
    ids = [i for i, _, _ in sent]
    killed = next(i for i, key, seq in sent if key == "k1" and seq == 4)
    relay_all(outbox, relay_transport, len(sent))

    settings = {
        "url": pg_url,
        "prefix": prefix,
        "topic": topic,
        "group": group,
        "kill": killed,
        "hold": HOLD,
        "kafka": bootstrap,
    }
    proc = subprocess.Popen(
        [sys.executable, str(PROCS / "sa_killed_consumer.py"), json.dumps(settings)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the consumer process did not reach the marked message:\n{err}")
    assert proc.returncode == -signal.SIGKILL, err
    # The marked message's transaction committed before the process died (another
    # lane's COMMIT sent as it died may still be completing: `before` is a lower bound).
    before = handled_counts(pg, prefix)
    assert before[killed] == 1
    assert set(before.values()) == {1}

    handler_calls: list[str] = []

    def handle(message: relaybox.Message, session: Session) -> None:
        handler_calls.append(message.id)
        body = message.json()
        session.add(handled(message_id=message.id, key=message.key, seq=body["seq"]))

    again = RecordingConsumer(
        outbox,
        topic,
        handle,
        group=group,
        sessionmaker=sessionmaker(engine),
        transport=consumer_transport,
        poll_interval=0.05,
    )
    with again:
        wait_for(
            "the rest handled and the killed message delivered again (never, if its "
            "acknowledgement came before the commit)",
            lambda: set(handled_counts(pg, prefix)) == set(ids) and killed in again.outcomes,
            timeout=45,
        )
    # Delivered again, skipped by its inbox row: the handler was not called.
    assert again.outcomes[killed] == ["duplicate"]
    assert killed not in handler_calls
    assert again.stats()["duplicates"] >= 1
    # Each message's handler committed once: in the killed process or in this one.
    assert again.stats()["processed"] == len(handler_calls) == len(set(handler_calls))
    assert set(handler_calls).isdisjoint(before)
    assert handled_counts(pg, prefix) == dict.fromkeys(ids, 1)
    assert inbox_rows(pg, prefix, group) == len(ids)
    assert handled_seqs(pg, prefix) == {k: list(range(10)) for k in ("k0", "k1", "k2")}


KEYS = [f"key-{n:02d}" for n in range(20)]
PER_KEY = 25


def assert_in_order_once(
    calls: list[tuple[str, str, int]], sent: list[tuple[str, str, int]]
) -> None:
    """Every message handled once; per key, the seqs in handling order are 0, 1, 2, ..."""
    assert sorted(i for i, _, _ in calls) == sorted(i for i, _, _ in sent)
    for key in KEYS:
        seqs = [seq for _, k, seq in calls if k == key]
        assert seqs == list(range(PER_KEY)), f"{key} handled in the order {seqs}"


def test_sync_order_per_key_across_many_keys_with_concurrent_lanes(
    outbox: relaybox.Outbox,
    engine: Engine,
    handled: Any,
    pg: psycopg.Connection[Any],
    prefix: str,
) -> None:
    sent = enqueue_keyed(outbox, "orders", KEYS, PER_KEY)
    calls: list[tuple[str, str, int]] = []

    def handle(message: relaybox.Message, session: Session) -> None:
        body = message.json()
        calls.append((message.id, message.key or "", body["seq"]))
        session.add(handled(message_id=message.id, key=message.key, seq=body["seq"]))

    with (
        relaybox.Relay(outbox, poll_interval=0.05),
        rsa.Consumer(
            outbox,
            "orders",
            handle,
            group="ordered",
            sessionmaker=sessionmaker(engine),
            concurrency=4,
            poll_interval=0.05,
        ) as c,
    ):
        wait_for(f"{len(sent)} processed", lambda: c.stats()["processed"] == len(sent))
    assert_in_order_once(calls, sent)
    assert c.stats() == {
        "processed": len(sent),
        "duplicates": 0,
        "retried": 0,
        "dead_lettered": 0,
    }
    assert handled_seqs(pg, prefix) == {k: list(range(PER_KEY)) for k in KEYS}
    assert set(handled_counts(pg, prefix).values()) == {1}
    assert inbox_rows(pg, prefix, "ordered") == len(sent)


def test_async_order_per_key_across_many_keys_with_concurrent_lanes(
    outbox: relaybox.Outbox,
    pg_url: str,
    handled: Any,
    pg: psycopg.Connection[Any],
    prefix: str,
) -> None:
    sent = enqueue_keyed(outbox, "orders", KEYS, PER_KEY)
    calls: list[tuple[str, str, int]] = []

    async def scenario() -> dict[str, int]:
        engine = create_async_engine(sa_url(pg_url, "asyncpg"))

        async def handle(message: relaybox.Message, session: AsyncSession) -> None:
            body = message.json()
            calls.append((message.id, message.key or "", body["seq"]))
            session.add(handled(message_id=message.id, key=message.key, seq=body["seq"]))
            # Let other lanes' handlers run in between.
            await asyncio.sleep(0)
            await session.flush()

        try:
            async with (
                relaybox.AsyncRelay(outbox, poll_interval=0.05),
                rsa.AsyncConsumer(
                    outbox,
                    "orders",
                    handle,
                    group="ordered",
                    sessionmaker=async_sessionmaker(engine),
                    concurrency=4,
                    poll_interval=0.05,
                ) as c,
            ):
                while c.stats()["processed"] < len(sent):
                    await asyncio.sleep(0.02)
        finally:
            await engine.dispose()
        return c.stats()

    stats = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert stats == {"processed": len(sent), "duplicates": 0, "retried": 0, "dead_lettered": 0}
    assert_in_order_once(calls, sent)
    assert handled_seqs(pg, prefix) == {k: list(range(PER_KEY)) for k in KEYS}
    assert set(handled_counts(pg, prefix).values()) == {1}
    assert inbox_rows(pg, prefix, "ordered") == len(sent)


def test_async_handler_that_writes_then_raises_leaves_nothing_is_retried_then_dead_lettered(
    outbox: relaybox.Outbox,
    pg_url: str,
    handled: Any,
    pg: psycopg.Connection[Any],
    prefix: str,
) -> None:
    # The failing message first on key "a"; later messages on "a" and on other keys.
    with outbox.transaction() as tx:
        bad = tx.enqueue("orders", {"seq": 0}, key="a")
        good = [tx.enqueue("orders", {"seq": n}, key=k) for n in (1, 2) for k in ("a", "b", "c")]
    calls: list[tuple[str, str]] = []

    async def scenario() -> dict[str, int]:
        engine = create_async_engine(sa_url(pg_url, "asyncpg"))

        async def handle(message: relaybox.Message, session: AsyncSession) -> None:
            calls.append((message.id, message.key or ""))
            session.add(handled(message_id=message.id, key=message.key, seq=message.json()["seq"]))
            await session.flush()
            if message.id == bad:
                raise ValueError("no such warehouse")

        try:
            async with (
                relaybox.AsyncRelay(outbox, poll_interval=0.05),
                rsa.AsyncConsumer(
                    outbox,
                    "orders",
                    handle,
                    group="failing",
                    sessionmaker=async_sessionmaker(engine),
                    max_retries=2,
                    retry_delay=0.01,
                    poll_interval=0.05,
                ) as c,
            ):
                while c.stats()["processed"] < len(good) or c.stats()["dead_lettered"] < 1:
                    await asyncio.sleep(0.02)
        finally:
            await engine.dispose()
        return c.stats()

    stats = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert stats == {"processed": len(good), "duplicates": 0, "retried": 2, "dead_lettered": 1}
    ids = [i for i, _ in calls]
    assert ids.count(bad) == 3
    assert sorted(i for i in ids if i != bad) == sorted(good)
    # Key "a" goes on only after its failing message is dead-lettered.
    a_calls = [i for i, key in calls if key == "a"]
    assert a_calls[:3] == [bad] * 3
    # The rows the handler flushed before raising were rolled back with the inbox row.
    assert handled_counts(pg, prefix) == dict.fromkeys(good, 1)
    assert inbox_rows(pg, prefix, "failing") == len(good)
    letters = outbox.dead_letters()
    assert [d["message"]["id"] for d in letters] == [bad]
    assert letters[0]["attempts"] == 3
    assert "ValueError: no such warehouse" in letters[0]["last_error"]
    assert count(pg, f"{prefix}dead_letters") == 1

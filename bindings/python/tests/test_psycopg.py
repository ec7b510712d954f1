"""Enqueue inside the caller's own psycopg 3 transaction (sync and async)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest
from conftest import count, wait_for

import relaybox


def test_rollback_of_psycopg_transaction_leaves_no_event(
    outbox: relaybox.Outbox, pg_url: str, prefix: str, pg: psycopg.Connection[Any]
) -> None:
    pg.execute(f"CREATE TABLE {prefix}users (email text)")
    with psycopg.connect(pg_url) as conn:
        with pytest.raises(RuntimeError):
            with conn.transaction():
                conn.execute(f"INSERT INTO {prefix}users VALUES (%s)", ("a@example.com",))
                relaybox.psycopg.enqueue(conn, outbox, "users", {"email": "a@example.com"})
                raise RuntimeError("signup failed")
    assert count(pg, f"{prefix}users") == 0
    assert outbox.pending_count() == 0


def test_commit_of_psycopg_transaction_is_delivered_once(
    outbox: relaybox.Outbox, pg_url: str, prefix: str, pg: psycopg.Connection[Any]
) -> None:
    pg.execute(f"CREATE TABLE {prefix}users (email text)")
    with psycopg.connect(pg_url) as conn:
        with conn.transaction():
            conn.execute(f"INSERT INTO {prefix}users VALUES (%s)", ("b@example.com",))
            message_id = relaybox.psycopg.enqueue(
                conn, outbox, "users", {"email": "b@example.com"}, key="b", type="UserCreated"
            )
    seen: list[tuple[str, Any, str]] = []

    def handle(message: relaybox.Message, tx: relaybox.Transaction) -> None:
        seen.append((message.id, message.json(), message.type))

    with relaybox.Relay(outbox), relaybox.Consumer(outbox, "users", handle, group="mailer") as c:
        wait_for("the event handled", lambda: c.stats()["processed"] == 1)
    assert seen == [(message_id, {"email": "b@example.com"}, "UserCreated")]
    assert outbox.pending_count() == 0


def test_async_psycopg_connection(
    outbox: relaybox.Outbox, pg_url: str, prefix: str, pg: psycopg.Connection[Any]
) -> None:
    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(pg_url) as conn:
            async with conn.transaction():
                await relaybox.psycopg.enqueue_async(conn, outbox, "users", {"n": 1})
            with pytest.raises(ValueError):
                async with conn.transaction():
                    await relaybox.psycopg.enqueue_async(conn, outbox, "users", {"n": 2})
                    raise ValueError("rolled back")

    asyncio.run(scenario())
    rows = pg.execute(f"SELECT payload FROM {prefix}outbox").fetchall()
    assert [bytes(r[0]) for r in rows] == [b'{"n":1}']


def test_psycopg_bad_input_raises_before_writing(outbox: relaybox.Outbox, pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        with conn.transaction():
            with pytest.raises(relaybox.ValidationError) as info:
                relaybox.psycopg.enqueue(conn, outbox, "", {"x": 1})
            assert info.value.code == "invalid_topic"
    assert outbox.pending_count() == 0


def test_commit_wakes_the_relay_and_a_batch_is_one_statement(
    outbox: relaybox.Outbox, pg_url: str, prefix: str, pg: psycopg.Connection[Any]
) -> None:
    relay = relaybox.Relay(outbox, poll_interval=30.0).start()  # only a wake-up delivers fast
    try:
        with psycopg.connect(pg_url) as conn:
            with conn.transaction():
                ids = relaybox.psycopg.enqueue_batch(
                    conn,
                    outbox,
                    [{"topic": "users", "payload": {"n": n}, "key": "k"} for n in range(3)],
                )
                assert outbox.pending_count() == 0, "not visible before the commit"
            committed = time.monotonic()
        logged = wait_for(
            "the batch in the log",
            lambda: (
                [str(r[0]) for r in pg.execute(f"SELECT id FROM {prefix}log ORDER BY position")]
                if count(pg, f"{prefix}log") == 3
                else None
            ),
            timeout=10,
        )
        assert time.monotonic() - committed < 10, "woken by the commit, not the 30 s poll"
        assert logged == ids
    finally:
        relay.stop()

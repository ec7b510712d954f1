"""Enqueue inside an asyncpg transaction, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import psycopg
import pytest
from conftest import wait_for

import relaybox
import relaybox.asyncpg as rap


def test_rollback_commit_batch_and_wake(
    pg_url: str, outbox: relaybox.Outbox, prefix: str, pg: psycopg.Connection[Any]
) -> None:
    pg.execute(f"CREATE TABLE {prefix}orders (id int)")

    async def scenario() -> list[str]:
        conn = await asyncpg.connect(pg_url)
        try:
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {prefix}orders VALUES (1)")
                    await rap.enqueue_async(conn, outbox, "orders", {"id": 1})
                    raise RuntimeError("request failed")
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {prefix}orders VALUES (2)")
                ids = [
                    await rap.enqueue_async(conn, outbox, "orders", {"id": 2}, key="k", type="T")
                ]
                ids += await rap.enqueue_batch_async(
                    conn,
                    outbox,
                    [{"topic": "orders", "payload": {"n": n}, "key": "k"} for n in range(4)],
                )
            return ids
        finally:
            await conn.close()

    relay = relaybox.Relay(outbox, poll_interval=30.0)
    relay.start()
    try:
        time.sleep(1.0)
        ids = asyncio.run(scenario())
        committed = time.monotonic()
        delivered = wait_for(
            "the events in the log",
            lambda: (
                [str(r[0]) for r in pg.execute(f"SELECT id FROM {prefix}log ORDER BY position")]
                if len(pg.execute(f"SELECT id FROM {prefix}log").fetchall()) == 5
                else None
            ),
            timeout=10,
        )
        assert time.monotonic() - committed < 10, "woken by the commit, not the 30 s poll"
    finally:
        relay.stop()
    assert delivered == ids
    assert [r[0] for r in pg.execute(f"SELECT id FROM {prefix}orders")] == [2]
    row = pg.execute(f"SELECT type, key, payload FROM {prefix}log ORDER BY position").fetchone()
    assert row is not None and (row[0], row[1], bytes(row[2])) == ("T", "k", b'{"id":2}')


def test_bad_input_is_refused_and_nothing_written(pg_url: str, outbox: relaybox.Outbox) -> None:
    other = pg_url.rsplit("/", 1)[0] + "/postgres"

    async def scenario() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            with pytest.raises(relaybox.ConfigError, match="not in a transaction"):
                await rap.enqueue_async(conn, outbox, "orders", {"id": 1})
            async with conn.transaction():
                with pytest.raises(relaybox.ValidationError):
                    await rap.enqueue_async(conn, outbox, "", {"id": 1})
        finally:
            await conn.close()
        elsewhere = await asyncpg.connect(other)
        try:
            async with elsewhere.transaction():
                with pytest.raises(relaybox.ConfigError, match="not to the outbox's database"):
                    await rap.enqueue_async(elsewhere, outbox, "orders", {"id": 1})
        finally:
            await elsewhere.close()
        with pytest.raises(relaybox.ConfigError, match="not dict"):
            await rap.enqueue_async({}, outbox, "orders", {"id": 1})

    asyncio.run(scenario())
    assert outbox.pending_count() == 0

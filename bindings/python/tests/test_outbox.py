"""The outbox from Python: commit vs. rollback, sync and async, payload forms."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import psycopg
import pydantic
import pytest
from conftest import count, wait_for

import relaybox


def outbox_rows(pg: psycopg.Connection[Any], prefix: str) -> list[tuple[Any, ...]]:
    return pg.execute(
        f"SELECT topic, key, type, payload, content_type, headers FROM {prefix}outbox ORDER BY seq"
    ).fetchall()


def test_commit_writes_rows_and_events_together(
    outbox: relaybox.Outbox, pg: psycopg.Connection[Any], prefix: str
) -> None:
    pg.execute(f"CREATE TABLE {prefix}orders (id bigint PRIMARY KEY)")
    with outbox.transaction() as tx:
        assert tx.execute(f"INSERT INTO {prefix}orders (id) VALUES ($1)", [7]) == 1
        message_id = tx.enqueue(
            "orders", {"id": 7}, key=7, type="OrderPlaced", headers={"source": "shop"}
        )
    assert count(pg, f"{prefix}orders") == 1
    rows = outbox_rows(pg, prefix)
    assert len(rows) == 1
    topic, key, event_type, payload, content_type, headers = rows[0]
    assert (topic, key, event_type) == ("orders", "7", "OrderPlaced")
    assert json.loads(bytes(payload)) == {"id": 7}
    assert content_type == "application/json"
    assert headers == {"source": "shop"}
    assert len(message_id) == 36


def test_exception_in_block_rolls_back_rows_and_events(
    outbox: relaybox.Outbox, pg: psycopg.Connection[Any], prefix: str
) -> None:
    pg.execute(f"CREATE TABLE {prefix}orders (id bigint PRIMARY KEY)")
    with pytest.raises(RuntimeError, match="checkout failed"):
        with outbox.transaction() as tx:
            tx.execute(f"INSERT INTO {prefix}orders (id) VALUES ($1)", [8])
            tx.enqueue("orders", {"id": 8})
            raise RuntimeError("checkout failed")
    assert count(pg, f"{prefix}orders") == 0
    assert outbox.pending_count() == 0


def test_async_transaction_commits_and_rolls_back(
    outbox: relaybox.Outbox, pg: psycopg.Connection[Any], prefix: str
) -> None:
    async def scenario() -> None:
        async with outbox.as_async().transaction() as tx:
            await tx.enqueue("orders", {"n": 1})
            rows = await tx.query("SELECT 1 + $1::int AS two", [1])
            assert rows == [{"two": 2}]
        with pytest.raises(ValueError):
            async with outbox.as_async().transaction() as tx:
                await tx.enqueue("orders", {"n": 2})
                raise ValueError("no")

    asyncio.run(scenario())
    assert [json.loads(bytes(r[3])) for r in outbox_rows(pg, prefix)] == [{"n": 1}]


def test_async_outbox(pg_url: str, prefix: str) -> None:
    async def scenario() -> int:
        box = await relaybox.AsyncOutbox.open(pg_url, migrate=True, table_prefix=prefix)
        async with box:
            await box.enqueue("orders", b"\x00\x01")
            async with box.transaction() as tx:
                await tx.enqueue("orders", b"\x02", key="k")
            status = await box.status()
            assert [(t["topic"], t["pending"]) for t in status["topics"]] == [("orders", 2)]
            assert await box.dead_letters() == []
            assert await box.retry_dead_letters() == 0
            assert await box.purge_dead_letters(["01a24a80-855a-75ba-a103-a3e1cefab8b2"]) == 0
            return await box.pending_count()

    assert asyncio.run(scenario()) == 2


class Order(pydantic.BaseModel):
    id: int
    total: float


@dataclasses.dataclass
class Shipped:
    order_id: int


def test_payload_forms(outbox: relaybox.Outbox, pg: psycopg.Connection[Any], prefix: str) -> None:
    with outbox.transaction() as tx:
        tx.enqueue("t", b"\xff\x00raw")
        tx.enqueue("t", "héllo")
        tx.enqueue("t", Order(id=1, total=9.5))
        tx.enqueue("t", Shipped(order_id=3))
        tx.enqueue("t", [1, "two", None])
    got = [(bytes(r[3]), r[4]) for r in outbox_rows(pg, prefix)]
    assert got == [
        (b"\xff\x00raw", "application/octet-stream"),
        ("héllo".encode(), "text/plain; charset=utf-8"),
        (b'{"id":1,"total":9.5}', "application/json"),
        (b'{"order_id":3}', "application/json"),
        (b'[1,"two",null]', "application/json"),
    ]


def test_enqueue_batch_is_all_or_nothing(outbox: relaybox.Outbox) -> None:
    with outbox.transaction() as tx:
        ids = tx.enqueue_batch(
            [{"topic": "t", "payload": {"i": i}, "key": f"k{i % 3}"} for i in range(500)]
        )
    assert len(set(ids)) == 500
    assert outbox.pending_count() == 500
    with pytest.raises(relaybox.ValidationError):
        with outbox.transaction() as tx:
            tx.enqueue_batch([{"topic": "t", "payload": 1}, {"topic": "bad topic", "payload": 2}])
    assert outbox.pending_count() == 500


@pytest.mark.parametrize("box", ["outbox", "sqlite_outbox"])
def test_an_idempotency_key_writes_once_and_returns_the_first_id(
    box: str, request: pytest.FixtureRequest, pg_url: str
) -> None:
    outbox: relaybox.Outbox = request.getfixturevalue(box)
    with outbox.transaction() as tx:
        first = tx.enqueue("orders", {"id": 1}, idempotency_key="order-1-placed")
        assert tx.enqueue("orders", {"id": 1}, idempotency_key="order-1-placed") == first
    with outbox.transaction() as tx:
        ids = tx.enqueue_batch(
            [
                {"topic": "orders", "payload": 1, "idempotency_key": "order-1-placed"},
                {"topic": "orders", "payload": 2, "idempotency_key": "order-2-placed"},
                {"topic": "invoices", "payload": 3, "idempotency_key": "order-1-placed"},
            ]
        )
    assert ids[0] == first and len(set(ids)) == 3
    assert outbox.pending_count() == 3
    with pytest.raises(relaybox.ValidationError, match="idempotency_key"):
        with outbox.transaction() as tx:
            tx.enqueue("orders", 4, idempotency_key="")
    assert outbox.pending_count() == 3


def test_an_idempotency_key_through_a_driver_transaction_is_refused(
    outbox: relaybox.Outbox, pg_url: str
) -> None:
    import relaybox.psycopg

    with psycopg.connect(pg_url) as conn:
        with pytest.raises(relaybox.ValidationError, match="idempotency_key"):
            with conn.transaction():
                relaybox.psycopg.enqueue(conn, outbox, "orders", 1, idempotency_key="k")
    assert outbox.pending_count() == 0


def test_sqlite_outbox_round_trip(sqlite_outbox: relaybox.Outbox) -> None:
    with sqlite_outbox.transaction() as tx:
        tx.execute("CREATE TABLE IF NOT EXISTS notes (body TEXT)")
        tx.execute("INSERT INTO notes (body) VALUES (?1)", ["hi"])
        tx.enqueue("notes", {"body": "hi"})
    assert sqlite_outbox.dialect == "sqlite"
    assert sqlite_outbox.pending_count() == 1
    with sqlite_outbox.transaction() as tx:
        assert tx.query("SELECT body FROM notes") == [{"body": "hi"}]


def test_delayed_message_waits(
    outbox: relaybox.Outbox, pg: psycopg.Connection[Any], prefix: str
) -> None:
    outbox.enqueue("t", b"later", delay=3600)
    row = pg.execute(f"SELECT available_at - created_at FROM {prefix}outbox").fetchone()
    assert row is not None and row[0].total_seconds() == pytest.approx(3600, abs=1)


def test_url_is_redacted(pg_url: str, prefix: str) -> None:
    url = pg_url.replace("postgres@", "postgres:s3cret-pw@")
    with relaybox.Outbox(url, table_prefix=prefix) as box:
        assert "s3cret-pw" not in box.url
        assert "s3cret-pw" not in repr(box)


def test_an_unknown_enqueue_keyword_is_a_type_error_and_writes_nothing(
    outbox: relaybox.Outbox,
) -> None:
    with pytest.raises(TypeError, match="unexpected enqueue keyword.*kye"):
        outbox.enqueue("orders", {"id": 1}, kye="1")  # type: ignore[call-arg]
    with outbox.transaction() as tx:
        with pytest.raises(TypeError, match="kye"):
            tx.enqueue_batch([{"topic": "orders", "payload": {}, "kye": "1"}])
    assert outbox.pending_count() == 0


def test_a_relay_with_log_retention_purges_the_database_log(
    outbox: relaybox.Outbox, pg: psycopg.Connection[Any], prefix: str
) -> None:
    with outbox.transaction() as tx:
        tx.enqueue_batch([{"topic": "kept", "payload": i} for i in range(5)])
    settings: dict[str, Any] = {"log_retention": 0.001, "log_keep_unread": False}
    with relaybox.Relay(outbox, **settings) as relay:
        wait_for("5 delivered", lambda: relay.stats()["delivered"] == 5)
    # A relay purges when it starts (and every minute after).
    with relaybox.Relay(outbox, **settings):
        wait_for("the log purged", lambda: count(pg, f"{prefix}log") == 0)


def test_relays_with_routes_serve_their_topics_only(
    outbox: relaybox.Outbox, pg: psycopg.Connection[Any], prefix: str
) -> None:
    with outbox.transaction() as tx:
        for topic in ("orders.created", "billing", "audit"):
            tx.enqueue_batch({"topic": topic, "payload": {"n": i}} for i in range(3))
    routes = [
        relaybox.Route(["orders.*"], destination="eu.{topic}"),
        relaybox.Route(["billing"], transport="database"),
    ]
    log = f'SELECT topic, count(*) FROM "{prefix}log" GROUP BY topic'
    with relaybox.Relay(outbox, transport=routes, poll_interval=0.05):
        wait_for("the routed topics delivered", lambda: outbox.pending_count() == 3)
        status = {t["topic"]: t for t in outbox.status()["topics"]}
        assert status["audit"]["pending"] == 3 and status["audit"]["served"] is False
    assert dict(pg.execute(log).fetchall()) == {"eu.orders.created": 3, "billing": 3}
    with pytest.raises(relaybox.ConfigError, match="topic pattern"):
        relaybox.Relay(outbox, transport=[relaybox.Route(["bad topic"])]).start()
    with pytest.raises(TypeError):
        relaybox.Relay(outbox, transport=["orders"])  # type: ignore[list-item]

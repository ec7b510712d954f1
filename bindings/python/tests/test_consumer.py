"""Relay and idempotent consumer from Python: sync and async handlers, atomic
writes, retries, rejections, dead letters."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from conftest import count, wait_for

import relaybox


def test_sync_handler_writes_commit_with_the_inbox_row(
    outbox: relaybox.Outbox, pg: psycopg.Connection[Any], prefix: str
) -> None:
    pg.execute(f"CREATE TABLE {prefix}projection (order_id int PRIMARY KEY)")
    with outbox.transaction() as tx:
        for i in range(20):
            tx.enqueue("orders", {"id": i}, key=f"k{i % 4}")

    def project(message: relaybox.Message, tx: relaybox.Transaction) -> None:
        tx.execute(f"INSERT INTO {prefix}projection VALUES ($1)", [message.json()["id"]])

    with relaybox.Relay(outbox), relaybox.Consumer(outbox, "orders", project, group="p") as c:
        wait_for("20 processed", lambda: c.stats()["processed"] == 20)
    assert count(pg, f"{prefix}projection") == 20
    assert count(pg, f"{prefix}inbox") == 20


def test_restarted_consumer_skips_what_it_processed(outbox: relaybox.Outbox) -> None:
    outbox.enqueue("orders", {"id": 1})
    calls: list[str] = []

    def handle(message: relaybox.Message, tx: relaybox.Transaction) -> None:
        calls.append(message.id)

    with relaybox.Relay(outbox):
        with relaybox.Consumer(outbox, "orders", handle, group="once") as c:
            wait_for("first run", lambda: c.stats()["processed"] == 1)
        outbox.enqueue("orders", {"id": 2})
        with relaybox.Consumer(outbox, "orders", handle, group="once") as c:
            wait_for("second run", lambda: c.stats()["processed"] == 1)
    assert len(calls) == 2 and len(set(calls)) == 2


def test_async_handler_gets_an_async_transaction(
    outbox: relaybox.Outbox, pg: psycopg.Connection[Any], prefix: str
) -> None:
    pg.execute(f"CREATE TABLE {prefix}seen (id text)")

    async def scenario() -> dict[str, int]:
        done = asyncio.Event()

        async def handle(message: relaybox.Message, tx: relaybox.AsyncTransaction) -> None:
            await tx.execute(f"INSERT INTO {prefix}seen VALUES ($1)", [message.id])
            done.set()

        aoutbox = outbox.as_async()
        await aoutbox.enqueue("orders", {"a": 1})
        async with relaybox.AsyncRelay(aoutbox):
            async with relaybox.AsyncConsumer(aoutbox, "orders", handle, group="async") as c:
                await asyncio.wait_for(done.wait(), 30)
                while c.stats()["processed"] < 1:
                    await asyncio.sleep(0.01)
        return c.stats()

    assert asyncio.run(scenario())["processed"] == 1
    assert count(pg, f"{prefix}seen") == 1


def test_async_handler_without_a_running_loop(outbox: relaybox.Outbox) -> None:
    handled: list[Any] = []

    async def handle(message: relaybox.Message, tx: relaybox.AsyncTransaction) -> None:
        await asyncio.sleep(0)
        handled.append(message.json())

    outbox.enqueue("orders", {"b": 2})
    consumer = relaybox.AsyncConsumer(outbox, "orders", handle, group="g")
    with relaybox.Relay(outbox):
        consumer.start()
        try:
            wait_for("processed", lambda: consumer.stats()["processed"] == 1)
        finally:
            asyncio.run(consumer.stop())
    assert handled == [{"b": 2}]


def test_each_consumer_takes_its_kind_of_handler(outbox: relaybox.Outbox) -> None:
    async def handle_async(message: relaybox.Message, tx: relaybox.AsyncTransaction) -> None:
        pass

    def handle(message: relaybox.Message, tx: relaybox.Transaction) -> None:
        pass

    with pytest.raises(TypeError, match="AsyncConsumer"):
        relaybox.Consumer(outbox, "orders", handle_async, group="g")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async def"):
        relaybox.AsyncConsumer(outbox, "orders", handle, group="g")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unexpected consumer setting"):
        relaybox.Consumer(outbox, "orders", handle, group="g", retries=3)  # type: ignore[call-arg]


def test_failing_handler_is_retried_and_its_writes_rolled_back(
    outbox: relaybox.Outbox, pg: psycopg.Connection[Any], prefix: str
) -> None:
    pg.execute(f"CREATE TABLE {prefix}charges (id text)")
    attempts: list[int] = []

    def charge(message: relaybox.Message, tx: relaybox.Transaction) -> None:
        tx.execute(f"INSERT INTO {prefix}charges VALUES ($1)", [message.id])
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("gateway down")

    outbox.enqueue("payments", {"amount": 5})
    with (
        relaybox.Relay(outbox),
        relaybox.Consumer(
            outbox, "payments", charge, group="charger", max_retries=3, retry_delay=0.01
        ) as c,
    ):
        wait_for("processed after retries", lambda: c.stats()["processed"] == 1)
        assert c.stats()["retried"] == 2
    assert len(attempts) == 3
    assert count(pg, f"{prefix}charges") == 1


def test_exhausted_and_rejected_messages_go_to_dead_letters(outbox: relaybox.Outbox) -> None:
    def handle(message: relaybox.Message, tx: relaybox.Transaction) -> None:
        body = message.json()
        if body["kind"] == "reject":
            raise relaybox.Reject("amount is missing")
        if body["kind"] == "fail":
            raise KeyError("card_token")

    with outbox.transaction() as tx:
        tx.enqueue("payments", {"kind": "reject"}, key="a")
        tx.enqueue("payments", {"kind": "fail"}, key="b")
        tx.enqueue("payments", {"kind": "ok"}, key="c")
    with (
        relaybox.Relay(outbox),
        relaybox.Consumer(
            outbox, "payments", handle, group="pay", max_retries=1, retry_delay=0.01
        ) as c,
    ):
        wait_for(
            "settled",
            lambda: c.stats()["processed"] == 1 and c.stats()["dead_lettered"] == 2,
        )
    letters = {d["message"]["key"]: d for d in outbox.dead_letters()}
    assert letters["a"]["last_error"] == "amount is missing"
    assert letters["a"]["attempts"] == 1
    assert letters["b"]["last_error"] == "KeyError: 'card_token'"
    assert letters["b"]["attempts"] == 2
    assert letters["b"]["origin"] == "consumer:pay"
    assert outbox.retry_dead_letters([letters["a"]["message"]["id"]]) == 1
    assert outbox.purge_dead_letters() == 1
    assert outbox.dead_letters() == []


def test_handler_enqueues_follow_up_events_atomically(outbox: relaybox.Outbox) -> None:
    def handle(message: relaybox.Message, tx: relaybox.Transaction) -> None:
        relaybox_tx = tx
        relaybox_tx.enqueue("receipts", {"for": message.id})

    order_id = outbox.enqueue("orders", {"id": 1})
    receipts: list[Any] = []
    with relaybox.Relay(outbox), relaybox.Consumer(outbox, "orders", handle, group="g"):
        with relaybox.Consumer(
            outbox, "receipts", lambda m, tx: receipts.append(m.json()), group="r"
        ):
            wait_for("the receipt", lambda: receipts)
    assert receipts == [{"for": order_id}]

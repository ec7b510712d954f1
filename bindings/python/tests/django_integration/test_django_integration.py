"""relaybox.django on real PostgreSQL: the migration, enqueue inside
``transaction.atomic()``, the consumer whose handler runs in ``atomic()`` with the
inbox row, and the management commands as real processes stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import wait_for
from dj_env import PREFIX, migrated_fixture, pgm_fixture, scalar  # noqa: F401
from django.db import connection, transaction

import relaybox
import relaybox.django as rdj

HERE = Path(__file__).resolve().parent

TABLES = (
    "outbox",
    "inbox",
    "dead_letters",
    "positions",
    "leases",
    "log",
    "schema_migrations",
    "idempotency_keys",
)


def tables(pg: psycopg.Connection[Any]) -> set[str]:
    return {
        str(r[0])
        for r in pg.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND tablename LIKE %s",
            (PREFIX + "%",),
        )
    }


@pytest.fixture(scope="module", autouse=True)
def shipments_table(migrated: None, pgm: psycopg.Connection[Any]) -> Iterator[None]:
    """The table the consumer handlers of this module write to."""
    pgm.execute(
        f"CREATE TABLE {PREFIX}shipments (id serial PRIMARY KEY, message_id text NOT NULL, "
        '"order" int NOT NULL)'
    )
    yield
    pgm.execute(f"DROP TABLE IF EXISTS {PREFIX}shipments")


@pytest.fixture
def topic() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def outbox_rows(pg: psycopg.Connection[Any], topic: str) -> int:
    return int(scalar(pg, f"SELECT count(*) FROM {PREFIX}outbox WHERE topic = %s", topic))


def shipments(pg: psycopg.Connection[Any], ids: list[str]) -> dict[str, int]:
    rows = pg.execute(
        f"SELECT message_id, count(*) FROM {PREFIX}shipments WHERE message_id = ANY(%s) "
        "GROUP BY message_id",
        (ids,),
    )
    return {str(r[0]): int(r[1]) for r in rows}


def test_migrate_creates_the_tables(migrated: None, pgm: psycopg.Connection[Any]) -> None:
    assert {PREFIX + t for t in TABLES} <= tables(pgm)
    assert scalar(pgm, f"SELECT max(version) FROM {PREFIX}schema_migrations") == 4
    assert scalar(pgm, f"SELECT count(*) FROM {PREFIX}leases") == 16
    assert rdj.get_outbox() is rdj.get_outbox()
    assert rdj.get_outbox().table_prefix == PREFIX


def test_migration_0002_adds_idempotency_keys_to_a_version_1_database(
    migrated: None, pgm: psycopg.Connection[Any]
) -> None:
    from django.core.management import call_command

    seq_columns = (
        "SELECT count(*) FROM information_schema.columns"
        f" WHERE table_name = '{PREFIX}dead_letters' AND column_name = 'seq'"
    )
    call_command("migrate", "relaybox", "0001", verbosity=0)
    assert PREFIX + "idempotency_keys" not in tables(pgm)
    assert PREFIX + "route_leases" not in tables(pgm)
    assert scalar(pgm, seq_columns) == 0
    assert scalar(pgm, f"SELECT max(version) FROM {PREFIX}schema_migrations") == 1
    call_command("migrate", "relaybox", verbosity=0)
    assert PREFIX + "idempotency_keys" in tables(pgm)
    assert PREFIX + "route_leases" in tables(pgm)
    assert scalar(pgm, seq_columns) == 1
    assert scalar(pgm, f"SELECT max(version) FROM {PREFIX}schema_migrations") == 4


def test_enqueue_in_atomic_commits_and_is_delivered_once(
    migrated: None, pgm: psycopg.Connection[Any], topic: str
) -> None:
    log = f"SELECT count(*) FROM {PREFIX}log WHERE topic = %s"
    # A relay that polls only every 30 s: only the commit's wake-up delivers fast.
    with relaybox.Relay(rdj.get_outbox(), poll_interval=30.0):
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(
                    f'INSERT INTO {PREFIX}shipments (message_id, "order") VALUES (%s, 1)', [topic]
                )
            first = rdj.enqueue(topic, {"id": 1}, key="k1", type="OrderPlaced")
            rest = rdj.enqueue_batch([{"topic": topic, "payload": {"id": i}} for i in (2, 3)])
            # Not visible to another connection before the commit.
            assert outbox_rows(pgm, topic) == 0
        committed = time.monotonic()
        wait_for("the events in the log", lambda: scalar(pgm, log, topic) == 3, timeout=10)
        assert time.monotonic() - committed < 10, "woken by the commit, not the 30 s poll"
    seen: list[str] = []
    with (
        relaybox.Relay(rdj.get_outbox(), poll_interval=0.2),
        relaybox.Consumer(
            rdj.get_outbox(), topic, lambda m, tx: seen.append(m.id), group="g"
        ) as consumer,
    ):
        wait_for("3 processed", lambda: consumer.stats()["processed"] == 3)
    assert sorted(seen) == sorted([first, *rest])


def test_an_atomic_block_that_raises_writes_nothing(
    migrated: None, pgm: psycopg.Connection[Any], topic: str
) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        rdj.enqueue(topic, {"id": 1})
        raise RuntimeError("the view failed")
    # A savepoint rolled back takes its rows; the outer block keeps its own.
    with transaction.atomic():
        kept = rdj.enqueue(topic, {"id": 2})
        with pytest.raises(RuntimeError), transaction.atomic():
            rdj.enqueue(topic, {"id": 3})
            raise RuntimeError("inner")
    assert outbox_rows(pgm, topic) == 1
    assert scalar(pgm, f"SELECT id::text FROM {PREFIX}outbox WHERE topic = %s", topic) == kept


def test_enqueue_outside_atomic_is_refused(
    migrated: None, pgm: psycopg.Connection[Any], topic: str
) -> None:
    assert connection.get_autocommit()
    with pytest.raises(relaybox.ConfigError, match=r"outside transaction\.atomic\(\)"):
        rdj.enqueue(topic, {"id": 1})
    with pytest.raises(relaybox.ConfigError, match="autocommit"):
        rdj.enqueue_batch([{"topic": topic, "payload": 1}])
    assert outbox_rows(pgm, topic) == 0


def test_consumer_handler_runs_in_atomic_with_the_inbox_row(
    migrated: None, pgm: psycopg.Connection[Any], topic: str
) -> None:
    with transaction.atomic():
        bad = rdj.enqueue(topic, {"id": 0}, key="k")
        good = rdj.enqueue_batch(
            [{"topic": topic, "payload": {"id": i}, "key": f"k{i % 3}"} for i in range(1, 10)]
        )
    calls: list[str] = []

    def ship(message: relaybox.Message) -> None:
        assert connection.in_atomic_block
        calls.append(message.id)
        with connection.cursor() as cursor:
            cursor.execute(
                f'INSERT INTO {PREFIX}shipments (message_id, "order") VALUES (%s, %s)',
                [message.id, message.json()["id"]],
            )
        if message.id == bad:
            raise ValueError("no such warehouse")

    def consumer() -> rdj.Consumer:
        return rdj.Consumer(topic, ship, group="ship", max_retries=2, retry_delay=0.05)

    with relaybox.Relay(rdj.get_outbox(), poll_interval=0.2):
        with consumer() as c:
            wait_for(
                "9 processed, 1 dead",
                lambda: c.stats()["processed"] == 9 and c.stats()["dead_lettered"] == 1,
            )
        assert c.stats()["retried"] == 2
        assert calls.count(bad) == 3
        assert shipments(pgm, [bad, *good]) == dict.fromkeys(good, 1)
        letters = [d for d in rdj.get_outbox().dead_letters() if d["message"]["id"] == bad]
        assert len(letters) == 1 and "no such warehouse" in letters[0]["last_error"]
        inbox = (
            f"SELECT count(*) FROM {PREFIX}inbox "
            "WHERE consumer_group = 'ship' AND message_id = ANY(%s)"
        )
        assert scalar(pgm, inbox, [bad, *good]) == 9
        # Forget the group's position: every message comes again; the processed ones are
        # skipped without calling the handler, the dead-lettered one is tried again.
        pgm.execute(f"DELETE FROM {PREFIX}positions WHERE consumer_group = 'ship'")
        calls.clear()
        with consumer() as c:
            wait_for(
                "9 duplicates, 1 dead",
                lambda: c.stats()["duplicates"] == 9 and c.stats()["dead_lettered"] == 1,
            )
        assert c.stats()["processed"] == 0
        assert set(calls) == {bad}
    assert shipments(pgm, [bad, *good]) == dict.fromkeys(good, 1)


def test_consumer_refuses_an_async_handler(migrated: None) -> None:
    async def handler(message: relaybox.Message) -> None:
        pass

    with pytest.raises(TypeError, match="async"):
        rdj.Consumer("t", handler, group="g")


def manage(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-m", "django", *args, "--settings=relaybox_django_settings"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def started(proc: subprocess.Popen[str], what: str) -> None:
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert what in line, line + proc.stderr.read()


def test_the_relay_and_consumer_commands_run_and_exit_0_on_sigterm(
    migrated: None, pgm: psycopg.Connection[Any], topic: str
) -> None:
    with transaction.atomic():
        ids = rdj.enqueue_batch([{"topic": topic, "payload": {"id": i}} for i in range(5)])
    relay = manage("relaybox_relay")
    consumer = manage(
        "relaybox_consumer", "relaybox_django_handlers.ship", "--topic", topic, "--group", "cmd"
    )
    try:
        started(relay, "relay running")
        started(consumer, "relaybox consumer")
        wait_for("5 shipments", lambda: shipments(pgm, ids) == dict.fromkeys(ids, 1))
        relay.send_signal(signal.SIGTERM)
        consumer.send_signal(signal.SIGINT)
        _, relay_err = relay.communicate(timeout=30)
        _, consumer_err = consumer.communicate(timeout=30)
    finally:
        for proc in (relay, consumer):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert relay.returncode == 0, relay_err
    assert "relay stopped" in relay_err
    assert consumer.returncode == 0, consumer_err
    assert "'processed': 5" in consumer_err

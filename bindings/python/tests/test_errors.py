"""Every bad input raises the right exception, with the core's fields, and writes nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

import relaybox
from relaybox import _native


@pytest.mark.parametrize(
    ("kwargs", "error", "code"),
    [
        ({"topic": "", "payload": {}}, relaybox.ValidationError, "invalid_topic"),
        ({"topic": "a b", "payload": {}}, relaybox.ValidationError, "invalid_topic"),
        ({"topic": "t", "payload": {}, "key": ""}, relaybox.ValidationError, "invalid_message"),
        (
            {"topic": "t", "payload": {}, "headers": {"bad name": "v"}},
            relaybox.ValidationError,
            "invalid_header",
        ),
        (
            {"topic": "t", "payload": {}, "headers": {"h": "a\nb"}},
            relaybox.ValidationError,
            "invalid_header",
        ),
        ({"topic": "t", "payload": {1, 2}}, relaybox.ValidationError, "invalid_message"),
        ({"topic": "t", "payload": float("nan")}, relaybox.ValidationError, "invalid_message"),
        ({"topic": "t", "payload": b"x", "delay": -1}, relaybox.ValidationError, "invalid_message"),
        (
            {"topic": "t", "payload": b"x", "type": "a\nb"},
            relaybox.ValidationError,
            "invalid_message",
        ),
        ({"topic": "t", "payload": b"x" * 2048}, relaybox.ValidationError, "payload_too_large"),
    ],
)
def test_invalid_messages_raise_and_write_nothing(
    pg_url: str, prefix: str, kwargs: dict[str, Any], error: type[Exception], code: str
) -> None:
    with relaybox.Outbox(pg_url, migrate=True, table_prefix=prefix, max_payload_bytes=1024) as box:
        with pytest.raises(error) as info:
            with box.transaction() as tx:
                tx.enqueue(**kwargs)
        assert info.value.code == code  # type: ignore[attr-defined]
        assert info.value.retryable is False  # type: ignore[attr-defined]
        assert isinstance(info.value, ValueError)
        assert box.pending_count() == 0


def test_wrong_python_types_raise_type_error(outbox: relaybox.Outbox) -> None:
    with outbox.transaction() as tx:
        with pytest.raises(TypeError):
            tx.enqueue(42, {})  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            tx.enqueue("t", {}, headers={"h": 1})  # type: ignore[dict-item]
        with pytest.raises(TypeError):
            tx.execute("SELECT 1", "not a sequence")
        with pytest.raises(relaybox.ValidationError):
            tx.execute("SELECT $1::int", [object()])
        with pytest.raises(relaybox.ValidationError):
            tx.execute("SELECT $1::timestamptz", [dt.datetime(2025, 1, 1)])
        with pytest.raises(relaybox.ValidationError):
            tx.execute("SELECT $1::bigint", [2**70])
        tx.rollback()
    assert outbox.pending_count() == 0


def test_sql_error_is_a_store_error_and_the_transaction_is_aborted(
    outbox: relaybox.Outbox,
) -> None:
    tx = outbox.begin()
    tx.enqueue("t", b"1")
    with pytest.raises(relaybox.StoreError) as info:
        tx.execute("SELECT * FROM no_such_table")
    assert info.value.code == "database"
    with pytest.raises(relaybox.RelayboxError):
        tx.commit()
    assert outbox.pending_count() == 0


def test_bad_settings_raise_config_error(outbox: relaybox.Outbox, pg_url: str) -> None:
    with pytest.raises(relaybox.ConfigError):
        relaybox.Outbox(pg_url, partitions=0)
    with pytest.raises(relaybox.ConfigError, match="min_connections"):
        relaybox.Outbox(pg_url, max_connections=2, min_connections=3)
    with pytest.raises(relaybox.ConfigError):
        relaybox.Relay(outbox, batch_size=0).start()
    with pytest.raises(relaybox.ConfigError):
        relaybox.Consumer(outbox, "t", lambda m, tx: None, group="").start()
    with pytest.raises(relaybox.ConfigError):
        relaybox.Relay(outbox, transport="carrier-pigeon").start()
    with pytest.raises(relaybox.ValidationError):
        relaybox.Consumer(outbox, "bad topic", lambda m, tx: None, group="g").start()
    with pytest.raises(TypeError):
        relaybox.Consumer(outbox, "t", "not callable", group="g")  # type: ignore[arg-type]


def test_unreachable_database_is_a_retryable_error_without_credentials() -> None:
    url = "postgres://admin:hunter2-secret@127.0.0.1:1/none"
    with pytest.raises((relaybox.StoreError, relaybox.TimeoutError)) as info:
        relaybox.Outbox(url, connect_timeout=1)
    assert info.value.retryable is True
    assert "hunter2-secret" not in str(info.value)


def test_closed_outbox_raises_closed_error(pg_url: str, prefix: str) -> None:
    box = relaybox.Outbox(pg_url, migrate=True, table_prefix=prefix)
    box.close()
    assert box.closed
    with pytest.raises(relaybox.ClosedError):
        box.enqueue("t", b"x")


def test_unmigrated_database_raises_schema_error(pg_url: str, prefix: str) -> None:
    with relaybox.Outbox(pg_url, table_prefix=prefix) as box:
        with pytest.raises(relaybox.RelayboxError) as info:
            box.enqueue("t", b"x")
        assert info.value.code in {"schema", "database"}


def test_rust_panic_is_an_internal_error_not_a_base_exception() -> None:
    with pytest.raises(relaybox.InternalError, match="boom"):
        _native._panic_for_tests("boom")

    async def scenario() -> None:
        with pytest.raises(relaybox.InternalError, match="async boom"):
            await _native._panic_for_tests("async boom", True)

    asyncio.run(scenario())


def test_panicking_handler_of_python_is_retried(outbox: relaybox.Outbox) -> None:
    from conftest import wait_for

    def handle(message: relaybox.Message, tx: relaybox.Transaction) -> None:
        raise SystemExit("a handler must not stop the process")

    outbox.enqueue("t", b"x")
    with (
        relaybox.Relay(outbox),
        relaybox.Consumer(outbox, "t", handle, group="g", max_retries=0, retry_delay=0.01) as c,
    ):
        wait_for("dead-lettered", lambda: c.stats()["dead_lettered"] == 1)
    assert "SystemExit" in outbox.dead_letters()[0]["last_error"]

"""The `relaybox` command: consumers in a subprocess that stop cleanly on a signal,
usage errors, and the schema command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import psycopg
from conftest import wait_for

import relaybox
from relaybox import messaging

from .helpers import notes

APPS = Path(__file__).resolve().parent / "apps"
SCRIPT = Path(sys.executable).parent / "relaybox"
KAFKA_WAIT = 90.0


def app_env(prefix: str, pg_url: str, topic: str, table: str, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MESSAGE_BROKER", "KAFKA_BOOTSTRAP_SERVERS", "RABBITMQ_URL", "REDIS_URL")
    }
    env.update(
        RELAYBOX_DATABASE_URL=pg_url,
        RELAYBOX_TABLE_PREFIX=prefix,
        CLI_APP_TOPIC=topic,
        CLI_APP_TABLE=table,
        PYTHONPATH=str(APPS),
        **extra,
    )
    return env


def run(args: list[str], env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaybox.cli", *args],
        env=env,
        cwd=APPS,
        capture_output=True,
        text=True,
        timeout=120,
    )


def stop(process: subprocess.Popen[str], sig: signal.Signals) -> tuple[str, str]:
    process.send_signal(sig)
    try:
        return process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()


def test_consumer_command_over_kafka_stops_on_sigterm(
    kafka_configured: messaging.MessagingSettings,
    outbox: relaybox.Outbox,
    pg: psycopg.Connection[Any],
    pg_url: str,
    prefix: str,
    rows: str,
    topic: str,
    kafka_bootstrap: str,
) -> None:
    env = app_env(
        prefix,
        pg_url,
        topic,
        rows,
        MESSAGE_BROKER="kafka",
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "relaybox.cli", "consumer", "--app", "cli_app", "--topic", topic],
        env=env,
        cwd=APPS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        messaging.publish_event_sync("note.added", {"note": "from kafka"}, topic)
        wait_for("the note recorded", lambda: notes(pg, rows) == ["from kafka"], KAFKA_WAIT)
    finally:
        _, err = stop(process, signal.SIGTERM)
    assert process.returncode == 0, err
    assert f"consuming {topic} (cli-app)" in err
    assert err.rstrip().endswith("relaybox: stopped"), err
    assert "Traceback" not in err


def test_installed_script_on_the_database_transport_stops_on_sigint(
    configured: messaging.MessagingSettings,
    pg: psycopg.Connection[Any],
    pg_url: str,
    prefix: str,
    rows: str,
    topic: str,
) -> None:
    assert SCRIPT.exists(), f"the console script is not installed at {SCRIPT}"
    process = subprocess.Popen(
        [str(SCRIPT), "consumer", "--app", "cli_app", "--group", "cli-app"],
        env=app_env(prefix, pg_url, topic, rows, MESSAGE_BROKER="database"),
        cwd=APPS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        messaging.publish_event_sync("note.added", {"note": "one"}, topic)
        messaging.publish_event_sync("note.added", {"note": "two"}, topic)
        wait_for("both notes", lambda: sorted(notes(pg, rows)) == ["one", "two"])
    finally:
        _, err = stop(process, signal.SIGINT)
    assert process.returncode == 0, err
    assert "Traceback" not in err


def test_usage_errors_exit_2_with_one_line(pg_url: str, prefix: str, topic: str) -> None:
    env = app_env(prefix, pg_url, topic, f"{prefix}rows", MESSAGE_BROKER="database")

    missing = run(["consumer", "--app", "no_such_module_here"], env)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "relaybox: error: cannot import --app 'no_such_module_here': "
        "No module named 'no_such_module_here'"
    ]

    no_handlers = run(["consumer", "--app", "cli_app", "--topic", "nobody-listens"], env)
    assert no_handlers.returncode == 2
    assert no_handlers.stderr.strip().splitlines() == [
        "relaybox: error: no @message_handler or @consumer is registered for topic 'nobody-listens'"
    ]

    broker = run(["consumer", "--app", "cli_app"], {**env, "MESSAGE_BROKER": "redis"})
    assert broker.returncode == 2
    [line] = broker.stderr.strip().splitlines()
    assert "broker 'redis' needs redis_url" in line

    no_app = run(["consumer"], env)
    assert no_app.returncode == 2
    assert "--app" in no_app.stderr


def test_schema_command_prints_the_sql() -> None:
    result = run(["schema", "--dialect", "postgres", "--table-prefix", "app_"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip("\n") == relaybox.schema_sql("postgres", "app_", 16).rstrip("\n")
    assert "CREATE TABLE IF NOT EXISTS app_outbox" in result.stdout
    assert run(["schema", "--dialect", "oracle"]).returncode == 2


def test_one_command_has_the_core_subcommands_and_consumer(pg_url: str, prefix: str) -> None:
    helped = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr
    for command in ("migrate", "schema", "relay", "status", "dead-letters", "tail", "consumer"):
        assert f"\n  {command} " in helped.stdout, command

    env = {**os.environ, "RELAYBOX_DATABASE_URL": pg_url, "RELAYBOX_TABLE_PREFIX": prefix}
    migrated = subprocess.run(
        [SCRIPT, "migrate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert migrated.returncode == 0, migrated.stderr
    status = subprocess.run(
        [SCRIPT, "status", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["dead_letters"] == 0

    bad = subprocess.run(
        [SCRIPT, "status", "--database-url", "postgres://nobody:s3cret@127.0.0.1:1/x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith("relaybox: ") and "s3cret" not in bad.stderr


def test_the_relay_subcommand_logs_through_python_and_stops_on_sigterm(
    pg_url: str, prefix: str
) -> None:
    outbox = relaybox.Outbox(pg_url, migrate=True, table_prefix=prefix)
    outbox.enqueue("cli-relay", {"n": 1})
    env = {**os.environ, "RELAYBOX_DATABASE_URL": pg_url, "RELAYBOX_TABLE_PREFIX": prefix}
    process = subprocess.Popen(
        [SCRIPT, "relay"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for("relayed", lambda: outbox.pending_count() == 0, timeout=60)
    finally:
        _, err = stop(process, signal.SIGTERM)
        outbox.close()
    assert process.returncode == 0, err
    assert " INFO relaybox" in err

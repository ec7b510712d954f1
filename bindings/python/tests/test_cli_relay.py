"""The ``relaybox relay`` command as operators run it: a TOML file with
``[transport]`` or ``[[route]]`` tables, one process per relay, stopped with
SIGTERM. Each transport's messages are read back with that broker's own
client (confluent-kafka, pika, redis-py, boto3 on moto, SQL on Message DB),
never with relaybox.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import _required_env, wait_for

import relaybox

RELAY_SETTINGS = """
[relay]
poll_interval = "100ms"
lease_ttl = "3s"
publish_timeout = "2s"
backoff_initial = "50ms"
backoff_max = "500ms"
"""


def relaybox_command() -> str:
    """The ``relaybox`` console script of this environment."""
    found = shutil.which("relaybox", path=str(Path(sys.executable).parent))
    assert found, "the relaybox command is not installed next to this Python"
    return found


class RelayProcess:
    """A ``relaybox relay`` process on a configuration file of its own."""

    def __init__(self, tmp: Path, name: str, config: str) -> None:
        self.config = tmp / f"{name}.toml"
        self.config.write_text(config)
        self.log = tmp / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOX_")}
        self.proc = subprocess.Popen(
            [relaybox_command(), "relay", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
            env=env,
        )

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then the exit status (the process must exit by ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"relay did not exit within {timeout}s of SIGTERM: {self.output()}")

    def output(self) -> str:
        """What the relay logged."""
        return self.log.read_text()


def base_config(pg_url: str, prefix: str) -> str:
    """The database and relay settings every test's file starts with."""
    return f'database_url = "{pg_url}"\n[store]\ntable_prefix = "{prefix}"\n{RELAY_SETTINGS}'


def cli(config: Path, *args: str) -> str:
    """Runs a ``relaybox`` command on ``config``; its standard output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOX_")}
    done = subprocess.run(
        [relaybox_command(), *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def keyed(outbox: relaybox.Outbox, topic: str, n: int, marker: str) -> None:
    """Enqueues ``n`` messages on ``topic`` over 4 keys, numbered in order."""
    with outbox.transaction() as tx:
        tx.enqueue_batch(
            {"topic": topic, "payload": {"n": i, "marker": marker}, "key": f"k{i % 4}"}
            for i in range(n)
        )


def in_order_per_key(items: list[tuple[str, int]]) -> bool:
    """Whether the numbers of each key arrive in increasing order."""
    last: dict[str, int] = {}
    for key, n in items:
        if n <= last.get(key, -1):
            return False
        last[key] = n
    return True


def test_two_relays_with_disjoint_routes_share_one_outbox(
    pg_url: str, prefix: str, outbox: relaybox.Outbox, kafka_bootstrap: str, tmp_path: Path
) -> None:
    import pika  # type: ignore[import-untyped]
    from confluent_kafka import Consumer

    run = uuid.uuid4().hex[:8]
    orders, billing, audit = f"orders{run}.created", f"billing{run}.charged", f"audit{run}"
    rabbit_url = _required_env("RELAYBOX_RABBITMQ_URL")
    # RabbitMQ drops what no queue is bound to: bind every routing key first.
    rabbit = pika.BlockingConnection(pika.URLParameters(rabbit_url))
    channel = rabbit.channel()
    exchange = f"relaybox{run}"
    channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
    queue = channel.queue_declare(queue="", exclusive=True).method.queue
    channel.queue_bind(queue=queue, exchange=exchange, routing_key="#")

    base = base_config(pg_url, prefix)
    kafka_relay = RelayProcess(
        tmp_path,
        "kafka",
        base + f'\n[[route]]\ntopics = ["orders{run}.*"]\n'
        f'[route.transport.kafka]\nbootstrap_servers = "{kafka_bootstrap}"\n'
        "create_topics = true\n",
    )
    rabbit_relay = RelayProcess(
        tmp_path,
        "rabbit",
        base + f'\n[[route]]\ntopics = ["billing{run}.*"]\n'
        f'[route.transport.rabbitmq]\nurl = "{rabbit_url}"\nexchange = "{exchange}"\n',
    )
    try:
        keyed(outbox, orders, 40, run)
        keyed(outbox, billing, 24, run)
        keyed(outbox, audit, 5, run)

        consumer = Consumer(
            {
                "bootstrap.servers": kafka_bootstrap,
                "group.id": f"reader{run}",
                "auto.offset.reset": "earliest",
            }
        )
        consumer.subscribe([orders])
        from_kafka: list[tuple[str, int]] = []

        def kafka_all() -> bool:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                key, value = msg.key() or b"", msg.value() or b"{}"
                from_kafka.append((key.decode(), json.loads(value)["n"]))
            return len(from_kafka) >= 40

        wait_for("40 orders read from Kafka", kafka_all, timeout=60)
        from_rabbit: list[tuple[str, str, int]] = []

        def rabbit_all() -> bool:
            method, props, body = channel.basic_get(queue=queue, auto_ack=True)
            if method is not None:
                key = props.correlation_id or ""
                n = json.loads(body)["n"]
                from_rabbit.append((method.routing_key, str(key), n))
            return len(from_rabbit) >= 24

        wait_for("24 billing messages read from RabbitMQ", rabbit_all, timeout=60)
        # Nothing else arrives: orders never reach RabbitMQ, billing never Kafka.
        consumer.poll(1.0)
        assert len(from_kafka) == 40
        assert channel.basic_get(queue=queue, auto_ack=True)[0] is None
        assert {r[0] for r in from_rabbit} == {billing}
        topics = consumer.list_topics(timeout=10).topics
        assert billing not in topics and audit not in topics
        assert in_order_per_key(from_kafka)
        assert sorted(n for _, _, n in from_rabbit) == list(range(24))
        assert in_order_per_key([(k, n) for _, k, n in from_rabbit])
        consumer.close()

        # The unrouted topic stays pending, and status says nobody serves it.
        status = json.loads(cli(kafka_relay.config, "status", "--json"))
        backlog = {t["topic"]: t for t in status["topics"]}
        assert backlog[audit]["pending"] == 5 and backlog[audit]["served"] is False
        assert orders not in backlog and billing not in backlog
        assert "unrouted" in cli(kafka_relay.config, "status")
    finally:
        rabbit.close()
        codes = [kafka_relay.stop(), rabbit_relay.stop()]
    assert codes == [0, 0], kafka_relay.output() + rabbit_relay.output()


def test_cli_relay_reaches_redis_sns_and_message_db(
    pg_url: str, prefix: str, outbox: relaybox.Outbox, tmp_path: Path
) -> None:
    import boto3
    import redis

    run = uuid.uuid4().hex[:8]
    to_redis, to_sns, to_mdb = f"stream{run}", f"notify{run}", f"account{run}"
    endpoint = _required_env("RELAYBOX_AWS_ENDPOINT_URL")
    mdb_url = _required_env("RELAYBOX_MESSAGE_DB_URL")
    redis_url = _required_env("RELAYBOX_REDIS_URL")
    # SNS delivers to the queues subscribed when it publishes.
    session = boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    sns = session.client("sns", endpoint_url=endpoint)
    sqs = session.client("sqs", endpoint_url=endpoint)
    topic_arn = sns.create_topic(Name=to_sns)["TopicArn"]
    queue_url = sqs.create_queue(QueueName=f"reader{run}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)

    config = base_config(pg_url, prefix) + (
        f'\n[[route]]\ntopics = ["{to_redis}"]\n'
        f'transport = {{ redis = {{ url = "{redis_url}" }} }}\n'
        f'\n[[route]]\ntopics = ["{to_sns}"]\n'
        f'transport = {{ sns = {{ endpoint_url = "{endpoint}", region = "us-east-1", '
        'access_key_id = "testing", secret_access_key = "testing", '
        f'topic_arn = "{topic_arn}" }} }}\n'
        f'\n[[route]]\ntopics = ["{to_mdb}"]\n'
        f'transport = {{ message_db = {{ url = "{mdb_url}" }} }}\n'
    )
    relay = RelayProcess(tmp_path, "three", config)
    try:
        keyed(outbox, to_redis, 6, run)
        keyed(outbox, to_sns, 5, run)
        keyed(outbox, to_mdb, 4, run)

        r = redis.Redis.from_url(redis_url)
        wait_for("6 entries in the Redis stream", lambda: r.xlen(to_redis) >= 6)
        entries: list[Any] = list(r.xrange(to_redis) or [])
        assert len(entries) == 6
        assert all(run.encode() in b"".join(fields.values()) for _, fields in entries)

        received: list[str] = []

        def sqs_all() -> bool:
            reply = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
            for m in reply.get("Messages", []):
                body = json.loads(m["Body"])
                received.append(body.get("Message", m["Body"]))
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
            return len(received) >= 5

        wait_for("5 messages through SNS into SQS", sqs_all)
        assert all(run in text for text in received)

        def in_message_db() -> int:
            with psycopg.connect(mdb_url, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM message_store.messages WHERE stream_name LIKE %s",
                    (f"{to_mdb}-%",),
                ).fetchone()
                return int(row[0]) if row else 0

        wait_for("4 messages in Message DB", lambda: in_message_db() >= 4)
        assert in_message_db() == 4
    finally:
        code = relay.stop()
    assert code == 0, relay.output()


def test_sigterm_while_a_backlog_drains_loses_nothing(
    pg_url: str, prefix: str, outbox: relaybox.Outbox, pg: psycopg.Connection[Any], tmp_path: Path
) -> None:
    total = 20_000
    topic = f"drain{uuid.uuid4().hex[:8]}"
    for start in range(0, total, 2_000):
        with outbox.transaction() as tx:
            tx.enqueue_batch(
                {"topic": topic, "payload": {"n": i}, "key": f"k{i % 50}"}
                for i in range(start, start + 2_000)
            )
    config = base_config(pg_url, prefix).replace(
        "[relay]\n", "[relay]\nbatch_size = 20\nconcurrency = 1\n"
    )
    log = f'SELECT count(*), count(DISTINCT id) FROM "{prefix}log" WHERE topic = %s'

    def logged() -> tuple[int, int]:
        row = pg.execute(log, (topic,)).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    relay = RelayProcess(tmp_path, "drain", config)
    wait_for("the relay to start draining", lambda: logged()[0] > 0)
    # publish_timeout (2 s) bounds the batch in flight; the rest is start-up slack.
    assert relay.stop(timeout=10.0) == 0, relay.output()
    moved, distinct = logged()
    assert moved == distinct and 0 < moved < total, (moved, total)
    status = json.loads(cli(relay.config, "status", "--json"))
    assert status["lease_owners"] == []
    assert sum(t["pending"] for t in status["topics"]) == total - moved

    again = RelayProcess(tmp_path, "drain-again", config)
    wait_for("the backlog drained", lambda: logged()[0] >= total, timeout=120)
    assert again.stop() == 0, again.output()
    assert logged() == (total, total)

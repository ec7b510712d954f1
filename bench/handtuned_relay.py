"""A hand-tuned outbox relay: the baseline of `dev/bench kafka`.

What a user could write in an afternoon with confluent-kafka and psycopg,
done carefully: it drains a relaybox outbox table into Kafka, batch after
batch, until the table has no pending row left::

    BEGIN
    SELECT ... FROM outbox WHERE sent_at IS NULL ORDER BY seq LIMIT 1000
        FOR UPDATE SKIP LOCKED
    produce every row asynchronously (key, headers and timestamp as
        relaybox's KafkaSink writes them), then poll until every delivery
        report is in; any failed delivery ends the program
    DELETE FROM outbox WHERE id = ANY(<the batch's ids>)
    COMMIT

The producer has relaybox's KafkaSink settings (idempotence, acks=all,
linger.ms=0, ...), plus any `--prop key=value`. It prints one JSON line:
the rows delivered, the batches and its own elapsed time (from its first
statement to its last commit; the benchmark also times it from spawn to
exit).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from confluent_kafka import KafkaError, Message, Producer

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)

SETTINGS = {
    "enable.idempotence": "true",
    "acks": "all",
    "linger.ms": "0",
    "batch.num.messages": "10000",
    "message.timeout.ms": "0",
    "allow.auto.create.topics": "false",
}


def rfc3339_micros(t: datetime) -> str:
    """Formats a timestamp as relaybox's relaybox-created-at header does."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def main() -> int:
    """Drains the outbox table into Kafka; prints what it did as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True, help="PostgreSQL URL")
    parser.add_argument("--table", required=True, help="the outbox table")
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument(
        "--prop", action="append", default=[], help="producer key=value"
    )
    args = parser.parse_args()

    config: dict[str, Any] = {"bootstrap.servers": args.bootstrap, **SETTINGS}
    for prop in args.prop:
        key, _, value = prop.partition("=")
        config[key.strip()] = value.strip()
    producer = Producer(config)
    failures: list[str] = []
    reports = 0

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        nonlocal reports
        reports += 1
        if err is not None:
            failures.append(str(err))

    select = (
        "SELECT id, topic, key, type, payload, content_type, headers::text, created_at "
        f"FROM {args.table} WHERE sent_at IS NULL ORDER BY seq LIMIT %s "
        "FOR UPDATE SKIP LOCKED"
    )
    delete = f"DELETE FROM {args.table} WHERE id = ANY(%s)"
    delivered = batches = 0
    with psycopg.connect(args.dsn, autocommit=False) as conn:
        started = time.monotonic()
        while True:
            with conn.cursor() as cur:
                cur.execute(select, (args.batch,))
                rows = cur.fetchall()
                if not rows:
                    conn.commit()
                    break
                reports = 0
                for (
                    id_,
                    topic,
                    key,
                    type_,
                    payload,
                    content_type,
                    headers,
                    created_at,
                ) in rows:
                    record_headers = [
                        ("relaybox-id", str(id_)),
                        ("relaybox-type", type_),
                        ("content-type", content_type),
                        ("relaybox-created-at", rfc3339_micros(created_at)),
                    ]
                    record_headers.extend(sorted(json.loads(headers).items()))
                    timestamp = (created_at - EPOCH) // MILLISECOND
                    while True:
                        try:
                            producer.produce(
                                topic,
                                value=payload,
                                key=key,
                                headers=record_headers,
                                timestamp=timestamp,
                                on_delivery=on_delivery,
                            )
                            break
                        except BufferError:
                            producer.poll(0.01)
                producer.poll(0)
                while reports < len(rows):
                    producer.poll(0.1)
                if failures:
                    print(f"delivery failed: {failures[0]}", file=sys.stderr)
                    return 1
                cur.execute(delete, ([r[0] for r in rows],))
                if cur.rowcount != len(rows):
                    print(
                        f"deleted {cur.rowcount} of {len(rows)} rows", file=sys.stderr
                    )
                    return 1
            conn.commit()
            delivered += len(rows)
            batches += 1
        elapsed = time.monotonic() - started
    print(
        json.dumps({"delivered": delivered, "batches": batches, "elapsed_s": elapsed})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

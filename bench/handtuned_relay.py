"""A hand-tuned outbox relay: the baseline of `dev/bench kafka`.

What a careful user would write with confluent-kafka and psycopg: it drains
a relaybox outbox table into Kafka, batch after batch, until the table has
no pending row left::

    BEGIN
    SELECT ... FROM outbox WHERE sent_at IS NULL ORDER BY seq LIMIT 1000
        FOR UPDATE SKIP LOCKED
    produce every row asynchronously (key, headers and timestamp as
        relaybox's KafkaSink writes them)
    DELETE FROM outbox WHERE ctid = ANY(<the batch's row addresses>)
    flush the producer: every delivery report of the batch is in; any
        failed delivery rolls the batch back and ends the program
    COMMIT

The rows stay locked (FOR UPDATE) and their DELETE uncommitted until every
record of the batch is acknowledged, so the DELETE runs while the broker
acknowledges instead of after it. PostgreSQL formats what Python would
otherwise compute per row: the id as text, the relaybox-created-at header
(RFC 3339 in UTC with six fractional digits, as KafkaSink writes it), the
record timestamp in milliseconds, and the headers column as text only when
it is not empty (`{}`). Rows come in binary (the payload without hex
decoding). The producer has relaybox's KafkaSink settings (idempotence,
acks=all, linger.ms=0, ...), plus any `--prop key=value`, and reports
failed deliveries only (delivery.report.only.error, a client-side setting:
the records and the protocol are unchanged): one callback records them.

With `--stop-file`, an empty batch ends the program only once that file
exists (the benchmark creates it after its last concurrent enqueue). It
prints one JSON line: the rows delivered, the batches and its own
elapsed time (from its first statement to its last commit; the benchmark
also times it from spawn to exit).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import psycopg
from confluent_kafka import KafkaError, Message, Producer

SETTINGS = {
    "enable.idempotence": "true",
    "acks": "all",
    "linger.ms": "0",
    "batch.num.messages": "10000",
    "message.timeout.ms": "0",
    "allow.auto.create.topics": "false",
}

# The relaybox-created-at header: RFC 3339 in UTC, six fractional digits.
CREATED_AT = (
    """to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
)
# The record timestamp: milliseconds since the epoch, rounded down.
TIMESTAMP_MS = "floor(extract(epoch FROM created_at) * 1000)::int8"


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
    parser.add_argument(
        "--stop-file",
        help="finish at an empty batch only once this file exists (while writers "
        "still enqueue, an empty batch is a pause: the program waits 1 ms)",
    )
    args = parser.parse_args()

    failures: list[str] = []

    def on_failure(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failures.append(str(err))

    config: dict[str, Any] = {
        "bootstrap.servers": args.bootstrap,
        **SETTINGS,
        "delivery.report.only.error": True,
        "on_delivery": on_failure,
    }
    for prop in args.prop:
        key, _, value = prop.partition("=")
        config[key.strip()] = value.strip()
    producer = Producer(config)
    produce = producer.produce
    poll = producer.poll

    select = (
        f"SELECT ctid::text, topic, key, payload, id::text, type, content_type, {CREATED_AT}, "
        f"{TIMESTAMP_MS}, CASE WHEN headers = '{{}}' THEN NULL ELSE headers::text END "
        f"FROM {args.table} WHERE sent_at IS NULL ORDER BY seq LIMIT %s "
        "FOR UPDATE SKIP LOCKED"
    )
    delete = f"DELETE FROM {args.table} WHERE ctid = ANY(%s::tid[])"
    delivered = batches = 0
    with psycopg.connect(args.dsn, autocommit=False) as conn:
        started = time.monotonic()
        with conn.cursor(binary=True) as cur:
            while True:
                # Checked before the SELECT: a stop file created after the
                # writers' last commit makes an empty batch final.
                last_call = args.stop_file is None or os.path.exists(args.stop_file)
                cur.execute(select, (args.batch,))
                rows = cur.fetchall()
                if not rows:
                    conn.commit()
                    if last_call:
                        break
                    time.sleep(0.001)
                    continue
                for (
                    _ctid,
                    topic,
                    key,
                    payload,
                    id_,
                    type_,
                    content_type,
                    created_at,
                    timestamp,
                    headers,
                ) in rows:
                    record_headers = [
                        ("relaybox-id", id_),
                        ("relaybox-type", type_),
                        ("content-type", content_type),
                        ("relaybox-created-at", created_at),
                    ]
                    if headers is not None:
                        record_headers.extend(sorted(json.loads(headers).items()))
                    while True:
                        try:
                            produce(
                                topic,
                                payload,
                                key,
                                timestamp=timestamp,
                                headers=record_headers,
                            )
                            break
                        except BufferError:
                            poll(0.01)
                poll(0)
                # One array literal of the batch's row addresses, '{"(0,1)",...}'.
                ctids = '{"' + '","'.join([r[0] for r in rows]) + '"}'
                cur.execute(delete, (ctids,))
                deleted = cur.rowcount
                producer.flush()
                if failures:
                    conn.rollback()
                    print(f"delivery failed: {failures[0]}", file=sys.stderr)
                    return 1
                if deleted != len(rows):
                    conn.rollback()
                    print(f"deleted {deleted} of {len(rows)} rows", file=sys.stderr)
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

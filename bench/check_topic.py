"""The third-party reader of `dev/bench kafka`: checks a whole topic.

Reads every partition of the topic from its first offset to the high
watermark it had when the reader started, with confluent-kafka (no consumer
group: partitions assigned by hand, nothing committed), and checks the
benchmark's records: the JSON payload's `order_id` is the message's
sequence number `i` (0..expected-1), its key `customer-<i % keys>`:

- every id 0..expected-1 present, none twice (with `--allow-duplicates`,
  redeliveries after a killed relay are counted but allowed), none unknown;
- each record's key matches its id, and every key lives in one partition;
- per key, ids in the order they were enqueued (increasing; with
  `--allow-duplicates`, ids seen before are skipped);
- the relaybox headers (relaybox-id, relaybox-type) are present.

Prints one JSON line with the counts and `ok`; exits 2 if the topic could
not be read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections import Counter

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition


def main() -> int:
    """Reads the topic and prints the verdict as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--expected", type=int, required=True)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--allow-duplicates", action="store_true")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"relaybox-bench-check-{uuid.uuid4()}",
            "enable.auto.commit": "false",
            "auto.offset.reset": "earliest",
            # Committed records only: a topic written in Kafka transactions
            # (exactly-once publishing) may hold aborted ones. Its last
            # offsets may be transaction markers, never delivered: the
            # end-of-partition event says that a partition is read through.
            "isolation.level": "read_committed",
            "enable.partition.eof": "true",
        }
    )
    topic = args.topic
    meta = consumer.list_topics(topic, timeout=10)
    described = meta.topics.get(topic)
    if described is None or described.error is not None or not described.partitions:
        print(
            f"topic {topic} not found: {described and described.error}", file=sys.stderr
        )
        return 2
    partitions = sorted(described.partitions)
    ends = {}
    for p in partitions:
        _low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, p), timeout=10
        )
        ends[p] = high
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    left = {p for p in partitions if ends[p] > 0}

    seen: Counter[int] = Counter()
    last: dict[str, int] = {}
    partition_of: dict[str, int] = {}
    records = unknown = key_errors = header_errors = order_violations = split_keys = 0
    deadline = time.monotonic() + args.timeout
    while left:
        if time.monotonic() > deadline:
            print(
                f"timed out reading {topic}: partitions {sorted(left)} unread",
                file=sys.stderr,
            )
            return 2
        for msg in consumer.consume(num_messages=10000, timeout=1.0):
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at, end = msg.offset(), ends.get(msg.partition(), 0)
                    if at is not None and at >= end:
                        left.discard(msg.partition())
                    continue
                print(f"reading {topic}: {msg.error()}", file=sys.stderr)
                return 2
            p, offset, value = msg.partition(), msg.offset(), msg.value()
            if p is None or offset is None or value is None:
                print(
                    f"reading {topic}: a record without partition, offset or value",
                    file=sys.stderr,
                )
                return 2
            if offset >= ends[p]:
                continue
            if offset + 1 >= ends[p]:
                left.discard(p)
            records += 1
            i = json.loads(value)["order_id"]
            key = (msg.key() or b"").decode()
            headers = dict(msg.headers() or [])
            if (
                b"OrderPlaced" != headers.get("relaybox-type")
                or "relaybox-id" not in headers
            ):
                header_errors += 1
            if not isinstance(i, int) or not 0 <= i < args.expected:
                unknown += 1
                continue
            if key != f"customer-{i % args.keys:04}":
                key_errors += 1
            if partition_of.setdefault(key, p) != p:
                split_keys += 1
            seen[i] += 1
            if seen[i] > 1 and args.allow_duplicates:
                continue
            if i <= last.get(key, -1):
                order_violations += 1
            last[key] = max(i, last.get(key, -1))
    consumer.close()

    missing = args.expected - len(seen)
    duplicates = sum(n - 1 for n in seen.values())
    ok = (
        missing == 0
        and unknown == 0
        and key_errors == 0
        and header_errors == 0
        and split_keys == 0
        and order_violations == 0
        and (duplicates == 0 or args.allow_duplicates)
    )
    verdict = {
        "topic": topic,
        "records": records,
        "distinct": len(seen),
        "missing": missing,
        "duplicates": duplicates,
        "unknown": unknown,
        "key_errors": key_errors,
        "header_errors": header_errors,
        "split_keys": split_keys,
        "order_violations": order_violations,
        "keys": len(last),
        "ok": ok,
    }
    print(json.dumps(verdict))
    return 0


if __name__ == "__main__":
    sys.exit(main())

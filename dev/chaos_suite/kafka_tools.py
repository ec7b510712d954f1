"""The independent side: Kafka topics created and read with confluent-kafka, not with relaybox.

Topics are created here (not by the relay) with ``message.timestamp.type =
LogAppendTime``, so each record's timestamp is the moment the broker
appended it: the checks time recovery from those. The reader assigns every
partition from its first offset to the high watermark of when it started and
returns each record's id (header ``relaybox-id``), key, sequence number
(``"s"`` in the JSON payload) and append time.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Optional

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

# librdkafka's own lines (connection refused while the broker is down, ...)
# go to the suite's log file, not between the result lines.
LOG = logging.getLogger("chaos.librdkafka")


@dataclass(frozen=True)
class Record:
    """One Kafka record as the checks need it."""

    partition: int
    offset: int
    key: Optional[str]
    id: Optional[str]
    seq: Optional[int]
    appended: float  # broker append time, Unix seconds


def _admin(bootstrap: str) -> AdminClient:
    settings: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": LOG}
    return AdminClient(settings)


def create_topic(
    bootstrap: str, topic: str, partitions: int, config: Optional[dict[str, str]] = None
) -> None:
    """Create ``topic`` (LogAppendTime plus ``config``); wait until its partitions have leaders."""
    admin = _admin(bootstrap)
    settings = {"message.timestamp.type": "LogAppendTime", **(config or {})}
    new = NewTopic(topic, num_partitions=partitions, replication_factor=1, config=settings)
    for future in admin.create_topics([new], operation_timeout=30).values():
        future.result(timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        meta = admin.list_topics(topic, timeout=10).topics.get(topic)
        if meta and meta.error is None and len(meta.partitions) == partitions:
            if all(p.leader >= 0 for p in meta.partitions.values()):
                return
        time.sleep(0.2)
    raise RuntimeError(f"topic {topic} has no leaders after 60 s")


def delete_topics(bootstrap: str, prefix: str) -> int:
    """Delete every topic whose name starts with ``prefix``; return how many (best effort)."""
    admin = _admin(bootstrap)
    names = [t for t in admin.list_topics(timeout=20).topics if t.startswith(prefix)]
    if names:
        for future in admin.delete_topics(names, operation_timeout=30).values():
            try:
                future.result(timeout=60)
            except KafkaException:
                pass
    return len(names)


def topic_exists(bootstrap: str, topic: str) -> bool:
    """Whether ``topic`` exists."""
    admin = _admin(bootstrap)
    # All topics: asking for this one by name would create it (auto.create.topics.enable).
    meta = admin.list_topics(timeout=10).topics.get(topic)
    return meta is not None and meta.error is None and len(meta.partitions) > 0


def _text(value: object) -> Optional[str]:
    if isinstance(value, bytes):
        return value.decode()
    return None if value is None else str(value)


def _parse(message: Message, partition: int, offset: int) -> Record:
    headers = dict(message.headers() or [])
    seq: Optional[int] = None
    try:
        seq = int(json.loads(message.value() or b"")["s"])
    except (ValueError, KeyError, TypeError):
        pass
    return Record(
        partition=partition,
        offset=offset,
        key=_text(message.key()),
        id=_text(headers.get("relaybox-id")),
        seq=seq,
        appended=message.timestamp()[1] / 1000.0,
    )


def _watermarks(consumer: Consumer, partition: TopicPartition) -> tuple[int, int]:
    """The partition's low and high watermarks, retried while its leader is being elected."""
    deadline = time.monotonic() + 30
    while True:
        try:
            low, high = consumer.get_watermark_offsets(partition, timeout=10)
            return low, high
        except KafkaException as error:
            if time.monotonic() > deadline or not error.args[0].retriable():
                raise
            time.sleep(0.5)


def read_topic(bootstrap: str, topic: str, timeout: float = 120.0) -> list[Record]:
    """Every committed record of ``topic`` up to its high watermarks, by partition and offset.

    The reader reads committed records only (``read_committed``): records of
    Kafka transactions that were aborted, or are still open, are not read.
    A partition is read to its end when the reader reaches its high
    watermark (the last offsets may be transaction markers, which are never
    delivered, so the end-of-partition event says so too).
    """
    settings: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "logger": LOG,
        "isolation.level": "read_committed",
        "group.id": f"chaos-reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
    }
    consumer = Consumer(settings)
    try:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        ends: dict[int, int] = {}
        assignment = []
        for partition in meta.partitions:
            low, high = _watermarks(consumer, TopicPartition(topic, partition))
            if high > low:
                ends[partition] = high
                assignment.append(TopicPartition(topic, partition, low))
        consumer.assign(assignment)
        records: list[Record] = []
        deadline = time.monotonic() + timeout
        while ends:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"reading {topic}: partitions {sorted(ends)} not read to the end"
                )
            message = consumer.poll(1.0)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(error)
                eof_partition, eof_offset = message.partition(), message.offset()
                if eof_partition in ends and eof_offset is not None:
                    if eof_offset >= ends[eof_partition]:
                        del ends[eof_partition]
                continue
            partition, offset = message.partition(), message.offset()
            if partition is None or offset is None or partition not in ends:
                continue
            if offset < ends[partition]:
                records.append(_parse(message, partition, offset))
            if offset >= ends[partition] - 1:
                del ends[partition]
        records.sort(key=lambda r: (r.partition, r.offset))
        return records
    finally:
        consumer.close()

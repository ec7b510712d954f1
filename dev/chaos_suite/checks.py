"""The verdict: what Kafka holds against what was committed, and the per-scenario result line.

``analyse`` compares the records the independent reader found with the
commit log and the dead letters:

- missing: committed (logged ``ok``) but neither in Kafka nor dead-lettered;
- duplicates: records beyond the first of each id;
- order violations: per key, in partition/offset order, a record seen for
  the first time whose sequence number is below one already seen (copies
  of a record already seen are duplicates, not order violations);
- unexpected: ids in Kafka that no producer logged at all (not even as an
  uncertain commit): a message from a transaction that did not commit.

The recovery helpers work on the broker's append times (the suite's topics
use LogAppendTime).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Optional

from committed import CommitLog
from kafka_tools import Record


@dataclass
class Delivery:
    """What the topic holds against the commit log."""

    committed: int
    delivered: int
    missing: list[str]
    duplicates: int
    duplicated_ids: int
    order_violations: list[str]
    unexpected: int
    dead_lettered: int
    first_append: dict[str, float]
    appends: list[float]
    duplicate_appends: list[float]


def analyse(log: CommitLog, records: list[Record], dead: set[str]) -> Delivery:
    """Compare the records read from Kafka with the commit log and the dead-lettered ids."""
    first_append: dict[str, float] = {}
    copies: dict[str, int] = {}
    duplicate_appends: list[float] = []
    highest: dict[str, int] = {}
    partition_of: dict[str, int] = {}
    violations: list[str] = []
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        if record.id is None:
            continue
        copies[record.id] = copies.get(record.id, 0) + 1
        if copies[record.id] > 1:
            duplicate_appends.append(record.appended)
            continue
        first_append[record.id] = record.appended
        if record.key is None or record.seq is None:
            continue
        if partition_of.setdefault(record.key, record.partition) != record.partition:
            violations.append(
                f"{record.key} in partitions {partition_of[record.key]} and {record.partition}"
            )
        if record.seq < highest.get(record.key, 0):
            violations.append(
                f"{record.key} #{record.seq} after #{highest[record.key]} (offset {record.offset})"
            )
        highest[record.key] = max(highest.get(record.key, 0), record.seq)
    known = log.ok.keys() | log.uncertain.keys()
    return Delivery(
        committed=len(log.ok),
        delivered=len(first_append),
        missing=sorted(set(log.ok) - first_append.keys() - dead),
        duplicates=sum(n - 1 for n in copies.values()),
        duplicated_ids=sum(1 for n in copies.values() if n > 1),
        order_violations=violations,
        unexpected=len(first_append.keys() - known),
        dead_lettered=len(dead & known),
        first_append=first_append,
        appends=sorted(r.appended for r in records),
        duplicate_appends=sorted(duplicate_appends),
    )


def first_append_after(delivery: Delivery, moment: float) -> Optional[float]:
    """Seconds from ``moment`` to the first record appended after it."""
    index = bisect.bisect_right(delivery.appends, moment)
    return delivery.appends[index] - moment if index < len(delivery.appends) else None


def first_delivery_of_commits_after(
    delivery: Delivery, log: CommitLog, moment: float
) -> Optional[float]:
    """Seconds from ``moment`` until a message committed after it first reached Kafka."""
    times = [
        delivery.first_append[c.id]
        for c in log.ok.values()
        if c.at > moment and c.id in delivery.first_append
    ]
    return min(times) - moment if times else None


def drained_after(delivery: Delivery, log: CommitLog, moment: float) -> Optional[float]:
    """Seconds from ``moment`` until every message committed by then was in Kafka (0 if before)."""
    times = [delivery.first_append.get(c.id) for c in log.committed_by(moment)]
    known = [t for t in times if t is not None]
    if not known:
        return None
    return max(0.0, max(known) - moment)


def longest_stall(times: list[float], start: float, end: float) -> float:
    """The longest interval between ``start`` and ``end`` without any of ``times``."""
    inside = [t for t in sorted(times) if start <= t <= end]
    edges = [start, *inside, end]
    return max((b - a for a, b in zip(edges, edges[1:])), default=0.0)


def seconds(value: Optional[float]) -> str:
    """A duration for the result line."""
    return "n/a" if value is None else f"{value:.1f}s"


@dataclass
class Outcome:
    """One scenario's figures and verdict."""

    name: str
    committed: int = 0
    delivered: int = 0
    missing: int = 0
    duplicates: int = 0
    allowed_duplicates: int = 0
    order_violations: int = 0
    dead_lettered: int = 0
    recovery: str = ""
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @classmethod
    def from_delivery(cls, name: str, delivery: Delivery, allowed_duplicates: int) -> Outcome:
        """The figures of ``delivery``, failing on what the module docstring lists."""
        outcome = cls(
            name=name,
            committed=delivery.committed,
            delivered=delivery.delivered,
            missing=len(delivery.missing),
            duplicates=delivery.duplicates,
            allowed_duplicates=allowed_duplicates,
            order_violations=len(delivery.order_violations),
            dead_lettered=delivery.dead_lettered,
        )
        if delivery.missing:
            outcome.failures.append(f"missing, e.g. {', '.join(delivery.missing[:3])}")
        if delivery.duplicates > allowed_duplicates:
            outcome.failures.append(
                f"{delivery.duplicates} duplicate records of {delivery.duplicated_ids} ids"
                f" (allowed {allowed_duplicates})"
            )
        if delivery.order_violations:
            outcome.failures.append(f"order: {'; '.join(delivery.order_violations[:3])}")
        if delivery.unexpected:
            outcome.failures.append(f"{delivery.unexpected} ids in Kafka that were never committed")
        return outcome

    @property
    def passed(self) -> bool:
        """Whether nothing failed."""
        return not self.failures

    def line(self) -> str:
        """The scenario's result line."""
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{verdict} {self.name:<15} committed {self.committed:>6}"
            f"  delivered {self.delivered:>6}"
            f"  missing {self.missing}  duplicates {self.duplicates}"
            f" (allowed {self.allowed_duplicates})  order violations {self.order_violations}"
            f"  dead-lettered {self.dead_lettered}  recovery: {self.recovery}"
            f"  [{self.elapsed:.0f}s]"
        )

    def details(self) -> list[str]:
        """Indented note and failure lines printed under the result line."""
        return [f"    note: {n}" for n in self.notes] + [f"    FAIL: {f}" for f in self.failures]

"""The fault scenarios, one function each: run the workload, inject the fault, judge the result.

Every scenario gets fresh outbox tables and a fresh topic (harness.Stage),
producers writing 50 keys with per-key sequence numbers, relay processes on
the Kafka transport, and ends with the independent reader's verdict
(checks.analyse). Duplicate allowances:

- relay-kill and pg-restart: a relay that dies (or whose database dies)
  after handing a batch to Kafka but before recording it as delivered
  leaves those rows in the outbox, and they are sent again. A relay loop has
  at most ``batches_in_flight`` (2, the default) batches of ``batch_size``
  (100 here) handed over and not yet recorded, and a relay runs
  ``concurrency`` (2, the default) loops: at most 400 rows per relay per
  fault. So: kills × 400, and restarts × relays × 400.
- relay-kill-exactly-once: the same kills with exactly-once publishing
  (``transactional_id``): 0. A killed relay's open Kafka transaction is
  aborted when another relay takes its partition over, and what it
  committed is recorded in the same transaction, so the next holder does
  not publish it again.
- everything else: 0. A broker outage costs no duplicates (docs/kafka.md),
  the consumer scenario checks the handler's effects exactly once, and a
  poison message must neither be duplicated nor let its key's later
  messages overtake it.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable, Optional

import kafka_tools
import services
from checks import (
    Delivery,
    Outcome,
    drained_after,
    first_append_after,
    first_delivery_of_commits_after,
    longest_stall,
    seconds,
)
from committed import CommitLog
from harness import KEYS, Context, Stage, dead_letter_id, dead_letter_time, stage
from profiles import Profile

RELAY_BATCH = 100
RELAY_LOOPS = 2  # RelayConfig.concurrency default
BATCHES_IN_FLIGHT = 2  # RelayConfig.batches_in_flight default
IN_FLIGHT_PER_RELAY = RELAY_BATCH * RELAY_LOOPS * BATCHES_IN_FLIGHT
POISON_KEY = "key-07"
# The scenario measures how soon the poison's key resumes without it, so the
# relay does not park the key behind its dead letter.
POISON_RELAY = {"max_attempts": 5, "backoff_initial": 0.2, "backoff_max": 1.0, "park_keys": False}


def sleep_until(moment: float) -> None:
    """Sleep until the Unix time ``moment``."""
    time.sleep(max(0.0, moment - time.time()))


def max_latency(delivery: Delivery, log: CommitLog, since: float) -> Optional[float]:
    """The longest commit-to-Kafka time of the messages committed after ``since``."""
    waits = [
        delivery.first_append[c.id] - c.at
        for c in log.ok.values()
        if c.at >= since and c.id in delivery.first_append
    ]
    return max(waits) if waits else None


def note_crashes(outcome: Outcome, bench: Stage) -> None:
    """Note the workers that exited by themselves with an error."""
    outcome.notes.extend(f"worker crashed: {c}" for c in bench.crashed())


def note_dead_letters(outcome: Outcome, dead: list[dict[str, Any]], expected: set[str]) -> None:
    """Note dead letters other than the ``expected`` ids."""
    others = [d for d in dead if dead_letter_id(d) not in expected]
    if others:
        error = str(others[0].get("last_error", ""))[:160]
        outcome.notes.append(f"{len(others)} unexpected dead letters, e.g.: {error}")


def relay_kill(ctx: Context, profile: Profile) -> Outcome:
    """Three relays drain a backlog under a steady producer; one is SIGKILLed every few seconds."""
    return _relay_kill(ctx, profile, "relay-kill", "kill", None)


def relay_kill_exactly_once(ctx: Context, profile: Profile) -> Outcome:
    """relay-kill with exactly-once publishing (Kafka transactions): no duplicates at all."""
    kafka = {"transactional_id": f"chaos-{ctx.run_id}-eos"}
    return _relay_kill(ctx, profile, "relay-kill-exactly-once", "keos", kafka)


def _relay_kill(
    ctx: Context, profile: Profile, name: str, tag: str, kafka: Optional[dict[str, Any]]
) -> Outcome:
    settings = {"batch_size": RELAY_BATCH}
    with stage(ctx, name, tag) as bench:
        bench.start_producers(profile.rate, burst=profile.kill_backlog)
        bench.wait_pending(profile.kill_backlog * 8, timeout=120)
        relays = [bench.start_relay(settings, kafka) for _ in range(3)]
        bench.wait_started(relays)
        started = time.time()
        rng = random.Random(21)
        kills = 0
        last_restart = started
        due = started + 1.0
        while due < started + profile.kill_duration:
            sleep_until(due)
            victim = rng.randrange(len(relays))
            relays[victim].kill()
            kills += 1
            time.sleep(0.5)
            relays[victim] = bench.start_relay(settings, kafka)
            last_restart = time.time()
            due += profile.kill_every
        sleep_until(started + profile.kill_duration)
        bench.stop_producers()
        bench.wait_drained(profile.drain_timeout)
        log, delivery, dead = bench.collect()
        allowed = 0 if kafka else kills * IN_FLIGHT_PER_RELAY
        outcome = Outcome.from_delivery(name, delivery, allowed)
        note_crashes(outcome, bench)
    all_in = max(delivery.first_append.values(), default=last_restart)
    outcome.recovery = (
        f"drained {seconds(all_in - last_restart)} after the last restart;"
        f" longest commit-to-Kafka {seconds(max_latency(delivery, log, started))}"
    )
    if kafka:
        allowance = "allowed duplicates = 0 (exactly once; read_committed reader)"
    else:
        allowance = (
            f"allowed duplicates = kills x {IN_FLIGHT_PER_RELAY} (batch {RELAY_BATCH}"
            f" x {BATCHES_IN_FLIGHT} batches in flight x {RELAY_LOOPS} loops)"
        )
    outcome.notes.append(
        f"{kills} kills, backlog {profile.kill_backlog * 8} + {profile.rate:.0f} msg/s; {allowance}"
    )
    note_dead_letters(outcome, dead, set())
    return outcome


def broker_outage(ctx: Context, profile: Profile) -> Outcome:
    """Kafka stopped and started again under a steady producer; two relays, default settings."""
    with stage(ctx, "broker-outage", "outage") as bench:
        relays = [bench.start_relay() for _ in range(2)]
        bench.wait_started(relays)
        bench.start_producers(profile.outage_rate)
        time.sleep(profile.outage_before)
        down = time.time()
        services.kafka_stop()
        stopped = time.time()
        sleep_until(stopped + profile.outage)
        starting = time.time()
        services.kafka_start()
        back = time.time()
        time.sleep(profile.outage_after)
        bench.stop_producers()
        bench.wait_drained(profile.drain_timeout)
        log, delivery, dead = bench.collect()
        outcome = Outcome.from_delivery("broker-outage", delivery, 0)
        note_crashes(outcome, bench)
    during = [c for c in log.ok.values() if down <= c.at <= back]
    outcome.recovery = (
        f"first record {seconds(first_append_after(delivery, back))} after the broker was back,"
        f" backlog in Kafka {seconds(drained_after(delivery, log, back))} after"
    )
    outcome.notes.append(
        f"broker unavailable {back - down:.1f}s (stopping {stopped - down:.1f}s, stopped"
        f" {starting - stopped:.1f}s, starting {back - starting:.1f}s)"
        f" at {profile.outage_rate:.0f} msg/s;"
        f" {len(during)} messages committed meanwhile"
    )
    if delivery.duplicate_appends:
        first, last = delivery.duplicate_appends[0], delivery.duplicate_appends[-1]
        outcome.notes.append(
            f"duplicates appended from {first - back:+.1f}s to {last - back:+.1f}s"
            " relative to the broker's return"
        )
    note_dead_letters(outcome, dead, set())
    return outcome


def pg_restart(ctx: Context, profile: Profile) -> Outcome:
    """PostgreSQL crash-restarted (``pg_ctl restart -m immediate``) under load; two relays."""
    settings = {"batch_size": RELAY_BATCH}
    with stage(ctx, "pg-restart", "pgrs") as bench:
        relays = [bench.start_relay(settings) for _ in range(2)]
        bench.wait_started(relays)
        bench.start_producers(profile.rate)
        started = time.time()
        restarts: list[tuple[float, float]] = []
        for at in profile.pg_restarts:
            sleep_until(started + at)
            crashed = time.time()
            services.pg_restart_immediate()
            restarts.append((crashed, time.time()))
        sleep_until(started + profile.pg_duration)
        bench.stop_producers()
        bench.wait_drained(profile.drain_timeout)
        log, delivery, dead = bench.collect()
        allowed = len(restarts) * len(relays) * IN_FLIGHT_PER_RELAY
        outcome = Outcome.from_delivery("pg-restart", delivery, allowed)
        note_crashes(outcome, bench)
    parts = []
    for crashed, back in restarts:
        new = first_delivery_of_commits_after(delivery, log, back)
        old = drained_after(delivery, log, crashed)
        old_after_back = None if old is None else max(0.0, crashed + old - back)
        parts.append(
            f"down {back - crashed:.1f}s, first new commit in Kafka {seconds(new)} after,"
            f" earlier commits {seconds(old_after_back)} after"
        )
    outcome.recovery = "; ".join(parts)
    outcome.notes.append(
        f"{len(restarts)} restarts at {profile.rate:.0f} msg/s, {len(log.uncertain)} commits"
        f" uncertain (error at commit); allowed duplicates = restarts x 2 relays"
        f" x {IN_FLIGHT_PER_RELAY}"
    )
    note_dead_letters(outcome, dead, set())
    return outcome


def consumer_kill(ctx: Context, profile: Profile) -> Outcome:
    """Two relaybox consumers (one group) handle the topic; one is SIGKILLed every few seconds.

    The handler's table must hold every message's effect exactly once, per
    key in order; the figures of the line are the handler's (delivered =
    distinct ids handled), the topic's own are checked too.
    """
    with stage(ctx, "consumer-kill", "cons") as bench:
        table = f"{bench.prefix}effects"
        bench.execute(
            f"CREATE TABLE {table} (n bigserial PRIMARY KEY, id text NOT NULL, key text,"
            " seq integer, consumer text, at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        group = f"chaos-{ctx.run_id}-group"
        relay = bench.start_relay()
        consumers = [
            bench.start_consumer(group, table, profile.consumer_properties) for _ in range(2)
        ]
        bench.wait_started([relay, *consumers])
        bench.start_producers(profile.rate)
        started = time.time()
        rng = random.Random(4)
        kills = 0
        last_restart = started
        due = started + profile.consumer_kill_every / 2
        while due < started + profile.consumer_duration:
            sleep_until(due)
            victim = rng.randrange(len(consumers))
            consumers[victim].kill()
            kills += 1
            time.sleep(0.5)
            consumers[victim] = bench.start_consumer(group, table, profile.consumer_properties)
            last_restart = time.time()
            due += profile.consumer_kill_every
        sleep_until(started + profile.consumer_duration)
        bench.stop_producers()
        bench.wait_drained(profile.drain_timeout)
        log, delivery, dead = bench.collect()
        expected = set(delivery.first_append)
        count_sql = f"SELECT count(DISTINCT id) AS n FROM {table}"
        deadline = time.monotonic() + profile.drain_timeout
        while bench.query(count_sql)[0]["n"] < len(expected) and time.monotonic() < deadline:
            time.sleep(0.5)
        rows = bench.query(
            f"SELECT id, key, seq, extract(epoch FROM at)::float8 AS at FROM {table} ORDER BY n"
        )
        crashes = bench.crashed()
    dlq = f"{bench.topic}.dlq"
    consumer_dead = set()
    if kafka_tools.topic_exists(ctx.bootstrap, dlq):
        consumer_dead = {r.id for r in kafka_tools.read_topic(ctx.bootstrap, dlq) if r.id}
    relay_dead = {dead_letter_id(d) for d in dead}
    outcome = _effects_outcome(rows, log, delivery, consumer_dead, relay_dead)
    outcome.notes.extend(f"worker crashed: {c}" for c in crashes)
    topic = Outcome.from_delivery("topic", delivery, 0)
    outcome.failures.extend(f"topic: {f}" for f in topic.failures)
    handled_at = [float(r["at"]) for r in rows]
    complete = max(handled_at, default=last_restart)
    outcome.recovery = (
        f"all handled {seconds(complete - last_restart)} after the last restart;"
        f" longest pause in handling {seconds(longest_stall(handled_at, started, complete))}"
    )
    settings = profile.consumer_properties or "relaybox's defaults"
    outcome.notes.append(
        f"{kills} kills at {profile.rate:.0f} msg/s; consumer properties: {settings};"
        f" topic: {delivery.delivered} ids, {delivery.duplicates} duplicates"
    )
    note_dead_letters(outcome, dead, set())
    return outcome


def _effects_outcome(
    rows: list[dict[str, Any]],
    log: CommitLog,
    delivery: Delivery,
    consumer_dead: set[str],
    relay_dead: set[str],
) -> Outcome:
    """The handler table's figures: each message's effect once, per key in order.

    Messages dead-lettered by the consumer (its DLQ topic) or by the relay
    (never in Kafka) are not missing.
    """
    seen: dict[str, int] = {}
    highest: dict[str, int] = {}
    violations: list[str] = []
    for row in rows:
        mid = str(row["id"])
        seen[mid] = seen.get(mid, 0) + 1
        if seen[mid] > 1:
            continue
        key, seq = str(row["key"]), int(row["seq"])
        if seq < highest.get(key, 0):
            violations.append(f"{key} #{seq} handled after #{highest[key]}")
        highest[key] = max(highest.get(key, 0), seq)
    duplicates = sum(n - 1 for n in seen.values())
    missing = sorted(set(log.ok) - seen.keys() - consumer_dead - relay_dead)
    outcome = Outcome(
        name="consumer-kill",
        committed=len(log.ok),
        delivered=len(seen),
        missing=len(missing),
        duplicates=duplicates,
        allowed_duplicates=0,
        order_violations=len(violations),
        dead_lettered=len(consumer_dead) + len(relay_dead & log.ok.keys()),
    )
    if missing:
        outcome.failures.append(f"{len(missing)} committed messages never handled")
    if duplicates:
        outcome.failures.append(f"{duplicates} effects beyond the first (exactly once broken)")
    if violations:
        outcome.failures.append(f"handling order: {'; '.join(violations[:3])}")
    if delivery.delivered != len(seen.keys() & set(delivery.first_append)):
        outcome.notes.append("some records in Kafka were never handled")
    return outcome


def _poison(
    ctx: Context,
    profile: Profile,
    name: str,
    tag: str,
    size: int,
    topic_config: Optional[dict[str, str]],
) -> Outcome:
    """One key's stream with a message in its middle that can never be delivered."""
    per_key = profile.poison_rate / KEYS * profile.poison_duration
    poison_seq = max(2, int(per_key / 2))
    spec = f"{POISON_KEY}:{poison_seq}:{size}"
    with stage(ctx, name, tag, topic_config) as bench:
        relay = bench.start_relay(POISON_RELAY)
        bench.wait_started([relay])
        bench.start_producers(profile.poison_rate, poison=(spec,), processes=1)
        time.sleep(profile.poison_duration)
        bench.stop_producers()
        bench.wait_drained(profile.drain_timeout)
        log, delivery, dead = bench.collect()
        outcome = Outcome.from_delivery(name, delivery, 0)
        note_crashes(outcome, bench)
    poison = log.find(POISON_KEY, poison_seq)
    if poison is None:
        outcome.failures.append("the poison message was not committed")
        return outcome
    letter = next((d for d in dead if dead_letter_id(d) == poison.id), None)
    note_dead_letters(outcome, dead, {poison.id})
    if poison.id in delivery.first_append:
        outcome.notes.append("the poison message reached Kafka")
    if letter is None:
        outcome.failures.append("the poison message is not in dead letters")
        return outcome
    dead_at = dead_letter_time(letter)
    later = [
        c for c in log.ok.values() if c.key == POISON_KEY and c.seq > poison_seq
    ]  # its key's later messages
    overtook = [c for c in later if delivery.first_append.get(c.id, dead_at) + 0.001 <= dead_at]
    if overtook:
        outcome.order_violations += len(overtook)
        outcome.failures.append(
            f"{len(overtook)} later messages of {POISON_KEY} reached Kafka before the poison"
            " was dead-lettered"
        )
    resumed = [delivery.first_append[c.id] for c in later if c.id in delivery.first_append]
    resumed_after = min(resumed) - dead_at if resumed else None
    outcome.recovery = (
        f"dead-lettered {seconds(max(0.0, dead_at - poison.at))} after its commit"
        f" ({letter.get('attempts')} attempts), {POISON_KEY} resumed {seconds(resumed_after)} after"
    )
    outcome.notes.append(
        f"{size:,}-byte payload as #{poison_seq} of {POISON_KEY} ({len(later)} later messages);"
        f" error: {str(letter.get('last_error', ''))[:240]}"
    )
    return outcome


def poison_client(ctx: Context, profile: Profile) -> Outcome:
    """A 1,000,100-byte payload: under relaybox's 1 MiB, over librdkafka's message.max.bytes."""
    return _poison(ctx, profile, "poison-client", "pcli", 1_000_100, None)


def poison_broker(ctx: Context, profile: Profile) -> Outcome:
    """A 300,000-byte payload on a topic with max.message.bytes 200,000: the broker refuses it."""
    return _poison(ctx, profile, "poison-broker", "pbrk", 300_000, {"max.message.bytes": "200000"})


SCENARIOS: dict[str, Callable[[Context, Profile], Outcome]] = {
    "relay-kill": relay_kill,
    "relay-kill-exactly-once": relay_kill_exactly_once,
    "broker-outage": broker_outage,
    "pg-restart": pg_restart,
    "consumer-kill": consumer_kill,
    "poison-client": poison_client,
    "poison-broker": poison_broker,
}

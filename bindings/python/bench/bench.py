"""Python binding benchmark: enqueue from Python next to the same in Rust.

Also measures consumer handler throughput.

Run with ``dev/bench python`` (release build). Prints figures; asserts nothing.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from typing import Any

import psycopg

import relaybox
from relaybox import _native

PAYLOAD = b"x" * 256
TASKS = 4


def python_enqueue(box: relaybox.Outbox, total: int, per_tx: int) -> float:
    """Enqueue ``total`` messages from Python threads; return the seconds taken."""
    per_thread = total // TASKS

    def work(thread: int) -> None:
        written = 0
        while written < per_thread:
            n = min(per_tx, per_thread - written)
            with box.transaction() as tx:
                if n == 1:
                    tx.enqueue("bench", PAYLOAD, key=f"k{(thread * per_thread + written) % 64}")
                else:
                    tx.enqueue_batch(
                        [
                            {
                                "topic": "bench",
                                "payload": PAYLOAD,
                                "key": f"k{(thread * per_thread + written + i) % 64}",
                            }
                            for i in range(n)
                        ]
                    )
            written += n

    threads = [threading.Thread(target=work, args=(t,)) for t in range(TASKS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def reset(url: str, prefix: str) -> None:
    """Empty the outbox between runs."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {prefix}outbox")
        conn.execute("CHECKPOINT")


def drop(url: str, prefix: str) -> None:
    """Drop the benchmark's tables."""
    with psycopg.connect(url, autocommit=True) as conn:
        for (table,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE %s", (prefix + "%",)
        ).fetchall():
            conn.execute(f'DROP TABLE "{table}" CASCADE')


def consumer_throughput(box: relaybox.Outbox, n: int, asynchronous: bool) -> float:
    """Relay ``n`` messages, then time a Python consumer handling them; return msg/s."""
    topic = f"bench-{uuid.uuid4().hex[:6]}"
    with box.transaction() as tx:
        for start in range(0, n, 1000):
            tx.enqueue_batch(
                [
                    {"topic": topic, "payload": PAYLOAD, "key": f"k{i % 64}"}
                    for i in range(start, min(n, start + 1000))
                ]
            )
    with relaybox.Relay(box) as relay:
        while relay.stats()["delivered"] < n:
            time.sleep(0.05)
    done = threading.Event()
    handled = 0
    lock = threading.Lock()

    def count() -> None:
        nonlocal handled
        with lock:
            handled += 1
            if handled == n:
                done.set()

    def sync_handler(message: relaybox.Message, tx: relaybox.Transaction) -> None:
        count()

    async def async_handler(message: relaybox.Message, tx: relaybox.AsyncTransaction) -> None:
        count()

    handler: Any = async_handler if asynchronous else sync_handler
    started = time.perf_counter()
    with relaybox.Consumer(box, topic, handler, group="bench", batch_size=500):
        done.wait()
        elapsed = time.perf_counter() - started
    return n / elapsed


def main() -> int:
    """Run every section and print the figures."""
    url = os.environ.get("RELAYBOX_TEST_DATABASE_URL")
    if not url:
        print("RELAYBOX_TEST_DATABASE_URL is not set (dev/bench python sets it)", file=sys.stderr)
        return 2
    quick = "--quick" in sys.argv
    prefix = f"pybench_{uuid.uuid4().hex[:6]}_"
    box = relaybox.Outbox(url, migrate=True, table_prefix=prefix, max_connections=TASKS + 2)
    try:
        single_n = 2_000 if quick else 5_000
        batch_n = 20_000 if quick else 100_000
        print(f"relaybox Python binding benchmark ({TASKS} threads/tasks, 256-byte payloads)")
        print(f"{'enqueue':34} {'Python':>12} {'Rust':>12} {'Python/Rust':>12}")
        ratios = {}
        for label, total, per_tx in (
            ("1 msg/tx", single_n, 1),
            ("100 msg/tx (enqueue_batch)", batch_n, 100),
        ):
            reset(url, prefix)
            rust = total / _native._bench_enqueue_rust(box._store, total, per_tx, TASKS, 256)
            reset(url, prefix)
            python = total / python_enqueue(box, total, per_tx)
            ratios[label] = python / rust
            print(f"{label:34} {python:>10,.0f}/s {rust:>10,.0f}/s {python / rust:>11.0%}")
        overhead = 1 - ratios["100 msg/tx (enqueue_batch)"]
        verdict = "met" if overhead <= 0.20 else "missed"
        print(f"batched enqueue overhead of the binding: {overhead:.0%} (target <= 20%: {verdict})")
        reset(url, prefix)
        n = 5_000 if quick else 20_000
        for label, asynchronous in (("sync def", False), ("async def", True)):
            rate = consumer_throughput(box, n, asynchronous)
            print(f"consumer, {label} handler, {n} msgs: {rate:,.0f} msg/s")
    finally:
        box.close()
        drop(url, prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())

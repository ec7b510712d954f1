"""Python binding benchmark: enqueue from Python next to the same in Rust.

Also measures consumer handler throughput, and the integrations that join the
application's own transaction (SQLAlchemy, asyncpg, psycopg, Django): the
cost of an enqueue inside the host's transaction, and the host-mode
consumers next to :class:`relaybox.Consumer`.

Run with ``dev/bench python`` (release build). Prints figures; asserts nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Callable

import asyncpg  # type: ignore[import-untyped]
import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

import relaybox

PAYLOAD = b"x" * 256
TASKS = 4
CONCURRENCY = 4
"""Lanes of every consumer compared in the host-mode section."""
HOST_ENQUEUE_TARGET = 0.15
HOST_CONSUMER_TARGET = 0.80
RUN = 8
"""Messages per host transaction in the ceiling: 500-message batches over 64 keys."""
ROUND = 20
"""Transactions per timed round; rounds of (a) and (b) alternate."""


def rust_enqueue(url: str, prefix: str, total: int, per_tx: int) -> float:
    """The same enqueue workload run by the Rust core alone; return the seconds taken.

    Runs ``relaybox-bench enqueue-peer`` (the repository's benchmark program, crate
    ``bench/``, which ``dev/bench python`` builds) on the tables of ``prefix``, with the
    pool this benchmark's outbox has. ``RELAYBOX_BENCH_BIN`` names the program; the
    default is the release build in the repository's cargo target directory.
    """
    root = Path(__file__).resolve().parents[3]
    target = Path(os.environ.get("CARGO_TARGET_DIR", root / "target"))
    program = os.environ.get("RELAYBOX_BENCH_BIN", str(target / "release" / "relaybox-bench"))
    args = [
        program,
        "enqueue-peer",
        "--url",
        url,
        "--prefix",
        prefix,
        "--total",
        str(total),
        "--per-tx",
        str(per_tx),
        "--tasks",
        str(TASKS),
        "--payload",
        str(len(PAYLOAD)),
        "--max-connections",
        str(TASKS + 2),
    ]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out)["seconds"])


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

    async def run_async() -> float:
        async with relaybox.AsyncConsumer(box, topic, async_handler, group="bench", batch_size=500):
            await asyncio.to_thread(done.wait)
            return time.perf_counter() - started

    started = time.perf_counter()
    if asynchronous:
        elapsed = asyncio.run(run_async())
    else:
        with relaybox.Consumer(box, topic, sync_handler, group="bench", batch_size=500):
            done.wait()
            elapsed = time.perf_counter() - started
    return n / elapsed


SyncRun = Callable[[int], None]
AsyncRun = Callable[[int], Awaitable[None]]


def _order(index: int) -> tuple[int, int]:
    """Round ``index`` runs (a) then (b), or (b) then (a): ABBA, so drift hits both."""
    return (0, 1) if index % 4 in (0, 3) else (1, 0)


def alternate(runs: tuple[SyncRun, SyncRun], total: int) -> tuple[float, float, float]:
    """Warm up, then time ``total`` transactions of each run in alternating rounds.

    Returns the median seconds per transaction of (a) and of (b) over the
    rounds, and the median ratio b/a of adjacent rounds (robust to the spikes
    of a shared machine).
    """
    for run in runs:
        run(ROUND)
    times: tuple[list[float], list[float]] = ([], [])
    for index in range(total // ROUND):
        for which in _order(index):
            started = time.perf_counter()
            runs[which](ROUND)
            times[which].append((time.perf_counter() - started) / ROUND)
    return summary(times)


async def alternate_async(
    runs: tuple[AsyncRun, AsyncRun], total: int
) -> tuple[float, float, float]:
    """:func:`alternate` for coroutine runs, on the running event loop."""
    for run in runs:
        await run(ROUND)
    times: tuple[list[float], list[float]] = ([], [])
    for index in range(total // ROUND):
        for which in _order(index):
            started = time.perf_counter()
            await runs[which](ROUND)
            times[which].append((time.perf_counter() - started) / ROUND)
    return summary(times)


def summary(times: tuple[list[float], list[float]]) -> tuple[float, float, float]:
    """Median per-transaction times of (a) and (b), and the median of their round ratios."""
    ratios = [b / a for a, b in zip(*times)]
    return statistics.median(times[0]), statistics.median(times[1]), statistics.median(ratios)


def sa_url(url: str, driver: str) -> str:
    """The SQLAlchemy URL of ``url`` on ``driver``."""
    return url.replace("postgres://", f"postgresql+{driver}://", 1)


def setup_django(url: str, prefix: str) -> None:
    """Configure Django on the benchmark's database and outbox tables (no migration)."""
    from urllib.parse import unquote, urlsplit

    import django
    from django.conf import settings

    parts = urlsplit(url)
    settings.configure(
        SECRET_KEY="relaybox-bench",
        USE_TZ=True,
        INSTALLED_APPS=["relaybox.django"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": parts.path.lstrip("/"),
                "USER": unquote(parts.username or ""),
                "PASSWORD": unquote(parts.password or ""),
                "HOST": parts.hostname or "",
                "PORT": str(parts.port or ""),
                # Persistent connections, as a worker process runs with.
                "CONN_MAX_AGE": 600,
            }
        },
        RELAYBOX={"URL": url, "TABLE_PREFIX": prefix, "TRANSPORT": "database"},
    )
    django.setup()


def host_enqueue(url: str, box: relaybox.Outbox, prefix: str, total: int) -> None:
    """Per integration: a transaction writing one business row, without and with one enqueue."""
    import relaybox.asyncpg as rap
    import relaybox.django as rdj
    import relaybox.psycopg as rpg
    import relaybox.sqlalchemy as rsa

    business = f"INSERT INTO {prefix}business (note) VALUES "
    results: list[tuple[str, float, float, float]] = []

    def key(i: int) -> str:
        return f"k{i % 64}"

    # SQLAlchemy Session on psycopg.
    engine = create_engine(sa_url(url, "psycopg"), pool_size=2)
    sessions = sessionmaker(engine)

    def sa_run(enqueue: bool) -> SyncRun:
        def run(count: int) -> None:
            for i in range(count):
                with sessions() as session, session.begin():
                    session.execute(text(business + "(:note)"), {"note": "order"})
                    if enqueue:
                        rsa.enqueue(session, box, "bench-host", PAYLOAD, key=key(i))

        return run

    results.append(
        ("SQLAlchemy Session (psycopg)", *alternate((sa_run(False), sa_run(True)), total))
    )
    engine.dispose()

    # SQLAlchemy AsyncSession on asyncpg.
    async def sa_async() -> tuple[float, float, float]:
        engine = create_async_engine(sa_url(url, "asyncpg"), pool_size=2)
        sessions = async_sessionmaker(engine)

        def run_of(enqueue: bool) -> AsyncRun:
            async def run(count: int) -> None:
                for i in range(count):
                    async with sessions() as session, session.begin():
                        await session.execute(text(business + "(:note)"), {"note": "order"})
                        if enqueue:
                            await rsa.enqueue_async(session, box, "bench-host", PAYLOAD, key=key(i))

            return run

        try:
            return await alternate_async((run_of(False), run_of(True)), total)
        finally:
            await engine.dispose()

    results.append(("SQLAlchemy AsyncSession (asyncpg)", *asyncio.run(sa_async())))

    # asyncpg, raw.
    async def raw_asyncpg() -> tuple[float, float, float]:
        conn = await asyncpg.connect(url)

        def run_of(enqueue: bool) -> AsyncRun:
            async def run(count: int) -> None:
                for i in range(count):
                    async with conn.transaction():
                        await conn.execute(business + "($1)", "order")
                        if enqueue:
                            await rap.enqueue_async(conn, box, "bench-host", PAYLOAD, key=key(i))

            return run

        try:
            return await alternate_async((run_of(False), run_of(True)), total)
        finally:
            await conn.close()

    results.append(("asyncpg", *asyncio.run(raw_asyncpg())))

    # psycopg, raw.
    with psycopg.connect(url) as conn:

        def pg_run(enqueue: bool) -> SyncRun:
            def run(count: int) -> None:
                for i in range(count):
                    with conn.transaction():
                        conn.execute(business + "(%s)", ("order",))
                        if enqueue:
                            rpg.enqueue(conn, box, "bench-host", PAYLOAD, key=key(i))

            return run

        results.append(("psycopg", *alternate((pg_run(False), pg_run(True)), total)))

    # Django, inside transaction.atomic().
    from django.db import connection, transaction

    def dj_run(enqueue: bool) -> SyncRun:
        def run(count: int) -> None:
            for i in range(count):
                with transaction.atomic():
                    with connection.cursor() as cursor:
                        cursor.execute(business + "(%s)", ("order",))
                    if enqueue:
                        rdj.enqueue("bench-host", PAYLOAD, key=key(i))

        return run

    results.append(("Django atomic()", *alternate((dj_run(False), dj_run(True)), total)))
    connection.close()

    # For reference: relaybox's own transaction (the core writes the row; the
    # wake-up is sent after the commit, outside the transaction).
    def own_run(enqueue: bool) -> SyncRun:
        def run(count: int) -> None:
            for i in range(count):
                with box.transaction() as tx:
                    tx.execute(business + "($1)", ["order"])
                    if enqueue:
                        tx.enqueue("bench-host", PAYLOAD, key=key(i))

        return run

    results.append(
        ("(ref) relaybox Outbox.transaction", *alternate((own_run(False), own_run(True)), total))
    )

    print()
    print(
        f"enqueue inside the host transaction, 1 msg/tx, {total} tx each, one connection "
        "(a: business row only, b: business row + enqueue)"
    )
    print(f"{'integration':34} {'(a) per tx':>12} {'(b) per tx':>12} {'overhead':>12}")
    print("(medians over rounds of 20 tx; overhead: median (b)/(a) of adjacent rounds - 1)")
    for label, plain, with_enqueue, ratio in results:
        overhead = ratio - 1
        verdict = "met" if overhead <= HOST_ENQUEUE_TARGET else "missed"
        print(
            f"{label:34} {plain * 1e6:>9,.0f} us {with_enqueue * 1e6:>9,.0f} us "
            f"{overhead:>11.0%}  (target <= {HOST_ENQUEUE_TARGET:.0%}: {verdict})"
        )


def prepare(box: relaybox.Outbox, topic: str, n: int) -> None:
    """Enqueue ``n`` messages on ``topic`` and relay them all (before any timing)."""
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


def timed_consumer(make: Callable[[str], Any], box: relaybox.Outbox, n: int) -> float:
    """Relay ``n`` messages, then time the consumer ``make(topic)`` handling them; msg/s."""
    topic = f"bench-{uuid.uuid4().hex[:6]}"
    prepare(box, topic, n)
    started = time.perf_counter()
    with make(topic) as consumer:
        while consumer.stats()["processed"] < n:
            time.sleep(0.002)
        elapsed = time.perf_counter() - started
    return n / elapsed


def host_consumers(url: str, box: relaybox.Outbox, prefix: str, n: int) -> None:
    """relaybox.Consumer next to the host-mode consumers, each handler writing one row."""
    import relaybox.django as rdj
    import relaybox.sqlalchemy as rsa

    business = f"INSERT INTO {prefix}business (note) VALUES "
    options: dict[str, Any] = {"group": "bench", "batch_size": 500, "concurrency": CONCURRENCY}

    def current(topic: str) -> relaybox.Consumer:
        def handler(message: relaybox.Message, tx: relaybox.Transaction) -> None:
            tx.execute(business + "($1)", [message.id])

        return relaybox.Consumer(box, topic, handler, **options)

    engine = create_engine(sa_url(url, "psycopg"), pool_size=CONCURRENCY + 2)
    sessions = sessionmaker(engine)

    def sa_consumer(topic: str) -> rsa.Consumer:
        def handler(message: relaybox.Message, session: Session) -> None:
            session.execute(text(business + "(:note)"), {"note": message.id})

        return rsa.Consumer(box, topic, handler, sessionmaker=sessions, **options)

    def dj_consumer(topic: str) -> rdj.Consumer:
        from django.db import connection

        def handler(message: relaybox.Message) -> None:
            with connection.cursor() as cursor:
                cursor.execute(business + "(%s)", (message.id,))

        return rdj.Consumer(topic, handler, outbox=box, **options)

    base = timed_consumer(current, box, n)
    rows = [
        ("relaybox.sqlalchemy.Consumer", timed_consumer(sa_consumer, box, n)),
        ("relaybox.django.Consumer", timed_consumer(dj_consumer, box, n)),
    ]
    ceiling = sqlalchemy_alone(sessions, business, n)
    engine.dispose()
    print()
    print(
        f"consumer in host mode, database transport, {n} msgs, concurrency {CONCURRENCY}, "
        "handler writes one row"
    )
    print(f"{'consumer':34} {'msg/s':>12} {'host/current':>12}")
    print(f"{'relaybox.Consumer (current)':34} {base:>10,.0f}/s {'':>12}")
    for label, rate in rows:
        verdict = "met" if rate / base >= HOST_CONSUMER_TARGET else "missed"
        print(
            f"{label:34} {rate:>10,.0f}/s {rate / base:>11.0%}  "
            f"(target >= {HOST_CONSUMER_TARGET:.0%}: {verdict})"
        )
    print(
        f"{'ceiling: SQLAlchemy alone':34} {ceiling:>10,.0f}/s {ceiling / base:>11.0%}  "
        f"(the handler's INSERT through a Session, {CONCURRENCY} threads, "
        f"{RUN} per commit, no relaybox; relaybox.sqlalchemy.Consumer at "
        f"{rows[0][1] / ceiling:.0%} of it)"
    )


def sqlalchemy_alone(sessions: sessionmaker[Session], business: str, n: int) -> float:
    """Msg/s of the host consumer's handler work alone, without relaybox.

    One INSERT per message through a ``Session``, ``RUN`` per commit, on
    ``CONCURRENCY`` threads.
    """
    statement = text(business + "(:note)")

    def work(count: int) -> None:
        for _ in range(count // RUN):
            with sessions() as session:
                for _ in range(RUN):
                    session.execute(statement, {"note": str(uuid.uuid4())})
                session.commit()

    threads = [threading.Thread(target=work, args=(n // CONCURRENCY,)) for _ in range(CONCURRENCY)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (n // CONCURRENCY // RUN * RUN * CONCURRENCY) / (time.perf_counter() - started)


def sections() -> set[str]:
    """The sections named by ``--only a,b`` (default: all)."""
    every = {"enqueue", "consumer", "host-enqueue", "host-consumer"}
    for i, arg in enumerate(sys.argv):
        if arg == "--only" and i + 1 < len(sys.argv):
            return set(sys.argv[i + 1].split(",")) & every
        if arg.startswith("--only="):
            return set(arg[len("--only=") :].split(",")) & every
    return every


def main() -> int:
    """Run every section and print the figures."""
    url = os.environ.get("RELAYBOX_TEST_DATABASE_URL")
    if not url:
        print("RELAYBOX_TEST_DATABASE_URL is not set (dev/bench python sets it)", file=sys.stderr)
        return 2
    quick = "--quick" in sys.argv
    only = sections()
    prefix = f"pybench_{uuid.uuid4().hex[:6]}_"
    box = relaybox.Outbox(url, migrate=True, table_prefix=prefix, max_connections=TASKS + 2)
    try:
        print(f"relaybox Python binding benchmark ({TASKS} threads/tasks, 256-byte payloads)")
        if "enqueue" in only:
            single_n = 2_000 if quick else 5_000
            batch_n = 20_000 if quick else 100_000
            print(f"{'enqueue':34} {'Python':>12} {'Rust':>12} {'Python/Rust':>12}")
            ratios = {}
            for label, total, per_tx in (
                ("1 msg/tx", single_n, 1),
                ("100 msg/tx (enqueue_batch)", batch_n, 100),
            ):
                reset(url, prefix)
                rust = total / rust_enqueue(url, prefix, total, per_tx)
                reset(url, prefix)
                python = total / python_enqueue(box, total, per_tx)
                ratios[label] = python / rust
                print(f"{label:34} {python:>10,.0f}/s {rust:>10,.0f}/s {python / rust:>11.0%}")
            overhead = 1 - ratios["100 msg/tx (enqueue_batch)"]
            verdict = "met" if overhead <= 0.20 else "missed"
            print(
                f"batched enqueue overhead of the binding: {overhead:.0%} "
                f"(target <= 20%: {verdict})"
            )
        if "consumer" in only:
            reset(url, prefix)
            n = 5_000 if quick else 20_000
            for label, asynchronous in (("sync def", False), ("async def", True)):
                rate = consumer_throughput(box, n, asynchronous)
                print(f"consumer, {label} handler, {n} msgs: {rate:,.0f} msg/s")
        if only & {"host-enqueue", "host-consumer"}:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"CREATE TABLE {prefix}business (id bigserial PRIMARY KEY, note text)")
            setup_django(url, prefix)
        if "host-enqueue" in only:
            reset(url, prefix)
            host_enqueue(url, box, prefix, 500 if quick else 2_000)
        if "host-consumer" in only:
            reset(url, prefix)
            host_consumers(url, box, prefix, 1_000 if quick else 5_000)
    finally:
        box.close()
        drop(url, prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())

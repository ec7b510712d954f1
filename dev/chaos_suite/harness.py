"""One scenario's workbench: its outbox tables, topic, worker processes and final collection.

A ``Stage`` gives each scenario fresh relaybox tables (its own table prefix)
in the suite's PostgreSQL and a fresh topic in the suite's Kafka, starts and
kills producer, relay and consumer processes, waits for the outbox to drain,
and collects the commit log, the topic and the dead letters.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import committed
import kafka_tools
import relaybox
from checks import Delivery, analyse
from procs import Proc

T = TypeVar("T")

PARTITIONS = 6
KEYS = 50
PRODUCER_PROCESSES = 2
THREADS_PER_PRODUCER = 4


@dataclass(frozen=True)
class Context:
    """What every scenario of a run shares."""

    db: str
    bootstrap: str
    run_id: str
    work: Path


def retrying(what: Callable[[], T], timeout: float = 60.0) -> T:
    """Call ``what`` until it stops raising relaybox errors (the database may be restarting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return what()
        except relaybox.RelayboxError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def dead_letter_id(letter: dict[str, Any]) -> str:
    """The message id of an ``outbox.dead_letters()`` entry."""
    return str(letter["message"]["id"])


def dead_letter_time(letter: dict[str, Any]) -> float:
    """When an ``outbox.dead_letters()`` entry was dead-lettered, Unix seconds."""
    text = str(letter["failed_at"]).replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(text).timestamp()


class Stage:
    """Fresh tables, a fresh topic and the worker processes of one scenario."""

    def __init__(
        self, ctx: Context, name: str, tag: str, topic_config: Optional[dict[str, str]] = None
    ) -> None:
        self.ctx = ctx
        self.name = name
        self.prefix = f"c{ctx.run_id}_{tag}_"
        self.topic = f"chaos-{ctx.run_id}-{name}"
        self.dir = ctx.work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        self.producers: list[Proc] = []
        self.counts: dict[str, int] = {}
        self.outbox = relaybox.Outbox(ctx.db, migrate=True, table_prefix=self.prefix)
        kafka_tools.create_topic(ctx.bootstrap, self.topic, PARTITIONS, topic_config)

    # --- processes --------------------------------------------------------

    def _spawn(self, role: str, script: str, args: list[str]) -> Proc:
        self.counts[role] = self.counts.get(role, 0) + 1
        proc = Proc(f"{role}-{self.counts[role]}", script, args, self.dir)
        self.procs.append(proc)
        return proc

    def _common(self) -> list[str]:
        return ["--db", self.ctx.db, "--prefix", self.prefix]

    def start_producers(
        self,
        rate: float,
        *,
        burst: int = 0,
        poison: tuple[str, ...] = (),
        processes: int = PRODUCER_PROCESSES,
        duration: float = 900.0,
    ) -> None:
        """Producer processes of 4 threads each, sharing ``rate`` msg/s over the 50 keys.

        Each thread first commits ``burst`` messages unpaced.
        """
        total = processes * THREADS_PER_PRODUCER
        for n in range(processes):
            args = [
                *self._common(),
                "--topic", self.topic,
                "--log", str(self.dir / f"commits-{n}.log"),
                "--keys", str(KEYS),
                "--threads", str(THREADS_PER_PRODUCER),
                "--first-thread", str(n * THREADS_PER_PRODUCER),
                "--total-threads", str(total),
                "--rate", str(rate / processes),
                "--burst", str(burst),
                "--duration", str(duration),
            ]  # fmt: skip
            for spec in poison:
                args += ["--poison", spec]
            self.producers.append(self._spawn("producer", "producer.py", args))

    def stop_producers(self) -> None:
        """Stop the producers (SIGTERM: each finishes its transaction)."""
        for proc in self.producers:
            proc.stop()

    def wait_producers(self, timeout: float) -> None:
        """Wait for producers that end by themselves (a burst without a rate, or a duration)."""
        for proc in self.producers:
            proc.wait(timeout)

    def start_relay(
        self, settings: Optional[dict[str, Any]] = None, kafka: Optional[dict[str, Any]] = None
    ) -> Proc:
        """Start a relay process (``relaybox.Relay`` and ``relaybox.Kafka`` keyword arguments)."""
        args = [*self._common(), "--bootstrap", self.ctx.bootstrap]
        args += ["--settings", json.dumps(settings or {}), "--kafka", json.dumps(kafka or {})]
        return self._spawn("relay", "relay_worker.py", args)

    def start_consumer(self, group: str, table: str, properties: dict[str, str]) -> Proc:
        """Start a consumer process of ``group`` writing its effects to ``table``."""
        args = [*self._common(), "--bootstrap", self.ctx.bootstrap, "--topic", self.topic]
        args += ["--group", group, "--table", table, "--properties", json.dumps(properties)]
        return self._spawn("consumer", "consumer_worker.py", args)

    def wait_started(self, procs: list[Proc], timeout: float = 60.0) -> None:
        """Wait until each worker has printed that it started."""
        deadline = time.monotonic() + timeout
        for proc in procs:
            while " started" not in proc.log_path.read_text(errors="replace"):
                if not proc.alive:
                    raise RuntimeError(f"{proc.name} exited at startup:\n{proc.tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{proc.name} did not start:\n{proc.tail()}")
                time.sleep(0.1)

    def crashed(self) -> list[str]:
        """Workers that exited by themselves with an error (not killed by the suite)."""
        return [
            f"{p.name} exited with {p.popen.returncode}: {p.tail(2)}"
            for p in self.procs
            if p.popen.returncode not in (None, 0, -9, -15)
        ]

    def close(self) -> None:
        """Stop every worker still running and close the outbox."""
        for proc in self.procs:
            proc.stop(timeout=20)
        self.outbox.close()

    # --- the database -------------------------------------------------------

    def execute(self, sql: str, params: Optional[list[Any]] = None) -> int:
        """Run a statement in a transaction of its own."""

        def run() -> int:
            with self.outbox.transaction() as tx:
                return tx.execute(sql, params)

        return retrying(run)

    def query(self, sql: str, params: Optional[list[Any]] = None) -> list[dict[str, Any]]:
        """Run a query in a transaction of its own."""

        def run() -> list[dict[str, Any]]:
            with self.outbox.transaction() as tx:
                return tx.query(sql, params)

        return retrying(run)

    def pending(self) -> int:
        """Undelivered outbox rows."""
        return retrying(self.outbox.pending_count)

    def wait_pending(self, at_least: int, timeout: float) -> None:
        """Wait until the outbox holds at least ``at_least`` undelivered rows."""
        deadline = time.monotonic() + timeout
        while self.pending() < at_least:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the backlog did not reach {at_least} rows")
            time.sleep(0.2)

    def wait_drained(self, timeout: float) -> Optional[float]:
        """Wait until the outbox holds no undelivered row; return when (None on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pending() == 0:
                return time.time()
            time.sleep(0.25)
        return None

    def dead_letters(self) -> list[dict[str, Any]]:
        """Every dead letter: ``outbox.dead_letters()`` entries (``message``, ``failed_at``)."""
        return retrying(lambda: self.outbox.dead_letters(1_000_000))

    # --- the result ---------------------------------------------------------

    def commit_log(self) -> committed.CommitLog:
        """The producers' commit log."""
        return committed.load(sorted(self.dir.glob("commits-*.log")))

    def collect(self) -> tuple[committed.CommitLog, Delivery, list[dict[str, Any]]]:
        """The commit log, the analysis of the topic against it, and the dead letters."""
        log = self.commit_log()
        records = kafka_tools.read_topic(self.ctx.bootstrap, self.topic)
        dead = self.dead_letters()
        delivery = analyse(log, records, {dead_letter_id(d) for d in dead})
        return log, delivery, dead


@contextmanager
def stage(
    ctx: Context, name: str, tag: str, topic_config: Optional[dict[str, str]] = None
) -> Iterator[Stage]:
    """A Stage whose processes are stopped however the scenario ends."""
    bench = Stage(ctx, name, tag, topic_config)
    try:
        yield bench
    finally:
        bench.close()

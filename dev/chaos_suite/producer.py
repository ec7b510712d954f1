"""Producer worker: enqueues keyed, numbered messages into the outbox and logs each committed id.

Each thread owns the keys ``key-NN`` with ``NN % total_threads ==
thread_index`` and gives each of its keys a sequence number 1, 2, 3, ...
in the JSON payload (``{"k": key, "s": seq, "pad": ...}``). One thread per
key writing one transaction after the other makes a key's sequence order
its commit order, which is the order the relay must keep.

After each commit returns, a line ``<id> <key> <seq> <unix time> ok`` is
appended to the log. A commit that raised may still have committed (the
server can die after committing, before answering): its ids are logged as
``uncertain``; the checks neither require nor forbid them in Kafka.

First ``--burst`` messages are written as fast as possible (``--burst-batch``
per transaction), then ``--rate`` messages per second (whole process) until
SIGTERM or ``--duration`` seconds.

Usage: producer.py --db URL --prefix P --topic T --log FILE [options]
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import IO, Optional

import lifecycle
import relaybox


def payload(key: str, seq: int, size: int) -> bytes:
    """The JSON payload of one message, padded to ``size`` bytes when that is larger."""
    head = f'{{"k":"{key}","s":{seq},"pad":"'
    tail = '"}'
    pad = max(0, size - len(head) - len(tail))
    return (head + "x" * pad + tail).encode()


class Log:
    """The commit log of this process (shared by its threads)."""

    def __init__(self, path: str) -> None:
        self._file: IO[str] = open(path, "a", buffering=1)  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()

    def write(self, entries: list[tuple[str, str, int]], status: str) -> None:
        """Append one line per ``(id, key, seq)`` with the time and ``status``."""
        at = time.time()
        text = "".join(f"{mid} {key} {seq} {at:.6f} {status}\n" for mid, key, seq in entries)
        with self._lock:
            self._file.write(text)

    def close(self) -> None:
        """Close the log file."""
        self._file.close()


class Thread(threading.Thread):
    """One producing thread over its own keys."""

    def __init__(self, args: argparse.Namespace, outbox: relaybox.Outbox, log: Log, index: int):
        super().__init__(name=f"producer-{index}", daemon=True)
        self.args = args
        self.outbox = outbox
        self.log = log
        keys = range(args.keys)
        self.keys = [f"key-{k:02d}" for k in keys if k % args.total_threads == index]
        self.seq = dict.fromkeys(self.keys, 0)
        self.turn = 0
        self.poison = parse_poison(args.poison)
        self.errors = 0
        self.stop = threading.Event()

    def next_message(self) -> tuple[str, int, int]:
        """The next key (round robin), its next sequence number and the payload size."""
        key = self.keys[self.turn % len(self.keys)]
        self.turn += 1
        self.seq[key] += 1
        seq = self.seq[key]
        return key, seq, self.poison.get((key, seq), self.args.size)

    def commit(self, count: int) -> None:
        """One transaction of ``count`` messages; log its ids as ok or uncertain."""
        written: list[tuple[str, str, int]] = []
        try:
            with self.outbox.transaction() as tx:
                for _ in range(count):
                    key, seq, size = self.next_message()
                    mid = tx.enqueue(self.args.topic, payload(key, seq, size), key=key)
                    written.append((mid, key, seq))
        except relaybox.RelayboxError as error:
            self.errors += 1
            if written:
                self.log.write(written, "uncertain")
            if self.errors % 50 == 1:
                lifecycle.say(self.name, f"error #{self.errors}: {error}")
            time.sleep(0.1)
            return
        self.log.write(written, "ok")

    def run(self) -> None:
        """The burst, then the paced messages until stopped."""
        if not self.keys:
            return
        args = self.args
        for _ in range(0, args.burst, args.burst_batch):
            if self.stop.is_set():
                return
            self.commit(args.burst_batch)
        if args.rate <= 0:
            return
        interval = args.threads / args.rate
        deadline = time.monotonic() + args.duration
        due = time.monotonic()
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.commit(1)
            due += interval
            now = time.monotonic()
            if due > now:
                self.stop.wait(due - now)
            elif due < now - 1.0:
                due = now  # fell behind (database down): do not burst to catch up


def parse_poison(specs: Optional[list[str]]) -> dict[tuple[str, int], int]:
    """``KEY:SEQ:SIZE`` items: the message ``SEQ`` of ``KEY`` gets a payload of ``SIZE`` bytes."""
    poison: dict[tuple[str, int], int] = {}
    for spec in specs or []:
        key, seq, size = spec.split(":")
        poison[(key, int(seq))] = int(size)
    return poison


def main() -> None:
    """Parse the arguments and produce until SIGTERM or the duration."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--name", default="producer")
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--first-thread", type=int, default=0)
    parser.add_argument("--total-threads", type=int, default=4)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--burst", type=int, default=0, help="messages per thread, unpaced")
    parser.add_argument("--burst-batch", type=int, default=20)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--poison", action="append")
    args = parser.parse_args()

    stop = lifecycle.install()
    outbox = relaybox.Outbox(args.db, table_prefix=args.prefix, max_connections=args.threads + 2)
    log = Log(args.log)
    threads = [
        Thread(args, outbox, log, args.first_thread + i)
        for i in range(args.threads)
        if args.first_thread + i < args.total_threads
    ]
    for thread in threads:
        thread.start()
    lifecycle.say(args.name, f"producing with {len(threads)} threads")
    while not stop.wait(0.2):
        if not any(thread.is_alive() for thread in threads):
            break
    for thread in threads:
        thread.stop.set()
    for thread in threads:
        thread.join()
    log.close()
    errors = sum(thread.errors for thread in threads)
    lifecycle.say(args.name, f"done; {errors} failed transactions")


if __name__ == "__main__":
    main()

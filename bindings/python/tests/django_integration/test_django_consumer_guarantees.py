"""The guarantees of relaybox.django.Consumer on real PostgreSQL, its handlers writing
through the Django ORM: a process killed between the handler's commit and the
acknowledgement gets the message again and its rows exist once; the messages of each
key are handled in order with several lanes at work; a handler that writes and then
raises leaves nothing, is retried, then dead-lettered while other keys go on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import wait_for
from dj_env import PREFIX, migrated_fixture, pgm_fixture  # noqa: F401
from django.db import connection, transaction

import relaybox
import relaybox.django as rdj

HERE = Path(__file__).resolve().parent
PROCS = HERE.parent / "host_consumer_procs"
sys.path.insert(0, str(PROCS))  # dj_handled, shared with the consumer process

from dj_handled import create_table_sql, handled_model  # noqa: E402


@pytest.fixture(scope="module")
def handled(migrated: None, pgm: psycopg.Connection[Any]) -> Iterator[Any]:
    """The ``Handled`` model and its table, on the migrated database."""
    pgm.execute(create_table_sql())
    yield handled_model()
    rdj.close_outbox()
    connection.close()
    pgm.execute(f"DROP TABLE IF EXISTS {PREFIX}handled")


@pytest.fixture
def topic() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def enqueue_keyed(topic: str, keys: list[str], per_key: int) -> list[tuple[str, str, int]]:
    """``per_key`` messages ``{"seq": n}`` per key, keys interleaved; ``(id, key, seq)``."""
    items = [(key, seq) for seq in range(per_key) for key in keys]
    with transaction.atomic():
        ids = rdj.enqueue_batch(
            [{"topic": topic, "payload": {"seq": seq}, "key": key} for key, seq in items]
        )
    return [(i, key, seq) for i, (key, seq) in zip(ids, items)]


def handled_counts(pg: psycopg.Connection[Any], ids: list[str]) -> dict[str, int]:
    rows = pg.execute(
        f"SELECT message_id, count(*) FROM {PREFIX}handled WHERE message_id = ANY(%s) GROUP BY 1",
        (ids,),
    )
    return {str(r[0]): int(r[1]) for r in rows}


def handled_seqs(pg: psycopg.Connection[Any], ids: list[str]) -> dict[str, list[int]]:
    """Per key, the ``seq`` of its rows in commit order."""
    seqs: dict[str, list[int]] = {}
    rows = pg.execute(
        f"SELECT key, seq FROM {PREFIX}handled WHERE message_id = ANY(%s) ORDER BY id", (ids,)
    )
    for key, seq in rows:
        seqs.setdefault(str(key), []).append(int(seq))
    return seqs


def inbox_rows(pg: psycopg.Connection[Any], group: str) -> int:
    row = pg.execute(
        f"SELECT count(*) FROM {PREFIX}inbox WHERE consumer_group = %s", (group,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def relay_all(n: int) -> None:
    with relaybox.Relay(rdj.get_outbox(), poll_interval=0.05) as relay:
        wait_for(f"{n} relayed", lambda: relay.stats()["delivered"] >= n)


class RecordingConsumer(rdj.Consumer):
    """The Django consumer, noting the outcome it reports for each delivery."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outcomes: dict[str, list[str]] = {}

    def _host_call(self, message: relaybox.Message, sql: str, params: Any) -> str:
        outcome = super()._host_call(message, sql, params)
        self.outcomes.setdefault(message.id, []).append(outcome)
        return outcome


def test_killed_after_the_commit_before_the_ack_the_message_comes_again_and_is_skipped(
    handled: Any, pgm: psycopg.Connection[Any], topic: str
) -> None:
    group = "dj-kill"
    sent = enqueue_keyed(topic, ["k0", "k1", "k2"], per_key=10)
    ids = [i for i, _, _ in sent]
    killed = next(i for i, key, seq in sent if key == "k1" and seq == 4)
    relay_all(len(sent))

    # The process waits 0.5 s between the marked commit and its death: an acknowledgement
    # made before the commit (every 50 ms on the database transport) would be recorded.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(PROCS), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, str(PROCS / "dj_killed_consumer.py"), topic, group, killed, "0.5"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the consumer process did not reach the marked message:\n{err}")
    assert proc.returncode == -signal.SIGKILL, err
    # The marked message's transaction committed before the process died (another
    # lane's COMMIT sent as it died may still be completing: `before` is a lower bound).
    before = handled_counts(pgm, ids)
    assert before[killed] == 1
    assert set(before.values()) == {1}

    handler_calls: list[str] = []

    def handle(message: relaybox.Message) -> None:
        handler_calls.append(message.id)
        handled.objects.create(message_id=message.id, key=message.key, seq=message.json()["seq"])

    again = RecordingConsumer(topic, handle, group=group, poll_interval=0.05)
    with again:
        wait_for(
            "the rest handled and the killed message delivered again (never, if its "
            "acknowledgement came before the commit)",
            lambda: set(handled_counts(pgm, ids)) == set(ids) and killed in again.outcomes,
        )
    # Delivered again, skipped by its inbox row: the handler was not called.
    assert again.outcomes[killed] == ["duplicate"]
    assert killed not in handler_calls
    assert again.stats()["duplicates"] >= 1
    # Each message's handler committed once: in the killed process or in this one.
    assert again.stats()["processed"] == len(handler_calls) == len(set(handler_calls))
    assert set(handler_calls).isdisjoint(before)
    assert handled_counts(pgm, ids) == dict.fromkeys(ids, 1)
    assert inbox_rows(pgm, group) == len(ids)
    assert handled_seqs(pgm, ids) == {k: list(range(10)) for k in ("k0", "k1", "k2")}


KEYS = [f"key-{n:02d}" for n in range(20)]
PER_KEY = 25


def test_order_per_key_across_many_keys_with_concurrent_lanes(
    handled: Any, pgm: psycopg.Connection[Any], topic: str
) -> None:
    sent = enqueue_keyed(topic, KEYS, PER_KEY)
    ids = [i for i, _, _ in sent]
    calls: list[tuple[str, str, int]] = []

    def handle(message: relaybox.Message) -> None:
        seq = message.json()["seq"]
        calls.append((message.id, message.key or "", seq))
        handled.objects.create(message_id=message.id, key=message.key, seq=seq)

    with (
        relaybox.Relay(rdj.get_outbox(), poll_interval=0.05),
        rdj.Consumer(topic, handle, group="dj-ordered", concurrency=4, poll_interval=0.05) as c,
    ):
        wait_for(f"{len(sent)} processed", lambda: c.stats()["processed"] == len(sent))
    assert c.stats() == {
        "processed": len(sent),
        "duplicates": 0,
        "retried": 0,
        "dead_lettered": 0,
    }
    assert sorted(i for i, _, _ in calls) == sorted(ids)
    for key in KEYS:
        seqs = [seq for _, k, seq in calls if k == key]
        assert seqs == list(range(PER_KEY)), f"{key} handled in the order {seqs}"
    assert handled_seqs(pgm, ids) == {k: list(range(PER_KEY)) for k in KEYS}
    assert set(handled_counts(pgm, ids).values()) == {1}
    assert inbox_rows(pgm, "dj-ordered") == len(sent)


def test_a_handler_that_writes_then_raises_leaves_nothing_is_retried_then_dead_lettered(
    handled: Any, pgm: psycopg.Connection[Any], topic: str
) -> None:
    # The failing message first on key "a"; later messages on "a" and on other keys.
    with transaction.atomic():
        bad = rdj.enqueue(topic, {"seq": 0}, key="a")
        good = rdj.enqueue_batch(
            [
                {"topic": topic, "payload": {"seq": n}, "key": k}
                for n in (1, 2)
                for k in ("a", "b", "c")
            ]
        )
    calls: list[tuple[str, str]] = []

    def handle(message: relaybox.Message) -> None:
        calls.append((message.id, message.key or ""))
        handled.objects.create(message_id=message.id, key=message.key, seq=message.json()["seq"])
        if message.id == bad:
            raise ValueError("no such warehouse")

    with (
        relaybox.Relay(rdj.get_outbox(), poll_interval=0.05),
        rdj.Consumer(
            topic, handle, group="dj-failing", max_retries=2, retry_delay=0.01, poll_interval=0.05
        ) as c,
    ):
        wait_for(
            "all processed, 1 dead-lettered",
            lambda: c.stats()["processed"] == len(good) and c.stats()["dead_lettered"] == 1,
        )
    assert c.stats() == {"processed": len(good), "duplicates": 0, "retried": 2, "dead_lettered": 1}
    ids = [i for i, _ in calls]
    assert ids.count(bad) == 3
    assert sorted(i for i in ids if i != bad) == sorted(good)
    # Key "a" goes on only after its failing message is dead-lettered.
    assert [i for i, key in calls if key == "a"][:3] == [bad] * 3
    # The row the handler wrote before raising was rolled back with the inbox row.
    assert handled_counts(pgm, [bad, *good]) == dict.fromkeys(good, 1)
    assert inbox_rows(pgm, "dj-failing") == len(good)
    letters = [d for d in rdj.get_outbox().dead_letters() if d["message"]["id"] == bad]
    assert len(letters) == 1
    assert letters[0]["attempts"] == 3
    assert "ValueError: no such warehouse" in letters[0]["last_error"]

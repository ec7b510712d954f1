"""The core's logs reach Python's ``logging`` (issue 21, defect 4: a relay and a
consumer that printed nothing during outages and dead letters).

Relays and consumers run on a real PostgreSQL (and Kafka for the transport
failure); ``_native._log_for_tests`` emits core events on demand for levels,
fields, floods and fork.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest
from conftest import wait_for

import relaybox
from relaybox import _native


class Collect(logging.Handler):
    """Keeps every record it is given."""

    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected() -> Iterator[Collect]:
    """The only handler of the ``relaybox`` records (not propagated to the root
    logger's handlers, which other suites may have set up); the logger's level
    and propagation are restored afterwards."""
    logger = logging.getLogger("relaybox")
    handler, level, propagate = Collect(), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate


def fields(record: logging.LogRecord) -> dict[str, Any]:
    value: dict[str, Any] = getattr(record, "relaybox_fields")  # noqa: B009
    return value


def starting(prefix: str) -> Callable[[logging.LogRecord], bool]:
    return lambda record: record.getMessage().startswith(prefix)


def record_where(
    records: Callable[[], list[logging.LogRecord]],
    what: str,
    predicate: Callable[[logging.LogRecord], bool],
    timeout: float = 30.0,
) -> logging.LogRecord:
    def probe() -> Optional[logging.LogRecord]:
        return next((r for r in list(records()) if predicate(r)), None)

    found = wait_for(what, probe, timeout)
    assert found is not None
    return found


def test_relay_start_and_stop_arrive_as_info(
    outbox: relaybox.Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relaybox")
    relay = relaybox.Relay(outbox).start()
    owner = relay.owner
    started = record_where(
        lambda: caplog.records,
        "'relaybox relay started'",
        lambda r: r.getMessage().startswith("relaybox relay started"),
    )
    relay.stop()
    stopped = record_where(
        lambda: caplog.records,
        "'relaybox relay stopped'",
        lambda r: r.getMessage().startswith("relaybox relay stopped"),
    )
    for record in (started, stopped):
        assert record.name == "relaybox.relay"
        assert record.levelno == logging.INFO
        assert fields(record) == {"owner": owner}
        assert re.search(r"core/src/relay/\w+\.rs$", record.pathname)
    assert started.getMessage() == f"relaybox relay started owner={owner}"


def test_dead_lettered_message_warns_with_its_fields(
    outbox: relaybox.Outbox, kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A real transport failure: the topic does not exist and the relay may not create it.
    topic = f"py-missing-{uuid.uuid4().hex[:10]}"
    caplog.set_level(logging.WARNING, logger="relaybox")
    with outbox.transaction() as tx:
        message_id = tx.enqueue(topic, b"lost", key="k")
    with relaybox.Relay(outbox, relaybox.Kafka(kafka_bootstrap), max_attempts=1):
        record = record_where(
            lambda: caplog.records,
            "a dead-letter warning",
            lambda r: r.getMessage().startswith("relaybox message dead-lettered"),
        )
    assert record.name == "relaybox.relay"
    assert record.levelno == logging.WARNING
    got = fields(record)
    assert got["id"] == message_id
    assert got["attempts"] == 1
    assert "does not exist" in got["error"]
    assert record.getMessage() == (
        f"relaybox message dead-lettered id={message_id} attempts=1 error={got['error']}"
    )
    assert [d["message"]["id"] for d in outbox.dead_letters()] == [message_id]


def test_consumer_rejection_warns(
    outbox: relaybox.Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="relaybox")
    message_id = outbox.enqueue("orders", {"id": 1}, key="k")

    def refuse(message: relaybox.Message, tx: relaybox.Transaction) -> None:
        raise relaybox.Reject("not for this shop")

    with relaybox.Relay(outbox), relaybox.Consumer(outbox, "orders", refuse, group="shop"):
        record = record_where(
            lambda: caplog.records,
            "a rejection warning",
            lambda r: "rejected by its handler" in r.getMessage(),
        )
    assert record.name == "relaybox.consumer"
    assert record.levelno == logging.WARNING
    assert fields(record) == {"id": message_id, "group": "shop", "error": "not for this shop"}


def test_relaybox_logger_at_error_gets_nothing_below(
    outbox: relaybox.Outbox, collected: Collect
) -> None:
    logging.getLogger("relaybox").setLevel(logging.ERROR)
    before = _native._logging_stats()
    relaybox.Relay(outbox).start().stop()
    _native._log_for_tests("info", "filtered")
    _native._log_for_tests("error", "control")
    record_where(
        lambda: collected.records, "the control error", lambda r: r.msg.startswith("control")
    )

    def settled() -> bool:
        stats = _native._logging_stats()
        return stats["emitted"] - before["emitted"] >= stats["queued"] - before["queued"]

    wait_for("the queue to drain", settled)
    assert all(r.levelno >= logging.ERROR for r in collected.records), [
        (r.name, r.levelname, r.getMessage()) for r in collected.records
    ]
    # Filtered on the native side: the INFO events never crossed into Python.
    queued = _native._logging_stats()["queued"] - before["queued"]
    assert queued == len(collected.records)


def test_levels_fields_and_logger_names(collected: Collect) -> None:
    logging.getLogger("relaybox").setLevel(5)
    started = time.time()
    _native._log_for_tests("trace", "deep", count=2)
    first = record_where(
        lambda: collected.records, "a TRACE record", lambda r: r.msg.startswith("deep")
    )
    assert first.name == "relaybox.testing"
    # "TRACE", unless something named level 5 first (Celery's billiard: "SUBDEBUG").
    assert (first.levelno, first.levelname) == (5, logging.getLevelName(5))
    assert first.levelname in ("TRACE", "SUBDEBUG")
    assert first.getMessage() == "deep n=0 flag=true ratio=0.5 text=two words maybe=Some(0)"
    assert fields(first) == {
        "n": 0,
        "flag": True,
        "ratio": 0.5,
        "text": "two words",
        "maybe": "Some(0)",
    }
    assert first.pathname.endswith("logging.rs") and first.lineno > 0
    assert started - 1 <= first.created <= time.time()
    assert first.threadName == "native"  # a Python thread inside the native call
    levels = {"error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO, "debug": 10}
    for name, level in levels.items():
        _native._log_for_tests(name, f"at {name}")
        record = record_where(lambda: collected.records, name, starting(f"at {name} "))
        assert record.levelno == level


def test_library_records_go_under_relaybox_deps_at_warning(collected: Collect) -> None:
    logging.getLogger("relaybox").setLevel(logging.INFO)
    _native._log_for_tests("info", "library info", dependency=True)
    _native._log_for_tests("warn", "library warning", dependency=True)
    record = record_where(
        lambda: collected.records, "the library warning", lambda r: r.msg.startswith("library")
    )
    assert record.name == "relaybox.deps.relaybox_test_dep.module"
    assert record.getMessage() == "library warning n=0"
    assert fields(record) == {}
    deps = logging.getLogger("relaybox.deps")
    deps.setLevel(logging.INFO)
    try:
        _native._log_for_tests("info", "library detail", dependency=True)
        record_where(
            lambda: collected.records,
            "the library info",
            lambda r: r.msg.startswith("library detail"),
        )
    finally:
        deps.setLevel(logging.NOTSET)
    assert not [r for r in collected.records if r.msg.startswith("library info")]


def test_level_changes_are_picked_up_within_a_second(collected: Collect) -> None:
    logger = logging.getLogger("relaybox")
    logger.setLevel(logging.WARNING)
    _native._log_for_tests("debug", "too low")
    logger.setLevel(logging.DEBUG)  # no call into relaybox after this: the periodic refresh sees it
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(
        r.msg.startswith("now visible") for r in collected.records
    ):
        _native._log_for_tests("debug", "now visible", refresh=False)
        time.sleep(0.1)
    visible = [r for r in collected.records if r.msg.startswith("now visible")]
    assert visible, "the DEBUG level was not picked up"
    assert visible[0].levelno == logging.DEBUG
    assert not [r for r in collected.records if r.msg.startswith("too low")]


def test_a_flood_is_dropped_counted_and_reported(collected: Collect) -> None:
    logging.getLogger("relaybox").setLevel(logging.WARNING)
    before = _native._logging_stats()
    total = 20_000
    # Emitted with the GIL held: the forwarding thread cannot drain meanwhile.
    _native._log_for_tests("warn", "flood", count=total)
    after = _native._logging_stats()
    dropped = after["dropped"] - before["dropped"]
    assert dropped >= total - 5_000
    assert after["queued"] - before["queued"] + dropped == total
    report = record_where(
        lambda: collected.records,
        "the drop report",
        lambda r: r.name == "relaybox" and r.getMessage().startswith("relaybox log events dropped"),
    )
    assert report.levelno == logging.WARNING
    assert fields(report) == {"dropped": dropped}
    assert report.getMessage() == (
        f"relaybox log events dropped: the queue to Python logging was full dropped={dropped}"
    )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_logging_works_in_a_forked_child(collected: Collect) -> None:
    logging.getLogger("relaybox").setLevel(logging.WARNING)
    # Keep the parent's forwarding thread busy across the fork.
    _native._log_for_tests("warn", "parent", count=2_000, background=True)
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded fork"
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read_end)
            child = Collect()
            logging.getLogger("relaybox.testing").addHandler(child)
            _native._log_for_tests("warn", "child")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(
                r.msg.startswith("child") for r in child.records
            ):
                time.sleep(0.01)
            seen = [r.getMessage() for r in child.records if r.msg.startswith("child")]
            os.write(write_end, (seen[0] if seen else "nothing arrived").encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + 30
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    with os.fdopen(read_end, "rb") as pipe:
        said = pipe.read().decode()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert said.startswith("child n=0"), said


def test_basic_config_shows_core_warnings_and_exit_does_not_hang(pg_url: str, prefix: str) -> None:
    script = textwrap.dedent(
        f"""
        import logging, sys, time
        import relaybox
        from relaybox import _native

        # The only logging setup, after the import, as an application does it.
        logging.basicConfig(
            level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(name)s %(message)s"
        )
        outbox = relaybox.Outbox({pg_url!r}, migrate=True, table_prefix={prefix!r})
        outbox.enqueue("orders", b"x", key="k")

        def refuse(message, tx):
            raise relaybox.Reject("no thanks")

        with relaybox.Relay(outbox), relaybox.Consumer(outbox, "orders", refuse, group="g"):
            deadline = time.monotonic() + 30
            while not outbox.dead_letters() and time.monotonic() < deadline:
                time.sleep(0.05)
        outbox.close()
        _native._log_for_tests("warn", "last words")
        # Native threads still logging while the interpreter exits.
        _native._log_for_tests("warn", "flood", count=1_000_000, background=True)
        _native._log_for_tests("warn", "flood", count=1_000_000, background=True)
        """
    )
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=90
    )
    lines = proc.stdout.splitlines()
    rejected = [line for line in lines if "rejected by its handler" in line]
    assert rejected, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 60
    assert rejected[0].startswith(
        "WARNING relaybox.consumer relaybox message rejected by its handler; dead-lettered id="
    )
    assert "group=g error=no thanks" in rejected[0]
    # Queued before exit: flushed by the atexit hook.
    assert any(line.startswith("WARNING relaybox.testing last words") for line in lines)

"""Fixtures shared by the Python suites: the real PostgreSQL and Kafka of
``dev/services``, a fresh table prefix per test, and a polling helper.

Nothing is skipped: without the services the tests fail and say how to start them.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, TypeVar

import psycopg
import pytest

import relaybox

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "tests" / "fixtures"
START_HINT = 'start them with `dev/services start && eval "$(dev/services env)"`'
WAIT = 30.0


def _required_env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        pytest.fail(f"{name} is not set: the Python tests use the real services; {START_HINT}")
    return value


def sa_url(pg_url: str, driver: str) -> str:
    """``pg_url`` as a SQLAlchemy URL of ``driver`` (``psycopg`` or ``asyncpg``)."""
    return pg_url.replace("postgres://", f"postgresql+{driver}://", 1)


@pytest.fixture
def engine(pg_url: str) -> Iterator[Any]:
    """A SQLAlchemy engine (psycopg) on the test database, disposed after the test."""
    from sqlalchemy import create_engine

    eng = create_engine(sa_url(pg_url, "psycopg"))
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def pg_url() -> str:
    """URL of the PostgreSQL test database."""
    return _required_env("RELAYBOX_TEST_DATABASE_URL")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap servers of the real Kafka broker; fails when none answers."""
    servers = _required_env("RELAYBOX_KAFKA_BOOTSTRAP")
    host, _, port = servers.split(",")[0].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        pytest.fail(f"no Kafka broker answers at {servers} ({exc}); {START_HINT}")
    return servers


@pytest.fixture
def prefix(pg_url: str) -> Iterator[str]:
    """A table prefix of this test's own; its tables are dropped afterwards."""
    name = f"py_{uuid.uuid4().hex[:10]}_"
    yield name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND tablename LIKE %s",
            (name + "%",),
        ).fetchall()
        for (table,) in tables:
            conn.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')


@pytest.fixture
def outbox(pg_url: str, prefix: str) -> Iterator[relaybox.Outbox]:
    """A migrated PostgreSQL outbox with this test's prefix."""
    box = relaybox.Outbox(pg_url, migrate=True, table_prefix=prefix)
    yield box
    box.close()


@pytest.fixture
def sqlite_outbox(tmp_path: Path) -> Iterator[relaybox.Outbox]:
    """A migrated SQLite outbox in a temporary file."""
    box = relaybox.Outbox(f"sqlite://{tmp_path / 'outbox.db'}?mode=rwc", migrate=True)
    yield box
    box.close()


@pytest.fixture
def pg(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit psycopg connection for setup and checks."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


def wait_for(what: str, probe: Callable[[], T], timeout: float = WAIT) -> T:
    """Poll ``probe`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        last = result
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last observed: {last!r}")


def count(pg: psycopg.Connection[Any], table: str) -> int:
    """Rows in ``table``."""
    row = pg.execute(f'SELECT count(*) FROM "{table}"').fetchone()
    assert row is not None
    return int(row[0])

"""What every relaybox.django test module shares: Django configured for the test database
with a table prefix of this run's own (set when this module is imported, before Django
reads its settings), and the migrated database.

Test modules import it before Django: ``from dj_env import PREFIX, migrated_fixture,
pgm_fixture`` (the fixtures are named ``migrated`` and ``pgm``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

PREFIX = os.environ.setdefault("RELAYBOX_DJANGO_TEST_PREFIX", f"dj_{uuid.uuid4().hex[:10]}_")
"""Prefix of this run's relaybox tables (``RELAYBOX["TABLE_PREFIX"]``)."""
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relaybox_django_settings")

APPS = ("shop", "relaybox")
"""The migrated apps, in the order they are migrated back to zero."""


def scalar(pg: psycopg.Connection[Any], sql: str, *params: Any) -> Any:
    """The single value ``sql`` returns."""
    row = pg.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture(scope="module", name="pgm")
def pgm_fixture(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test database, for the test's own checks."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module", name="migrated")
def migrated_fixture(pgm: psycopg.Connection[Any]) -> Iterator[None]:
    """``manage.py migrate`` (relaybox and shop tables); every app migrated to zero after."""
    import django
    from django.core.management import call_command
    from django.db import connection

    import relaybox.django as rdj

    django.setup()
    for app in APPS:  # forget an earlier run's records
        call_command("migrate", app, "zero", verbosity=0)
    call_command("migrate", verbosity=0)
    yield
    rdj.close_outbox()
    connection.close()
    for app in APPS:
        call_command("migrate", app, "zero", verbosity=0)
    connection.close()
    leftover = (
        "SELECT count(*) FROM pg_tables WHERE tablename LIKE %s OR tablename LIKE 'shop\\_%%'"
    )
    assert scalar(pgm, leftover, PREFIX + "%") == 0

"""The relaybox tables, from the core's schema SQL (``relaybox schema postgres``).

The prefix and partition count are read from ``settings.RELAYBOX`` when the
migration runs. It runs on the Django database that holds the relaybox tables
(``RELAYBOX["DATABASE"]``, default ``"default"``) and is a no-op on the others.
Reversing it (``migrate relaybox zero``) drops the tables and their rows.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

from relaybox import _native
from relaybox._host import schema_statements, schema_tables
from relaybox.django import _conf
from relaybox.errors import ConfigError

_DIALECTS = {"postgresql": "postgres", "sqlite": "sqlite"}


def _sql(schema_editor: Any) -> str:
    vendor = schema_editor.connection.vendor
    dialect = _DIALECTS.get(vendor)
    if dialect is None:
        raise ConfigError(f"relaybox has no schema for Django's {vendor} backend")
    return _native.schema_sql(dialect, _conf.table_prefix(), _conf.partitions())


def _ours(schema_editor: Any) -> bool:
    return bool(schema_editor.connection.alias == _conf.alias())


def create(apps: Any, schema_editor: Any) -> None:
    """Run the core's schema, one statement per call."""
    if _ours(schema_editor):
        for statement in schema_statements(_sql(schema_editor)):
            schema_editor.execute(statement, params=None)


def drop(apps: Any, schema_editor: Any) -> None:
    """Drop the tables that :func:`create` made."""
    if _ours(schema_editor):
        for table in reversed(schema_tables(_sql(schema_editor))):
            schema_editor.execute(f"DROP TABLE IF EXISTS {table}", params=None)


class Migration(migrations.Migration):
    """The relaybox schema, version 1."""

    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [migrations.RunPython(create, drop)]

"""What the relaybox migrations share: the core's schema SQL for Django's connection.

The prefix and partition count are read from ``settings.RELAYBOX`` when a
migration runs, on the Django database that holds the relaybox tables
(``RELAYBOX["DATABASE"]``, default ``"default"``); on the others the
migrations are no-ops.
"""

from __future__ import annotations

from typing import Any

from relaybox import _native
from relaybox._host import schema_statements, schema_tables
from relaybox.django import _conf
from relaybox.errors import ConfigError

_DIALECTS = {"postgresql": "postgres", "sqlite": "sqlite"}


def sql(schema_editor: Any) -> str:
    """The whole schema (every version) for the editor's database."""
    vendor = schema_editor.connection.vendor
    dialect = _DIALECTS.get(vendor)
    if dialect is None:
        raise ConfigError(f"relaybox has no schema for Django's {vendor} backend")
    return _native.schema_sql(dialect, _conf.table_prefix(), _conf.partitions())


def ours(schema_editor: Any) -> bool:
    """Whether the editor's database holds the relaybox tables."""
    return bool(schema_editor.connection.alias == _conf.alias())


def tables(schema_editor: Any) -> list[str]:
    """The tables the schema creates, in creation order."""
    return schema_tables(sql(schema_editor))


def create(apps: Any, schema_editor: Any) -> None:
    """Run the core's schema, one statement per call (every statement is idempotent)."""
    if ours(schema_editor):
        for statement in schema_statements(sql(schema_editor)):
            schema_editor.execute(statement, params=None)

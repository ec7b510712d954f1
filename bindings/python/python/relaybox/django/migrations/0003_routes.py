"""Schema version 3 of the relaybox tables: relays that serve some topics only.

Runs the core's schema SQL again: every statement is idempotent, so a
database that an earlier migration created with version 3 already is left as
it is, and an older one gains the ``route_leases`` and ``relay_routes``
tables. Reversing it drops those tables and forgets version 3.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

from relaybox.django import _conf

from . import _schema


def drop(apps: Any, schema_editor: Any) -> None:
    """Drop the tables of relays serving some topics, and the record of version 3."""
    if _schema.ours(schema_editor):
        prefix = _conf.table_prefix()
        for table in ("relay_routes", "route_leases"):
            schema_editor.execute(f"DROP TABLE IF EXISTS {prefix}{table}", params=None)
        schema_editor.execute(
            f"DELETE FROM {prefix}schema_migrations WHERE version = 3", params=None
        )


class Migration(migrations.Migration):
    """The relaybox schema, version 3."""

    dependencies = [("relaybox", "0002_idempotency_keys")]
    operations = [migrations.RunPython(_schema.create, drop)]

"""Schema version 2 of the relaybox tables: producers' idempotency keys.

Runs the core's schema SQL again: every statement is idempotent, so a
database that ``0001_initial`` created with version 2 already is left as it
is, and one created with version 1 gains the ``idempotency_keys`` table.
Reversing it drops that table and forgets version 2.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

from relaybox.django import _conf

from . import _schema


def drop(apps: Any, schema_editor: Any) -> None:
    """Drop the idempotency keys and the record of version 2."""
    if _schema.ours(schema_editor):
        prefix = _conf.table_prefix()
        schema_editor.execute(f"DROP TABLE IF EXISTS {prefix}idempotency_keys", params=None)
        schema_editor.execute(
            f"DELETE FROM {prefix}schema_migrations WHERE version = 2", params=None
        )


class Migration(migrations.Migration):
    """The relaybox schema, version 2."""

    dependencies = [("relaybox", "0001_initial")]
    operations = [migrations.RunPython(_schema.create, drop)]

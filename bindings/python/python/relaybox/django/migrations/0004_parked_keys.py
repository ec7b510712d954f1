"""Schema version 4 of the relaybox tables: keys parked behind a dead letter.

Runs the core's schema SQL again: every statement is idempotent, so a
database that an earlier migration created with version 4 already is left as
it is, and an older one gains the outbox position of the relay's dead letters
(a ``seq`` column of ``dead_letters`` on PostgreSQL, the ``dead_letter_seqs``
table on SQLite) and the index of parked keys. Reversing it drops them and
forgets version 4.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

from relaybox.django import _conf

from . import _schema


def drop(apps: Any, schema_editor: Any) -> None:
    """Drop the dead letters' positions, the parked-key index and the record of version 4."""
    if _schema.ours(schema_editor):
        prefix = _conf.table_prefix()
        schema_editor.execute(f"DROP INDEX IF EXISTS {prefix}dead_letters_parked", params=None)
        if schema_editor.connection.vendor == "sqlite":
            schema_editor.execute(f"DROP TABLE IF EXISTS {prefix}dead_letter_seqs", params=None)
        else:
            schema_editor.execute(
                f"ALTER TABLE {prefix}dead_letters DROP COLUMN IF EXISTS seq", params=None
            )
        schema_editor.execute(
            f"DELETE FROM {prefix}schema_migrations WHERE version = 4", params=None
        )


class Migration(migrations.Migration):
    """The relaybox schema, version 4."""

    dependencies = [("relaybox", "0003_routes")]
    operations = [migrations.RunPython(_schema.create, drop)]

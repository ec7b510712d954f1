"""The relaybox tables, from the core's schema SQL (``relaybox schema postgres``).

The prefix and partition count are read from ``settings.RELAYBOX`` when the
migration runs. It runs on the Django database that holds the relaybox tables
(``RELAYBOX["DATABASE"]``, default ``"default"``) and is a no-op on the others.
Reversing it (``migrate relaybox zero``) drops the tables and their rows.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

from . import _schema


def drop(apps: Any, schema_editor: Any) -> None:
    """Drop the tables that :func:`_schema.create` made."""
    if _schema.ours(schema_editor):
        for table in reversed(_schema.tables(schema_editor)):
            schema_editor.execute(f"DROP TABLE IF EXISTS {table}", params=None)


class Migration(migrations.Migration):
    """The relaybox tables, at the newest schema version this relaybox knows."""

    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [migrations.RunPython(_schema.create, drop)]

"""The tables of :mod:`eventbus_users.models` (names with the test run's prefix)."""

from __future__ import annotations

import os
import uuid

from django.db import migrations, models

PREFIX = os.environ["EVENTBUS_DJANGO_PREFIX"]


class Migration(migrations.Migration):  # type: ignore[misc]
    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [
        migrations.CreateModel(
            name="User",
            fields=[
                (
                    "id",
                    models.UUIDField(
                        primary_key=True, default=uuid.uuid4, editable=False, serialize=False
                    ),
                ),
                ("email", models.EmailField(max_length=254)),
                ("is_active", models.BooleanField(default=False)),
            ],
            options={"db_table": f"{PREFIX}user"},
        ),
        migrations.CreateModel(
            name="EventLog",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("event_name", models.CharField(max_length=100)),
                ("entity_id", models.CharField(max_length=100)),
                ("payload", models.JSONField()),
            ],
            options={"db_table": f"{PREFIX}event_log"},
        ),
    ]

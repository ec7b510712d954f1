from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):  # type: ignore[misc]
    initial = True
    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="Order",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("reference", models.CharField(max_length=64, unique=True)),
                ("item", models.CharField(max_length=200)),
            ],
        ),
        migrations.CreateModel(
            name="Shipment",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("order_reference", models.CharField(max_length=64)),
                ("message_id", models.CharField(max_length=36)),
            ],
        ),
    ]

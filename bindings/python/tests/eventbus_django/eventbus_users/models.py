"""The seed's ``User`` model (UUID primary key) and a log written by the subscriber's hook."""

from __future__ import annotations

import os
from uuid import uuid4

from django.db import models

PREFIX = os.environ["EVENTBUS_DJANGO_PREFIX"]


class User(models.Model):  # type: ignore[misc]
    id = models.UUIDField(primary_key=True, default=uuid4)
    email = models.EmailField()
    is_active = models.BooleanField(default=False)

    class Meta:
        app_label = "eventbus_users"
        db_table = f"{PREFIX}user"


class EventLog(models.Model):  # type: ignore[misc]
    """One row per call of the subscriber's hook."""

    event_name = models.CharField(max_length=100)
    entity_id = models.CharField(max_length=100)
    payload = models.JSONField()

    class Meta:
        app_label = "eventbus_users"
        db_table = f"{PREFIX}event_log"

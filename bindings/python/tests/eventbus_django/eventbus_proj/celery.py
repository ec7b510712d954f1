"""The project's Celery app, laid out as Celery's Django guide does."""

from __future__ import annotations

import os

from celery import Celery

from relaybox.eventbus.celery import add_consumer_option

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eventbus_proj.settings")

app = Celery("eventbus_proj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
add_consumer_option(app)

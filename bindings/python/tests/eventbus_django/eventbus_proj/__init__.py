"""The Django project of the event bus tests (Celery app in :mod:`eventbus_proj.celery`)."""

from __future__ import annotations

from .celery import app as celery_app

__all__ = ["celery_app"]

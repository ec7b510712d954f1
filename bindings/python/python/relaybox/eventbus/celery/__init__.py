"""Celery integration of the event bus: task bases and the worker consumer.

- :class:`CeleryTaskWithCallback`: the body in an outbox transaction, its
  success or failure event published through the outbox;
- :class:`DjangoCeleryTaskWithCallback` (also importable from
  ``relaybox.eventbus.celery.tasks``): the same inside Django's
  ``transaction.atomic()``, with ``get_instance`` and ``delete_on_success`` /
  ``delete_on_failure``;
- :class:`SQSConsumer`: ``celery -A proj worker -Q user_events
  --consumer=relaybox.eventbus.celery.SQSConsumer`` (after
  :func:`add_consumer_option`, or with the ``worker_consumer`` setting) runs the
  subscribers of those queues through relaybox's idempotent consumer.
"""

from __future__ import annotations

from .consumer import CONSUMER_PATH, SQSConsumer, add_consumer_option
from .tasks import PUBLISHER_SETTING, CeleryTaskWithCallback, DjangoCeleryTaskWithCallback

__all__ = [
    "CONSUMER_PATH",
    "PUBLISHER_SETTING",
    "CeleryTaskWithCallback",
    "DjangoCeleryTaskWithCallback",
    "SQSConsumer",
    "add_consumer_option",
]

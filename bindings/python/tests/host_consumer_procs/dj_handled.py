"""The Django model of the consumer guarantee tests: one ``{prefix}handled`` row per
handled message (``RELAYBOX_DJANGO_TEST_PREFIX``), an unmanaged table the tests create.

:func:`handled_model` defines the model on first use, after ``django.setup()``.
"""

from __future__ import annotations

import functools
import os
from typing import Any


@functools.cache
def handled_model() -> Any:
    """The ``Handled`` model: ``message_id``, ``key``, ``seq``; ``id`` in commit order."""
    from django.db import models

    prefix = os.environ["RELAYBOX_DJANGO_TEST_PREFIX"]

    class Handled(models.Model):  # type: ignore[misc]
        message_id = models.TextField()
        key = models.TextField()
        seq = models.IntegerField()

        class Meta:
            app_label = "relaybox_tests"
            db_table = f"{prefix}handled"
            managed = False

    return Handled


def create_table_sql() -> str:
    """The ``CREATE TABLE`` of the model's table."""
    prefix = os.environ["RELAYBOX_DJANGO_TEST_PREFIX"]
    return (
        f"CREATE TABLE {prefix}handled (id bigserial PRIMARY KEY, message_id text NOT NULL, "
        "key text NOT NULL, seq int NOT NULL)"
    )

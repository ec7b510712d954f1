"""A handler for ``manage.py relaybox_consumer`` in the tests: one shipment row per message."""

from __future__ import annotations

import os

from django.db import connection

import relaybox


def ship(message: relaybox.Message) -> None:
    prefix = os.environ["RELAYBOX_DJANGO_TEST_PREFIX"]
    with connection.cursor() as cursor:
        cursor.execute(
            f'INSERT INTO {prefix}shipments (message_id, "order") VALUES (%s, %s)',
            [message.id, message.json()["id"]],
        )

"""relaybox in Django: add ``"relaybox.django"`` to ``INSTALLED_APPS``.

- ``manage.py migrate`` creates the relaybox tables (from the core's SQL);
- :func:`enqueue` / :func:`enqueue_batch` write events on Django's connection,
  inside the current ``transaction.atomic()`` block: they commit with your rows;
- :class:`Consumer` runs each handler inside ``transaction.atomic()`` with the
  message's inbox row;
- ``manage.py relaybox_relay`` and ``manage.py relaybox_consumer`` run them.

Settings (all optional)::

    RELAYBOX = {
        "URL": None,             # default: built from DATABASES[DATABASE]
        "DATABASE": "default",   # the Django alias holding the tables
        "TABLE_PREFIX": "relaybox_",
        "PARTITIONS": 16,
        "TRANSPORT": "database", # or "kafka", or relaybox.Kafka(...)
        "OPTIONS": {},           # more relaybox.Outbox keywords (max_connections, ...)
        "RELAY": {},             # relaybox.Relay keywords for relaybox_relay
    }
"""

from __future__ import annotations

from ._conf import close_outbox, get_outbox
from ._consumer import Consumer
from ._enqueue import enqueue, enqueue_batch

__all__ = ["Consumer", "close_outbox", "enqueue", "enqueue_batch", "get_outbox"]

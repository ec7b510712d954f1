"""An application module for the CLI tests: one handler recording notes in a table.

Its topic and table come from ``CLI_APP_TOPIC`` and ``CLI_APP_TABLE``; the
broker, database and table prefix from the façade's usual variables.
"""

from __future__ import annotations

import os
from typing import Any

import relaybox
from relaybox import messaging

TOPIC = os.environ["CLI_APP_TOPIC"]
TABLE = os.environ["CLI_APP_TABLE"]

messaging.configure_messaging(source="cli-app")


@messaging.message_handler(topic=TOPIC, group="cli-app", retry_delay=0.05)
def record(message: dict[str, Any], db: relaybox.Transaction) -> None:
    """Insert the note of each message."""
    db.execute(f"INSERT INTO {TABLE} (note) VALUES ($1)", [message["note"]])

"""Keyword settings to the core's JSON config form (internal)."""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

DURATION_FIELDS = frozenset(
    {
        "poll_interval",
        "lease_ttl",
        "backoff_initial",
        "backoff_max",
        "publish_timeout",
        "retention",
        "idempotency_window",
        "log_retention",
        "dead_letter_retention",
        "metrics_interval",
        "retry_delay",
        "retry_delay_max",
        "inbox_retention",
    }
)


def to_json(settings: dict[str, Any]) -> str:
    """JSON of the settings that are not ``None``; durations in seconds become ``"<n>ms"``."""
    out: dict[str, Any] = {}
    for name, value in settings.items():
        if value is None:
            continue
        if isinstance(value, _dt.timedelta):
            value = value.total_seconds()
        if (
            name in DURATION_FIELDS
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
        ):
            value = f"{round(value * 1000)}ms"
        out[name] = value
    return json.dumps(out)

"""The Python half of the bridge from the Rust core's logs to :mod:`logging`.

The native module (``src/logging.rs``) filters the core's ``tracing`` events
against a snapshot of the ``relaybox`` logger tree, queues those that pass, and
one forwarding thread of its own calls :func:`_emit` with a batch of them while
holding the GIL; :func:`_snapshot` is how it reads the logger levels (once a
second, and when an outbox is opened or a relay or consumer started). Nothing
here is public API: configure the ``relaybox`` loggers with the standard
:mod:`logging` calls (see docs/python.md, "Logging").
"""

from __future__ import annotations

import logging
import traceback
from typing import Optional

__all__ = ["FIELDS", "TRACE"]

TRACE = 5
"""The level of the core's ``TRACE`` events, below :data:`logging.DEBUG`."""

FIELDS = "relaybox_fields"
"""The :class:`logging.LogRecord` attribute holding an event's fields as a dict."""

ROOT = "relaybox"

if logging.getLevelName(TRACE) == f"Level {TRACE}":
    logging.addLevelName(TRACE, "TRACE")

Event = tuple[str, int, str, dict[str, object], str, int, float, Optional[str]]
"""``(logger, level, message, fields, pathname, lineno, created, thread name)``."""


def _snapshot() -> tuple[int, int, list[tuple[str, int, bool]]]:
    """The logging state the native filter needs, without creating any logger.

    Returns the root logger's level, :func:`logging.disable`'s level, and
    ``(name, level, disabled)`` of every existing logger named ``relaybox`` or
    ``relaybox.*``.
    """
    manager = logging.Logger.manager
    loggers = [
        (name, logger.level, logger.disabled)
        for name, logger in list(manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and (name == ROOT or name.startswith(ROOT + "."))
    ]
    return logging.root.level, manager.disable, loggers


def _emit(events: list[Event]) -> None:
    """Hands core events to their loggers (called by the forwarding thread)."""
    for name, level, message, fields, pathname, lineno, created, thread in events:
        logger = logging.getLogger(name)
        if not logger.isEnabledFor(level):
            continue
        try:
            record = logger.makeRecord(
                name, level, pathname, lineno, message, (), None, extra={FIELDS: fields}
            )
            # The event happened on a core thread before it was queued: keep its time.
            record.relativeCreated -= (record.created - created) * 1000.0
            record.created = created
            record.msecs = int((created - int(created)) * 1000) + 0.0
            if thread is not None:
                record.threadName = thread
            logger.handle(record)
        except Exception:
            # As logging.Handler.handleError does: report, never raise into the core.
            if logging.raiseExceptions:
                traceback.print_exc()

"""Enqueue on Django's connection, inside ``transaction.atomic()``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Optional

from django.db import connections

from .._host import (
    IDENTITY_SQL,
    check_same,
    one,
    outbox_identity,
    run_statements,
    statements,
)
from .._spec import EnqueueOptions
from ..errors import ConfigError
from ._conf import alias, get_outbox

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["enqueue", "enqueue_batch"]

_NAME = "relaybox.django"

# (alias, id(store)) -> checked: a Django alias always reaches the same database.
_checked: set[tuple[str, int]] = set()


def _connection(using: Optional[str]) -> Any:
    name = using or alias()
    conn = connections[name]
    if conn.vendor != "postgresql":
        raise ConfigError(
            f"{_NAME}: the Django database {name!r} is {conn.vendor}, the outbox PostgreSQL: "
            "the event would not commit with your rows"
        )
    if not conn.in_atomic_block and conn.get_autocommit():
        raise ConfigError(
            f"{_NAME}.enqueue runs outside transaction.atomic() on database {name!r}: in "
            "autocommit the event would commit on its own, whatever happens to your rows. "
            "Wrap the writes and the enqueue in `with transaction.atomic():` (or use "
            "ATOMIC_REQUESTS)"
        )
    return conn


def enqueue_batch(
    messages: Iterable[Mapping[str, Any]], *, using: Optional[str] = None
) -> list[str]:
    """Write many messages in the current ``transaction.atomic()`` block; return their ids.

    ``using`` is the Django database alias (default: ``RELAYBOX["DATABASE"]``, else
    ``"default"``); it must reach the outbox's database. Each item of ``messages``
    holds ``topic``, ``payload`` and the keywords of :func:`enqueue`; all are
    validated before any is written. The rows and the wake-up ``NOTIFY`` commit when
    the outermost ``atomic()`` commits, and vanish when it rolls back (a savepoint
    rolled back discards the rows written inside it).
    """
    items = list(messages)
    conn = _connection(using)
    outbox = get_outbox()
    planned = statements(outbox, items, "percent", _NAME)
    if not planned:
        return []
    with conn.cursor() as cursor:
        key = (conn.alias, id(outbox._store))
        if key not in _checked:
            cursor.execute(IDENTITY_SQL)
            check_same(tuple(cursor.fetchone()), outbox_identity(outbox), _NAME)
            _checked.add(key)
        return run_statements(cursor.execute, planned)


def enqueue(
    topic: str, payload: Any, *, using: Optional[str] = None, **options: Unpack[EnqueueOptions]
) -> str:
    """Write one message in the current ``transaction.atomic()`` block; return its id.

    Keywords are those of :meth:`relaybox.Transaction.enqueue`; see :func:`enqueue_batch`.
    Outside ``atomic()`` (autocommit) it raises :class:`relaybox.ConfigError` and
    writes nothing.
    """
    return enqueue_batch(one(topic, payload, options), using=using)[0]

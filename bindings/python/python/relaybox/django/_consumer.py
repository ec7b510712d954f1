"""The consumer in host-transaction mode on Django.

For each delivery the core hands over the message and the statement that
records it in the inbox. On the worker thread's Django connection, inside
``transaction.atomic()``: the inbox statement runs first; no row inserted means
the group had the message (a duplicate: the block rolls back, the handler is not
called); otherwise the handler runs and leaving the block commits. Only then does
the core acknowledge the delivery. An exception rolls the block back and the core
retries the message, then dead-letters it.

Consecutive messages of one key may come together: they share one ``atomic()``
block (one inbox statement for all of them, then the handler of each new one)
and one commit. An
exception rolls all of them back; the core hands the messages before the
failing one over again one at a time, each in a block of its own, and retries
the failing one alone.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable, Optional

from django.db import close_old_connections, connections, transaction

from .. import _native
from .. import consumer as _consumer
from ..consumer import ConsumerOptions, _HostMode, _NewIds, _RunFailed
from ..errors import ConfigError
from ..outbox import AnyOutbox
from ..transport import Transport
from ._conf import alias, get_outbox
from ._conf import transport as default_transport

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Consumer"]

DjangoHandler = Callable[[_native.Message], Any]
"""``handler(message)``: writes through the ORM; runs inside ``transaction.atomic()``."""


class _Duplicate(Exception):
    """The inbox already holds the message: roll back, skip the handler."""


class Consumer(_HostMode, _consumer.Consumer):
    """Reads ``topic`` as ``group`` and calls ``handler(message)`` inside ``atomic()``.

    The block already holds the message's inbox row: the handler's ORM writes
    commit with it when the handler returns (do not commit yourself; nested
    ``atomic()`` blocks are savepoints, as usual). A redelivered message is
    skipped; an exception rolls everything back, retries the message and finally
    dead-letters it (:class:`relaybox.Reject`: at once). ``using`` is the Django
    database alias (default ``RELAYBOX["DATABASE"]`` or ``"default"``), which must
    be the outbox's database; ``outbox`` defaults to :func:`relaybox.django.get_outbox`,
    ``transport`` to ``RELAYBOX["TRANSPORT"]``. Other settings as
    :class:`relaybox.Consumer`.

    Handlers run on relaybox's worker threads, each with its own Django
    connection; connections are closed after each message (or run of messages)
    according to ``CONN_MAX_AGE`` (``django.db.close_old_connections``), as after
    a request. Consecutive messages of one key may share one ``atomic()`` block;
    when one of them raises, all of them roll back, those before it run again
    one per block, and it is retried alone.
    """

    _placeholders = "percent"

    def __init__(
        self,
        topic: str,
        handler: DjangoHandler,
        *,
        group: str,
        using: Optional[str] = None,
        outbox: Optional[AnyOutbox] = None,
        transport: Transport = None,
        **options: Unpack[ConsumerOptions],
    ) -> None:
        if inspect.iscoroutinefunction(handler):
            raise TypeError("relaybox.django.Consumer needs a plain (not async) handler")
        box = outbox if outbox is not None else get_outbox()
        if box.dialect != "postgres":
            raise ConfigError(
                f"relaybox.django consumers record the inbox in PostgreSQL; "
                f"this outbox is on {box.dialect}"
            )
        self._using = using or alias()
        if connections[self._using].vendor != "postgresql":
            raise ConfigError(
                f"relaybox.django: the Django database {self._using!r} is not PostgreSQL"
            )
        super().__init__(
            box,
            topic,
            handler,
            group=group,
            transport=transport if transport is not None else default_transport(),
            **options,
        )
        # The base class wraps the handler in its `process` span.
        self._django_handler = self._handler

    def _host_call(self, message: _native.Message, sql: str, params: Any) -> str:
        close_old_connections()
        try:
            with transaction.atomic(using=self._using):
                with connections[self._using].cursor() as cursor:
                    cursor.execute(sql, params)
                    if cursor.rowcount == 0:
                        raise _Duplicate
                result = self._django_handler(message)
                if inspect.isawaitable(result):
                    raise TypeError("the handler returned an awaitable; use a plain function")
            return "processed"
        except _Duplicate:
            return "duplicate"
        finally:
            close_old_connections()

    def _host_call_run(self, messages: list[_native.Message], sql: str, params: Any) -> list[str]:
        close_old_connections()
        try:
            outcomes: list[str] = []
            with transaction.atomic(using=self._using):
                with connections[self._using].cursor() as cursor:
                    cursor.execute(sql, params)
                    new = _NewIds(cursor.fetchall())
                for index, message in enumerate(messages):
                    if not new.take(message):
                        outcomes.append("duplicate")
                        continue
                    try:
                        result = self._django_handler(message)
                        if inspect.isawaitable(result):
                            raise TypeError(
                                "the handler returned an awaitable; use a plain function"
                            )
                    except Exception as error:
                        raise _RunFailed(index) from error
                    outcomes.append("processed")
            return outcomes
        finally:
            close_old_connections()

"""The transactional outbox: :class:`Outbox` and its transactions."""

from __future__ import annotations

import contextvars
import datetime as _dt
import json
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Optional, Union

from . import _native
from ._spec import Delay, message_spec

__all__ = ["Outbox", "Transaction", "AsyncTransaction", "TransactionScope", "current_transaction"]

Params = Optional[Sequence[Any]]
Row = dict[str, Any]

_current: contextvars.ContextVar[Union[Transaction, AsyncTransaction, None]] = (
    contextvars.ContextVar("relaybox_current_transaction", default=None)
)


def current_transaction() -> Union[Transaction, AsyncTransaction, None]:
    """The relaybox transaction of the innermost ``outbox.transaction()`` block, if any."""
    return _current.get()


def _options(
    table_prefix: Optional[str],
    partitions: Optional[int],
    max_connections: Optional[int],
    min_connections: Optional[int],
    max_payload_bytes: Optional[int],
    connect_timeout: Optional[float],
) -> Optional[str]:
    options: dict[str, Any] = {}
    if table_prefix is not None:
        options["table_prefix"] = table_prefix
    if partitions is not None:
        options["partitions"] = partitions
    if max_connections is not None:
        options["max_connections"] = max_connections
    if min_connections is not None:
        options["min_connections"] = min_connections
    if max_payload_bytes is not None:
        options["max_payload_bytes"] = max_payload_bytes
    if connect_timeout is not None:
        options["connect_timeout"] = f"{round(connect_timeout * 1000)}ms"
    return json.dumps(options) if options else None


class Outbox:
    """An outbox in a PostgreSQL or SQLite database.

    ``Outbox(url)`` connects (``postgres://...`` or ``sqlite://path?mode=rwc``);
    pass ``migrate=True`` to create or update the tables. In async code use
    ``await Outbox.open(url)`` instead, which does not block the event loop.

    Write business rows and events atomically::

        with outbox.transaction() as tx:
            tx.execute("INSERT INTO orders (id) VALUES ($1)", [42])
            tx.enqueue("orders", {"id": 42}, key="42", type="OrderPlaced")
    """

    def __init__(
        self,
        url: str,
        *,
        migrate: bool = False,
        table_prefix: Optional[str] = None,
        partitions: Optional[int] = None,
        max_connections: Optional[int] = None,
        min_connections: Optional[int] = None,
        max_payload_bytes: Optional[int] = None,
        connect_timeout: Optional[float] = None,
        _store: Optional[_native.Store] = None,
    ) -> None:
        if _store is None:
            options = _options(
                table_prefix,
                partitions,
                max_connections,
                min_connections,
                max_payload_bytes,
                connect_timeout,
            )
            _store = _native.Store.open(url, options, migrate)
        self._store = _store

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        migrate: bool = False,
        table_prefix: Optional[str] = None,
        partitions: Optional[int] = None,
        max_connections: Optional[int] = None,
        min_connections: Optional[int] = None,
        max_payload_bytes: Optional[int] = None,
        connect_timeout: Optional[float] = None,
    ) -> Outbox:
        """Connect without blocking the event loop (same arguments as the constructor)."""
        options = _options(
            table_prefix,
            partitions,
            max_connections,
            min_connections,
            max_payload_bytes,
            connect_timeout,
        )
        store = await _native.Store.open_async(url, options, migrate)
        return cls(url, _store=store)

    @property
    def url(self) -> str:
        """The database URL with its password redacted."""
        return self._store.url

    @property
    def dialect(self) -> str:
        """``"postgres"`` or ``"sqlite"``."""
        return self._store.dialect

    @property
    def table_prefix(self) -> str:
        """Prefix of relaybox's tables."""
        return self._store.table_prefix

    def migrate(self) -> None:
        """Create or update relaybox's tables (idempotent)."""
        self._store.migrate()

    async def migrate_async(self) -> None:
        """:meth:`migrate` without blocking the event loop."""
        await self._store.migrate_async()

    def transaction(self) -> TransactionScope:
        """A transaction for ``with`` (yields :class:`Transaction`) or ``async with``.

        ``async with`` yields an :class:`AsyncTransaction`. The block commits
        when it exits normally and rolls back when it raises, unless the
        transaction was already committed or rolled back inside it.
        """
        return TransactionScope(self)

    def begin(self) -> Transaction:
        """Begin a transaction you commit or roll back yourself."""
        return Transaction(self._store.begin())

    async def begin_async(self) -> AsyncTransaction:
        """Begin an :class:`AsyncTransaction` you commit or roll back yourself."""
        return AsyncTransaction(await self._store.begin_async())

    def enqueue(
        self,
        topic: str,
        payload: Any,
        *,
        key: Optional[Any] = None,
        type: Optional[str] = None,  # noqa: A002
        headers: Optional[Mapping[str, str]] = None,
        content_type: Optional[str] = None,
        delay: Delay = None,
        available_at: Optional[_dt.datetime] = None,
    ) -> str:
        """Enqueue one message in a transaction of its own; return its id."""
        with self.transaction() as tx:
            return tx.enqueue(
                topic,
                payload,
                key=key,
                type=type,
                headers=headers,
                content_type=content_type,
                delay=delay,
                available_at=available_at,
            )

    async def enqueue_async(
        self,
        topic: str,
        payload: Any,
        *,
        key: Optional[Any] = None,
        type: Optional[str] = None,  # noqa: A002
        headers: Optional[Mapping[str, str]] = None,
        content_type: Optional[str] = None,
        delay: Delay = None,
        available_at: Optional[_dt.datetime] = None,
    ) -> str:
        """:meth:`enqueue` without blocking the event loop."""
        async with self.transaction() as tx:
            return await tx.enqueue(
                topic,
                payload,
                key=key,
                type=type,
                headers=headers,
                content_type=content_type,
                delay=delay,
                available_at=available_at,
            )

    def insert_statement(
        self,
        topic: str,
        payload: Any,
        *,
        placeholders: str = "percent",
        key: Optional[Any] = None,
        type: Optional[str] = None,  # noqa: A002
        headers: Optional[Mapping[str, str]] = None,
        content_type: Optional[str] = None,
        delay: Delay = None,
        available_at: Optional[_dt.datetime] = None,
    ) -> tuple[str, tuple[Any, ...], str]:
        """The outbox INSERT of one message for your own driver: ``(sql, params, message_id)``.

        ``placeholders`` is ``"percent"`` (``%s``, psycopg), ``"dollar"``
        (``$1``) or ``"question"`` (``?``). The message is validated first.
        """
        spec = message_spec(
            topic,
            payload,
            key=key,
            type=type,
            headers=headers,
            content_type=content_type,
            delay=delay,
            available_at=available_at,
        )
        return self._store.insert_statement(spec, placeholders)

    @property
    def wake_statement(self) -> Optional[str]:
        """SQL to run in your own transaction so relays wake when it commits (PostgreSQL)."""
        return self._store.wake_statement

    def wake_relays(self) -> None:
        """Tell relays that rows were committed by your own driver."""
        self._store.wake_relays()

    def pending_count(self) -> int:
        """Number of undelivered outbox rows."""
        return self._store.pending_count()

    def status(self) -> dict[str, Any]:
        """Backlog per topic, dead letters and lease owners."""
        status: dict[str, Any] = self._store.status()
        return status

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """Up to ``limit`` dead letters, oldest first."""
        letters: list[dict[str, Any]] = self._store.dead_letters(limit)
        return letters

    def retry_dead_letters(self, ids: Optional[Iterable[str]] = None) -> int:
        """Put dead letters (all, or those of ``ids``) back into the outbox; return how many."""
        return self._store.retry_dead_letters(None if ids is None else list(ids))

    def purge_dead_letters(self, ids: Optional[Iterable[str]] = None) -> int:
        """Delete dead letters (all, or those of ``ids``); return how many."""
        return self._store.purge_dead_letters(None if ids is None else list(ids))

    def close(self) -> None:
        """Close the connection pool; later calls raise :class:`relaybox.ClosedError`."""
        self._store.close()

    async def close_async(self) -> None:
        """:meth:`close` without blocking the event loop."""
        await self._store.close_async()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._store.closed

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Outbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close_async()

    def __repr__(self) -> str:
        return f"Outbox(url={self.url!r})"


class Transaction:
    """A database transaction: your business writes and the events about them.

    Parameters use the database's placeholders: ``$1, $2`` on PostgreSQL,
    ``?1`` or ``?`` on SQLite. Uncommitted when garbage-collected: rolled back.
    """

    def __init__(self, native: _native.Transaction) -> None:
        self._tx = native

    def execute(self, sql: str, params: Params = None) -> int:
        """Run a statement; return the number of rows affected."""
        return self._tx.execute(sql, params)

    def query(self, sql: str, params: Params = None) -> list[Row]:
        """Run a query; return its rows as dicts."""
        rows: list[Row] = self._tx.query(sql, params)
        return rows

    def enqueue(
        self,
        topic: str,
        payload: Any,
        *,
        key: Optional[Any] = None,
        type: Optional[str] = None,  # noqa: A002
        headers: Optional[Mapping[str, str]] = None,
        content_type: Optional[str] = None,
        delay: Delay = None,
        available_at: Optional[_dt.datetime] = None,
    ) -> str:
        """Write one message to the outbox in this transaction; return its id.

        ``payload`` may be ``bytes`` (sent untouched), ``str``, a pydantic
        model, a dataclass or any JSON-serialisable value. Messages with the
        same ``key`` are delivered in order. ``delay`` (seconds or a
        ``timedelta``) or ``available_at`` postpone delivery.
        """
        spec = message_spec(
            topic,
            payload,
            key=key,
            type=type,
            headers=headers,
            content_type=content_type,
            delay=delay,
            available_at=available_at,
        )
        return self._tx.enqueue(spec)

    def enqueue_batch(self, messages: Iterable[Mapping[str, Any]]) -> list[str]:
        """Write many messages in one statement (all or none); return their ids.

        Each item is a mapping with the keyword arguments of :meth:`enqueue`
        (``topic`` and ``payload`` required).
        """
        return self._tx.enqueue_batch([message_spec(**m) for m in messages])

    def commit(self) -> None:
        """Commit: the business writes and the enqueued messages become durable together."""
        self._tx.commit()

    def rollback(self) -> None:
        """Roll back: nothing written in this transaction remains."""
        self._tx.rollback()


class AsyncTransaction:
    """:class:`Transaction` with awaitable methods, for ``async`` code."""

    def __init__(self, native: _native.Transaction) -> None:
        self._tx = native

    async def execute(self, sql: str, params: Params = None) -> int:
        """Run a statement; return the number of rows affected."""
        result: int = await self._tx.execute_async(sql, params)
        return result

    async def query(self, sql: str, params: Params = None) -> list[Row]:
        """Run a query; return its rows as dicts."""
        rows: list[Row] = await self._tx.query_async(sql, params)
        return rows

    async def enqueue(
        self,
        topic: str,
        payload: Any,
        *,
        key: Optional[Any] = None,
        type: Optional[str] = None,  # noqa: A002
        headers: Optional[Mapping[str, str]] = None,
        content_type: Optional[str] = None,
        delay: Delay = None,
        available_at: Optional[_dt.datetime] = None,
    ) -> str:
        """Write one message to the outbox in this transaction; return its id."""
        spec = message_spec(
            topic,
            payload,
            key=key,
            type=type,
            headers=headers,
            content_type=content_type,
            delay=delay,
            available_at=available_at,
        )
        message_id: str = await self._tx.enqueue_async(spec)
        return message_id

    async def enqueue_batch(self, messages: Iterable[Mapping[str, Any]]) -> list[str]:
        """Write many messages in one statement (all or none); return their ids."""
        ids: list[str] = await self._tx.enqueue_batch_async([message_spec(**m) for m in messages])
        return ids

    async def commit(self) -> None:
        """Commit."""
        await self._tx.commit_async()

    async def rollback(self) -> None:
        """Roll back."""
        await self._tx.rollback_async()


class TransactionScope:
    """What :meth:`Outbox.transaction` returns: use with ``with`` or ``async with``."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._sync: Optional[Transaction] = None
        self._async: Optional[AsyncTransaction] = None
        self._token: Optional[contextvars.Token[Any]] = None

    def __enter__(self) -> Transaction:
        self._sync = self._outbox.begin()
        self._token = _current.set(self._sync)
        return self._sync

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        assert self._sync is not None and self._token is not None
        _current.reset(self._token)
        if self._sync._tx.is_finished():
            return
        if exc_type is None:
            self._sync.commit()
        else:
            self._sync.rollback()

    async def __aenter__(self) -> AsyncTransaction:
        self._async = await self._outbox.begin_async()
        self._token = _current.set(self._async)
        return self._async

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        assert self._async is not None and self._token is not None
        _current.reset(self._token)
        if self._async._tx.is_finished():
            return
        if exc_type is None:
            await self._async.commit()
        else:
            await self._async.rollback()

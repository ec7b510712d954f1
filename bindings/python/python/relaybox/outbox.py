"""The transactional outbox: :class:`Outbox` and :class:`AsyncOutbox`, and their transactions.

One rule holds across relaybox's Python API: a class that waits on I/O comes
as a sync class and an ``Async…`` class beside it whose methods of the same
names are awaitable (:class:`Outbox` / :class:`AsyncOutbox`,
:class:`Transaction` / :class:`AsyncTransaction`, :class:`relaybox.Relay` /
:class:`relaybox.AsyncRelay`, :class:`relaybox.Consumer` /
:class:`relaybox.AsyncConsumer`); a module function that waits on I/O is
``f`` when it blocks and ``f_async`` when it is awaitable.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Optional, TypedDict, Union

from . import _native
from ._spec import EnqueueOptions, message_spec

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "AnyOutbox",
    "AsyncOutbox",
    "AsyncTransaction",
    "AsyncTransactionScope",
    "EnqueueOptions",
    "Outbox",
    "OutboxOptions",
    "Transaction",
    "TransactionScope",
    "current_transaction",
]

Params = Optional[Sequence[Any]]
Row = dict[str, Any]

_current: contextvars.ContextVar[Union[Transaction, AsyncTransaction, None]] = (
    contextvars.ContextVar("relaybox_current_transaction", default=None)
)


def current_transaction() -> Union[Transaction, AsyncTransaction, None]:
    """The relaybox transaction of the innermost ``outbox.transaction()`` block, if any."""
    return _current.get()


class OutboxOptions(TypedDict, total=False):
    """The settings of an outbox's connection pool and tables; each is optional."""

    table_prefix: Optional[str]
    """Prefix of relaybox's table names (default ``relaybox_``)."""
    partitions: Optional[int]
    """Outbox partitions (leases) a new schema creates (default 16)."""
    max_connections: Optional[int]
    """Largest number of pooled connections."""
    min_connections: Optional[int]
    """Connections kept open when idle."""
    max_payload_bytes: Optional[int]
    """Largest payload accepted at enqueue."""
    connect_timeout: Optional[float]
    """Seconds to wait for a connection."""


_OUTBOX_OPTIONS = frozenset(OutboxOptions.__annotations__)


def _options(options: OutboxOptions) -> Optional[str]:
    """The native store's JSON options; an unknown keyword is a ``TypeError``."""
    unknown = set(options) - _OUTBOX_OPTIONS
    if unknown:
        raise TypeError(f"unexpected outbox setting(s): {', '.join(sorted(unknown))}")
    native: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    timeout = native.pop("connect_timeout", None)
    if timeout is not None:
        native["connect_timeout"] = f"{round(timeout * 1000)}ms"
    return json.dumps(native) if native else None


class _OutboxBase:
    """What :class:`Outbox` and :class:`AsyncOutbox` share: the pool and what needs no I/O."""

    def __init__(self, store: _native.Store) -> None:
        self._store = store

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

    @property
    def closed(self) -> bool:
        """Whether the pool was closed."""
        return self._store.closed

    def insert_statement(
        self,
        topic: str,
        payload: Any,
        *,
        placeholders: str = "percent",
        **options: Unpack[EnqueueOptions],
    ) -> tuple[str, tuple[Any, ...], str]:
        """The outbox INSERT of one message for your own driver: ``(sql, params, message_id)``.

        ``placeholders`` is ``"percent"`` (``%s``, psycopg), ``"dollar"``
        (``$1``) or ``"question"`` (``?``). The message is validated first.
        Keywords: :class:`relaybox.EnqueueOptions`.
        """
        return self._store.insert_statement(message_spec(topic, payload, **options), placeholders)

    @property
    def wake_statement(self) -> Optional[str]:
        """SQL to run in your own transaction so relays wake when it commits (PostgreSQL)."""
        return self._store.wake_statement

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r})"


class Outbox(_OutboxBase):
    """An outbox in a PostgreSQL or SQLite database, for blocking code.

    ``Outbox(url)`` connects (``postgres://...`` or ``sqlite://path?mode=rwc``);
    pass ``migrate=True`` to create or update the tables; other keywords are
    :class:`relaybox.OutboxOptions`. Async code uses
    :class:`AsyncOutbox` (``await AsyncOutbox.open(url)``). Blocking calls
    release the GIL while they wait.

    Write business rows and events atomically::

        with outbox.transaction() as tx:
            tx.execute("INSERT INTO orders (id) VALUES ($1)", [42])
            tx.enqueue("orders", {"id": 42}, key="42", type="OrderPlaced")
    """

    def __init__(
        self, url: str, *, migrate: bool = False, **options: Unpack[OutboxOptions]
    ) -> None:
        super().__init__(_native.Store.open(url, _options(options), migrate))

    @classmethod
    def _of(cls, store: _native.Store) -> Outbox:
        outbox = cls.__new__(cls)
        _OutboxBase.__init__(outbox, store)
        return outbox

    def as_async(self) -> AsyncOutbox:
        """An :class:`AsyncOutbox` on this outbox's connection pool."""
        return AsyncOutbox(self._store)

    def migrate(self) -> None:
        """Create or update relaybox's tables (idempotent)."""
        self._store.migrate()

    def transaction(self) -> TransactionScope:
        """A transaction for ``with``, yielding a :class:`Transaction`.

        The block commits when it exits normally and rolls back when it
        raises, unless the transaction was already committed or rolled back
        inside it.
        """
        return TransactionScope(self)

    def begin(self) -> Transaction:
        """Begin a transaction you commit or roll back yourself."""
        return Transaction(self._store.begin())

    def enqueue(self, topic: str, payload: Any, **options: Unpack[EnqueueOptions]) -> str:
        """Enqueue one message in a transaction of its own; return its id.

        Keywords: :class:`relaybox.EnqueueOptions`.
        """
        with self.transaction() as tx:
            return tx.enqueue(topic, payload, **options)

    def wake_relays(self) -> None:
        """Tell this process's relays that rows were committed by your own driver."""
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

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncOutbox(_OutboxBase):
    """:class:`Outbox` for ``async`` code: the same methods, awaitable.

    Open one with ``await AsyncOutbox.open(url)`` (the same arguments as
    :class:`Outbox`); nothing blocks the event loop::

        outbox = await relaybox.AsyncOutbox.open(url, migrate=True)
        async with outbox.transaction() as tx:
            await tx.execute("INSERT INTO orders (id) VALUES ($1)", [42])
            await tx.enqueue("orders", {"id": 42}, key="42")
    """

    def __init__(self, store: _native.Store) -> None:
        if not isinstance(store, _native.Store):
            raise TypeError(
                "AsyncOutbox is opened with `await relaybox.AsyncOutbox.open(url)` "
                "(or `outbox.as_async()` of an Outbox)"
            )
        super().__init__(store)

    @classmethod
    async def open(
        cls, url: str, *, migrate: bool = False, **options: Unpack[OutboxOptions]
    ) -> AsyncOutbox:
        """Connect (the arguments of :class:`Outbox`)."""
        return cls(await _native.Store.open_async(url, _options(options), migrate))

    def as_sync(self) -> Outbox:
        """An :class:`Outbox` on this outbox's connection pool."""
        return Outbox._of(self._store)

    async def migrate(self) -> None:
        """Create or update relaybox's tables (idempotent)."""
        await self._store.migrate_async()

    def transaction(self) -> AsyncTransactionScope:
        """A transaction for ``async with``, yielding an :class:`AsyncTransaction`.

        It commits when the block exits normally and rolls back when it raises.
        """
        return AsyncTransactionScope(self)

    async def begin(self) -> AsyncTransaction:
        """Begin a transaction you commit or roll back yourself."""
        return AsyncTransaction(await self._store.begin_async())

    async def enqueue(self, topic: str, payload: Any, **options: Unpack[EnqueueOptions]) -> str:
        """Enqueue one message in a transaction of its own; return its id."""
        async with self.transaction() as tx:
            return await tx.enqueue(topic, payload, **options)

    async def wake_relays(self) -> None:
        """Tell this process's relays that rows were committed by your own driver."""
        self._store.wake_relays()

    async def pending_count(self) -> int:
        """Number of undelivered outbox rows."""
        return await self._store.pending_count_async()

    async def status(self) -> dict[str, Any]:
        """Backlog per topic, dead letters and lease owners."""
        status: dict[str, Any] = await self._store.status_async()
        return status

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """Up to ``limit`` dead letters, oldest first."""
        letters: list[dict[str, Any]] = await self._store.dead_letters_async(limit)
        return letters

    async def retry_dead_letters(self, ids: Optional[Iterable[str]] = None) -> int:
        """Put dead letters (all, or those of ``ids``) back into the outbox; return how many."""
        return await self._store.retry_dead_letters_async(None if ids is None else list(ids))

    async def purge_dead_letters(self, ids: Optional[Iterable[str]] = None) -> int:
        """Delete dead letters (all, or those of ``ids``); return how many."""
        return await self._store.purge_dead_letters_async(None if ids is None else list(ids))

    async def close(self) -> None:
        """Close the connection pool; later calls raise :class:`relaybox.ClosedError`."""
        await self._store.close_async()

    async def __aenter__(self) -> AsyncOutbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


AnyOutbox = Union[Outbox, AsyncOutbox]
"""Either outbox: relays, consumers and driver integrations accept both."""


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

    def enqueue(self, topic: str, payload: Any, **options: Unpack[EnqueueOptions]) -> str:
        """Write one message to the outbox in this transaction; return its id.

        ``payload`` may be ``bytes`` (sent untouched), ``str``, a pydantic
        model, a dataclass or any JSON-serialisable value. Keywords
        (:class:`relaybox.EnqueueOptions`): messages with the same ``key`` are
        delivered in order; ``delay`` (seconds or a ``timedelta``) or
        ``available_at`` postpone delivery.
        """
        return self._tx.enqueue(message_spec(topic, payload, **options))

    def enqueue_batch(self, messages: Iterable[Mapping[str, Any]]) -> list[str]:
        """Write many messages in one statement (all or none); return their ids.

        Each item is a mapping of ``topic``, ``payload`` and the keywords of
        :meth:`enqueue`.
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

    async def enqueue(self, topic: str, payload: Any, **options: Unpack[EnqueueOptions]) -> str:
        """Write one message to the outbox in this transaction; return its id."""
        message_id: str = await self._tx.enqueue_async(message_spec(topic, payload, **options))
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
    """What :meth:`Outbox.transaction` returns: use with ``with``."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._tx: Optional[Transaction] = None
        self._token: Optional[contextvars.Token[Any]] = None

    def __enter__(self) -> Transaction:
        self._tx = self._outbox.begin()
        self._token = _current.set(self._tx)
        return self._tx

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        assert self._tx is not None and self._token is not None
        _current.reset(self._token)
        if self._tx._tx.is_finished():
            return
        if exc_type is None:
            self._tx.commit()
        else:
            self._tx.rollback()


class AsyncTransactionScope:
    """What :meth:`AsyncOutbox.transaction` returns: use with ``async with``."""

    def __init__(self, outbox: AsyncOutbox) -> None:
        self._outbox = outbox
        self._tx: Optional[AsyncTransaction] = None
        self._token: Optional[contextvars.Token[Any]] = None

    async def __aenter__(self) -> AsyncTransaction:
        self._tx = await self._outbox.begin()
        self._token = _current.set(self._tx)
        return self._tx

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        assert self._tx is not None and self._token is not None
        _current.reset(self._token)
        if self._tx._tx.is_finished():
            return
        if exc_type is None:
            await self._tx.commit()
        else:
            await self._tx.rollback()

"""The idempotent consumer, :class:`Consumer` and :class:`AsyncConsumer`: handled once in effect."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Callable, Generic, Optional, TypedDict, TypeVar

from . import _native, _settings, _tracing
from .outbox import AnyOutbox, AsyncTransaction, Transaction
from .transport import Transport, transport_json

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "AsyncConsumer",
    "AsyncHandler",
    "Consumer",
    "ConsumerOptions",
    "Handler",
    "Message",
]

Message = _native.Message

Handler = Callable[[_native.Message, Transaction], Any]
"""``handler(message, tx)`` of a :class:`Consumer`: a plain function."""

AsyncHandler = Callable[[_native.Message, AsyncTransaction], Awaitable[Any]]
"""``async def handler(message, tx)`` of an :class:`AsyncConsumer`."""

HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])


class ConsumerOptions(TypedDict, total=False):
    """The settings of every consumer (durations in seconds); each is optional."""

    batch_size: Optional[int]
    """Messages read per fetch."""
    concurrency: Optional[int]
    """Lanes handling messages at once (messages of one key share a lane)."""
    max_retries: Optional[int]
    """Retries of a failing message before it is dead-lettered."""
    retry_delay: Optional[float]
    """First retry's delay; it doubles per retry."""
    retry_delay_max: Optional[float]
    """Longest delay between retries."""
    poll_interval: Optional[float]
    """How often an idle consumer of the database transport looks for messages."""
    inbox_retention: Optional[float]
    """How long inbox rows (the processed marks) are kept."""


_OPTIONS = frozenset(ConsumerOptions.__annotations__)


class _LoopThread:
    """A private event loop on a daemon thread, for async handlers of sync programs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="relaybox-handlers", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class _ConsumerBase(Generic[HandlerT]):
    """What :class:`Consumer` and :class:`AsyncConsumer` share: settings, start, counters.

    ``_is_async`` says whether handlers are coroutines, run on the event loop
    that was running at :meth:`start` (or a private loop thread when none was).
    """

    _is_async = False

    def __init__(
        self,
        outbox: AnyOutbox,
        topic: str,
        handler: HandlerT,
        *,
        group: str,
        transport: Transport = None,
        **options: Unpack[ConsumerOptions],
    ) -> None:
        if not callable(handler):
            raise TypeError("handler must be callable")
        if _is_async(handler) != self._is_async:
            raise TypeError(self._wrong_handler())
        self._outbox = outbox
        self._topic = topic
        self._transport = transport_json(transport)
        # Each call runs in a `process` span when OpenTelemetry is installed.
        self._handler = _tracing.traced_handler(
            handler, group, _tracing.messaging_system(self._transport)
        )
        unknown = set(options) - _OPTIONS
        if unknown:
            raise TypeError(f"unexpected consumer setting(s): {', '.join(sorted(unknown))}")
        self._config = _settings.to_json({"group": group, **options})
        self.group = group
        self.topic = topic
        self._native: Optional[_native.Consumer] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_thread: Optional[_LoopThread] = None

    def _wrong_handler(self) -> str:
        if self._is_async:
            return f"{type(self).__name__} needs an `async def` handler"
        return (
            f"{type(self).__name__} needs a plain handler; "
            "an `async def` handler runs in the AsyncConsumer beside it"
        )

    def _start(self) -> None:
        if self._native is not None and self._native.running:
            return
        if self._is_async:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                self._loop_thread = _LoopThread()
                self._loop = self._loop_thread.loop
        try:
            self._native = self._start_native()
        except BaseException:
            self._close_loop()
            raise

    def _start_native(self) -> _native.Consumer:
        """Starts the native consumer (host-transaction consumers start it in host mode)."""
        return _native.Consumer.start(
            self._outbox._store, self._transport, self._topic, self._config, self._call
        )

    def _run_async(self, coroutine: Awaitable[Any]) -> Any:
        """Runs ``coroutine`` on the handlers' loop from a worker thread; its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(_await(coroutine), self._loop).result()

    def _call(self, message: _native.Message, tx: _native.Transaction) -> None:
        if not self._is_async:
            result = self._handler(message, Transaction(tx))
            if inspect.isawaitable(result):
                raise TypeError("the handler returned an awaitable; declare it with `async def`")
            return
        self._run_async(self._handler(message, AsyncTransaction(tx)))

    def _stop_blocking(self) -> None:
        if self._native is None:
            return
        if self._is_async and self._loop_thread is None and _running_loop() is self._loop:
            raise RuntimeError(
                "this consumer's async handlers run on this event loop: use `await consumer.stop()`"
            )
        self._native.stop()
        self._close_loop()

    async def _stop_awaiting(self) -> None:
        if self._native is None:
            return
        await self._native.stop_async()
        self._close_loop()

    def _close_loop(self) -> None:
        if self._loop_thread is not None:
            self._loop_thread.close()
            self._loop_thread = None

    @property
    def running(self) -> bool:
        """Whether the consumer is running."""
        return self._native is not None and self._native.running

    def stats(self) -> dict[str, int]:
        """Counters: processed, duplicates, retried, dead_lettered."""
        if self._native is None:
            return dict.fromkeys(("processed", "duplicates", "retried", "dead_lettered"), 0)
        stats: dict[str, int] = self._native.stats()
        return stats


class Consumer(_ConsumerBase[Handler]):
    """Reads ``topic`` as consumer group ``group`` and calls ``handler(message, tx)``.

    ``tx`` is the :class:`Transaction` holding the inbox row that marks the
    message as processed: write through it and your writes commit atomically
    with that mark. A duplicate delivery is skipped. An exception retries the
    message (``max_retries`` times, from ``retry_delay`` seconds doubling up
    to ``retry_delay_max``), then it goes to dead letters; raising
    :class:`relaybox.Reject` dead-letters it at once.

    Handlers run on relaybox's worker threads. Messages of one key (one Kafka
    partition) are handled in order; up to ``concurrency`` lanes run at once.
    ``async def`` handlers run in :class:`AsyncConsumer`.
    """

    def start(self) -> Consumer:
        """Start consuming (settings are validated here; it returns at once); return ``self``."""
        self._start()
        return self

    def stop(self) -> None:
        """Finish and acknowledge the messages in flight, then stop (blocks until done)."""
        self._stop_blocking()

    def __enter__(self) -> Consumer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class AsyncConsumer(_ConsumerBase[AsyncHandler]):
    """:class:`Consumer` for ``async def handler(message, tx)`` (an :class:`AsyncTransaction`).

    Handlers run on the event loop that is running when the consumer starts
    (or on a private loop thread when none is); ``await consumer.stop()`` or
    ``async with`` stops it without blocking that loop.
    """

    _is_async = True

    def start(self) -> AsyncConsumer:
        """Start consuming (settings are validated here; it returns at once); return ``self``."""
        self._start()
        return self

    async def stop(self) -> None:
        """Finish and acknowledge the messages in flight, then stop."""
        await self._stop_awaiting()

    async def __aenter__(self) -> AsyncConsumer:
        return self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


class _HostMode(_ConsumerBase[Any]):
    """Host-transaction mode: the handler runs in the application's own transaction.

    Each integration names the placeholder style of its driver
    (``_placeholders``) and implements ``_host_call(message, sql, params)``:
    run the inbox statement and the handler in one transaction, commit, and
    return ``"processed"``, or ``"duplicate"`` when the statement inserted no
    row. Mixed in before :class:`Consumer` or :class:`AsyncConsumer`.

    An integration may also implement ``_host_call_run(messages, sql,
    params)`` for consecutive messages of one key: in one transaction, the
    run's inbox statement ``sql``, which returns the id (text) of each message
    it inserted, then the handler of each message whose id it returned
    (:class:`_NewIds` tells them apart); commit once and return one outcome per
    message (``"duplicate"`` for the others). When a handler raises, it rolls everything back and
    raises :class:`_RunFailed` (the message's index) from the handler's
    exception, which counts as that message's first attempt; any other
    exception rolls back and propagates. The core then hands the messages
    before the failed one over again one at a time through ``_host_call``,
    and retries the failed one alone, so retries and dead letters stay per
    message. A subclass that overrides ``_host_call`` alone gets every
    message through it.
    """

    _placeholders: str
    _host_call_run: Callable[[list[_native.Message], str, Any], list[str]]

    def _start_native(self) -> _native.Consumer:
        return _native.Consumer.start_host(
            self._outbox._store,
            self._transport,
            self._topic,
            self._config,
            self._placeholders,
            self._host_call,
            self._run_handler(),
        )

    def _run_handler(self) -> Optional[Callable[[list[_native.Message], str, Any], list[str]]]:
        """``_host_call_run`` when it handles runs as ``_host_call`` handles one message."""
        run_owner = _owner(type(self), "_host_call_run")
        call_owner = _owner(type(self), "_host_call")
        if run_owner is None or call_owner is None or not issubclass(run_owner, call_owner):
            return None
        return self._host_call_run

    def _host_call(self, message: _native.Message, sql: str, params: Any) -> str:
        """Runs one delivery in the application's transaction (see the class)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _host_call")


class _NewIds:
    """The ids a run's inbox statement returned (rows of one text column), each taken once.

    ``take(message)`` is true for the first occurrence of a returned id (the
    message is new: run its handler) and false otherwise (a duplicate).
    """

    __slots__ = ("_ids",)

    def __init__(self, rows: Any) -> None:
        self._ids = {row[0] for row in rows}

    def take(self, message: _native.Message) -> bool:
        """Whether ``message`` is new; a second call for its id says no."""
        try:
            self._ids.remove(message.id)
        except KeyError:
            return False
        return True


class _RunFailed(Exception):
    """A run of host-mode messages rolled back because the handler of message ``index`` raised.

    Raised from the handler's exception (its ``__cause__``).
    """

    def __init__(self, index: int) -> None:
        super().__init__(f"the handler of message {index} of the run raised")
        self.index = index


def _owner(cls: type, name: str) -> Optional[type]:
    """The class of ``cls``'s MRO that defines ``name``, if any."""
    return next((c for c in cls.__mro__ if name in vars(c)), None)


def _is_async(handler: Any) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - callable objects
    return inspect.iscoroutinefunction(call)


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None

"""The idempotent consumer: each message is handled once in effect."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable
from typing import Any, Callable, Optional, Union

from . import _native, _settings
from .outbox import AsyncTransaction, Outbox, Transaction
from .transport import Transport, transport_json

__all__ = ["Consumer", "Handler", "Message"]

Message = _native.Message

Handler = Union[
    Callable[[_native.Message, Transaction], Any],
    Callable[[_native.Message, AsyncTransaction], Awaitable[Any]],
]
"""``handler(message, tx)``: a plain function or an ``async def``."""


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


class Consumer:
    """Reads ``topic`` as consumer group ``group`` and calls ``handler(message, tx)``.

    ``tx`` is the transaction holding the inbox row that marks the message as
    processed: write through it and your writes commit atomically with that
    mark. A duplicate delivery is skipped. An exception retries the message
    (``max_retries`` times, from ``retry_delay`` seconds doubling up to
    ``retry_delay_max``), then it goes to dead letters; raising
    :class:`relaybox.Reject` dead-letters it at once.

    Plain handlers run on relaybox's worker threads with a :class:`Transaction`;
    ``async def`` handlers get an :class:`AsyncTransaction` and run on the event
    loop that was running when the consumer started, or on a private loop
    thread when none was. Messages of one key (one Kafka partition) are handled
    in order; up to ``concurrency`` lanes run at once.
    """

    def __init__(
        self,
        outbox: Outbox,
        topic: str,
        handler: Handler,
        *,
        group: str,
        transport: Transport = None,
        batch_size: Optional[int] = None,
        concurrency: Optional[int] = None,
        max_retries: Optional[int] = None,
        retry_delay: Optional[float] = None,
        retry_delay_max: Optional[float] = None,
        poll_interval: Optional[float] = None,
        inbox_retention: Optional[float] = None,
    ) -> None:
        if not callable(handler):
            raise TypeError("handler must be callable")
        self._outbox = outbox
        self._topic = topic
        self._handler = handler
        self._is_async = _is_async(handler)
        self._transport = transport_json(transport)
        self._config = _settings.to_json(
            {
                "group": group,
                "batch_size": batch_size,
                "concurrency": concurrency,
                "max_retries": max_retries,
                "retry_delay": retry_delay,
                "retry_delay_max": retry_delay_max,
                "poll_interval": poll_interval,
                "inbox_retention": inbox_retention,
            }
        )
        self.group = group
        self.topic = topic
        self._native: Optional[_native.Consumer] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_thread: Optional[_LoopThread] = None

    def start(self) -> Consumer:
        """Start consuming (settings are validated here); return ``self``."""
        if self._native is not None and self._native.running:
            return self
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
        return self

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
            result = self._handler(message, Transaction(tx))  # type: ignore[arg-type]
            if inspect.isawaitable(result):
                raise TypeError("the handler returned an awaitable; declare it with `async def`")
            return
        assert self._loop is not None
        coroutine = self._handler(message, AsyncTransaction(tx))  # type: ignore[arg-type]
        asyncio.run_coroutine_threadsafe(_await(coroutine), self._loop).result()

    def stop(self) -> None:
        """Finish and acknowledge the messages in flight, then stop."""
        if self._native is None:
            return
        if self._is_async and self._loop_thread is None and _running_loop() is self._loop:
            raise RuntimeError(
                "this consumer's async handlers run on this event loop: "
                "use `await consumer.stop_async()`"
            )
        self._native.stop()
        self._close_loop()

    async def stop_async(self) -> None:
        """:meth:`stop` without blocking the event loop."""
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

    def __enter__(self) -> Consumer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def __aenter__(self) -> Consumer:
        return self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop_async()


class _HostConsumer(Consumer):
    """A consumer whose handler runs in the application's own transaction.

    Each subclass names the placeholder style of its driver (``_placeholders``)
    and implements ``_host_call(message, sql, params)``: run the inbox
    statement and the handler in one transaction, commit, and return
    ``"processed"``, or ``"duplicate"`` when the statement inserted no row.
    """

    _placeholders: str

    def _start_native(self) -> _native.Consumer:
        return _native.Consumer.start_host(
            self._outbox._store,
            self._transport,
            self._topic,
            self._config,
            self._placeholders,
            self._host_call,
        )

    def _host_call(self, message: _native.Message, sql: str, params: Any) -> str:
        """Runs one delivery in the application's transaction (see the class)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _host_call")


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

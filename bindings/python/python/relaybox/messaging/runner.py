"""Running the registered handlers: one :class:`relaybox.Consumer` per (handler, topic) and a relay.

The relay moves what this process (or any other) wrote to the outbox to the
broker, so events published here reach the handlers here too; pass
``relay=False`` when relays run elsewhere. Consumers and relay share the
façade's outbox and transport (:func:`~relaybox.messaging.configure_messaging`).
"""

from __future__ import annotations

import asyncio
import select
import signal
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any, Callable, Optional, Union

from ..consumer import AsyncConsumer, Consumer, Message, _ConsumerBase, _is_async
from ..outbox import AnyOutbox
from ..relay import Relay, _RelayBase
from ..transport import Transport
from .brokers import config_error
from .registry import Registration, get_registry
from .settings import get_outbox, get_settings

__all__ = ["ConsumerRunner", "run_consumers", "run_consumers_async", "start_consumers"]

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ConsumerRunner:
    """Consumers for a set of ``(registration, topic)`` pairs, and optionally a relay.

    Created stopped; :meth:`start` it or use it as a context manager
    (``with`` / ``async with``), which stops it on exit. :meth:`request_stop`
    may be called from any thread or a signal handler; :meth:`wait` returns
    once it was.
    """

    def __init__(
        self,
        pairs: Iterable[tuple[Registration, str]],
        *,
        outbox: AnyOutbox,
        transport: Transport,
        relay: bool = True,
        handler_db: Any = None,
    ) -> None:
        self.pairs = list(pairs)
        """The ``(registration, topic)`` pairs consumed."""
        self.outbox = outbox
        """The outbox the consumers and the relay use."""
        self.transport = transport
        """Their transport."""
        self.handler_db = handler_db
        """What handlers' ``db`` is (:attr:`MessagingSettings.handler_db`)."""
        self.consumers: list[_ConsumerBase[Any]] = []
        """The consumers, once started (kept after :meth:`stop` for their :meth:`stats`)."""
        self.relay: Optional[Relay] = Relay(outbox, transport) if relay else None
        """The relay, unless ``relay=False``."""
        self._started = False
        self._stopped = False
        self._stop_requested = False
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_writer.setblocking(False)
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._lock = threading.Lock()

    def _consumer(
        self, registration: Registration, topic: str, handler: Callable[..., Any]
    ) -> _ConsumerBase[Any]:
        options: dict[str, Any] = {
            "group": registration.group,
            "transport": self.transport,
            "max_retries": registration.max_retries,
            "retry_delay": registration.retry_delay,
            "retry_delay_max": registration.retry_delay_max,
        }
        is_async = _is_async(handler)
        if self.handler_db is None:
            kind = AsyncConsumer if is_async else Consumer
            return kind(self.outbox, topic, handler, **options)
        if self.handler_db == "django":
            return _django_consumer(self.outbox, topic, handler, is_async, registration, options)
        from .. import sqlalchemy as _sa

        wants_async = type(self.handler_db).__name__ == "async_sessionmaker"
        if wants_async != is_async:
            raise config_error(
                f"{registration.name}: handler_db is {'an async_' if wants_async else 'a '}"
                f"sessionmaker, so the handler must be {'async def' if wants_async else 'plain'}"
            )
        host = _sa.AsyncConsumer if wants_async else _sa.Consumer
        return host(self.outbox, topic, handler, sessionmaker=self.handler_db, **options)

    def start(self) -> ConsumerRunner:
        """Start the consumers, then the relay; on failure stop what started and re-raise.

        A runner runs once: starting it again does nothing.
        """
        if self._started:
            return self
        self._started = True
        handlers: dict[str, Callable[..., Any]] = {}
        try:
            for registration, topic in self.pairs:
                handler = handlers.get(registration.name)
                if handler is None:
                    handler = handlers[registration.name] = registration.make_handler()
                consumer = self._consumer(registration, topic, handler)
                consumer._start()
                self.consumers.append(consumer)
            if self.relay is not None:
                self.relay.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _parts(self) -> list[Union[_ConsumerBase[Any], _RelayBase]]:
        """What :meth:`stop` stops, in order: the consumers (last started first), the relay."""
        parts: list[Union[_ConsumerBase[Any], _RelayBase]] = list(reversed(self.consumers))
        if self.relay is not None:
            parts.append(self.relay)
        return parts

    def stop(self) -> None:
        """Stop the consumers (finishing messages in flight), then the relay (once)."""
        self.request_stop()
        if self._stopped:
            return
        self._stopped = True
        error: Optional[BaseException] = None
        for part in self._parts():
            try:
                part._stop_blocking()
            except BaseException as exc:  # stop the others, then report the first failure
                error = error or exc
        if error is not None:
            raise error

    async def stop_async(self) -> None:
        """:meth:`stop` without blocking the event loop."""
        self.request_stop()
        if self._stopped:
            return
        self._stopped = True
        error: Optional[BaseException] = None
        for part in self._parts():
            try:
                await part._stop_awaiting()
            except BaseException as exc:  # stop the others, then report the first failure
                error = error or exc
        if error is not None:
            raise error

    @property
    def running(self) -> bool:
        """Whether any consumer or the relay is running."""
        relay = self.relay is not None and self.relay.running
        return relay or any(c.running for c in self.consumers)

    @property
    def stop_requested(self) -> bool:
        """Whether :meth:`request_stop` (or :meth:`stop`) was called."""
        return self._stop_requested

    def request_stop(self) -> None:
        """Ask :meth:`wait` / :meth:`wait_async` to return (safe in signal handlers)."""
        self._stop_requested = True
        try:
            self._wake_writer.send(b"\0")
        except OSError:
            pass
        for loop, future in list(self._async_waiters):
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:
                pass

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until a stop is requested (or ``timeout`` seconds); return whether it was."""
        if not self._stop_requested:
            select.select([self._wake_reader], [], [], timeout)
        return self._stop_requested

    async def wait_async(self) -> None:
        """Wait, without blocking the event loop, until a stop is requested."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = (loop, future)
        with self._lock:
            self._async_waiters.append(entry)
        try:
            if not self._stop_requested:
                await future
        finally:
            with self._lock:
                self._async_waiters.remove(entry)

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters of each consumer (``"<group> <topic>"``) and of the relay (``"relay"``)."""
        stats = {f"{c.group} {c.topic}": c.stats() for c in self.consumers}
        if self.relay is not None:
            stats["relay"] = self.relay.stats()
        return stats

    def close(self) -> None:
        """:meth:`stop`, then release the runner's wake-up sockets."""
        self.stop()
        self._close_sockets()

    async def close_async(self) -> None:
        """:meth:`close` without blocking the event loop."""
        await self.stop_async()
        self._close_sockets()

    def _close_sockets(self) -> None:
        self._wake_reader.close()
        self._wake_writer.close()

    def __enter__(self) -> ConsumerRunner:
        return self.start()

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    async def __aenter__(self) -> ConsumerRunner:
        return self.start()

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close_async()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def start_consumers(
    topics: Optional[Iterable[str]] = None,
    group: Optional[str] = None,
    *,
    relay: bool = True,
) -> ConsumerRunner:
    """Start the registered handlers (all, or those of ``topics`` / ``group``); return the runner.

    Raises :class:`relaybox.ConfigError` when nothing registered matches.
    Async handlers run on the event loop running here, if any, else on a
    private loop thread.
    """
    return _runner(topics, group, relay).start()


def _runner(topics: Optional[Iterable[str]], group: Optional[str], relay: bool) -> ConsumerRunner:
    settings = get_settings()
    wanted = None if topics is None else list(topics)
    pairs = get_registry().select(settings.default_topic, wanted, group)
    if not pairs:
        raise config_error(_nothing_matches(wanted, group))
    return ConsumerRunner(
        pairs,
        outbox=get_outbox(),
        transport=settings.transport,
        relay=relay,
        handler_db=settings.handler_db,
    )


def _django_consumer(
    outbox: AnyOutbox,
    topic: str,
    handler: Callable[..., Any],
    is_async: bool,
    registration: Registration,
    options: dict[str, Any],
) -> _ConsumerBase[Any]:
    """A :class:`relaybox.django.Consumer` calling ``handler(message, connection)``."""
    if is_async:
        raise config_error(
            f"{registration.name}: with handler_db='django' handlers are plain functions "
            "(Django's ORM runs them in transaction.atomic() on a worker thread)"
        )
    from django.db import connections

    from ..django import Consumer as DjangoConsumer
    from ..django._conf import alias

    using = alias()

    def in_atomic(message: Message) -> None:
        handler(message, connections[using])

    return DjangoConsumer(topic, in_atomic, outbox=outbox, using=using, **options)


def _nothing_matches(topics: Optional[list[str]], group: Optional[str]) -> str:
    where = []
    if topics:
        where.append("topic " + ", ".join(repr(t) for t in topics))
    if group is not None:
        where.append(f"group {group!r}")
    suffix = f" for {' and '.join(where)}" if where else ""
    return f"no @message_handler or @consumer is registered{suffix}"


@contextmanager
def _signals_stop(runner: ConsumerRunner, enabled: bool) -> Iterator[None]:
    """Make SIGINT and SIGTERM request a stop while the block runs (main thread only)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        runner.request_stop()

    previous: dict[signal.Signals, Any] = {}
    for sig in _STOP_SIGNALS:
        previous[sig] = signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_consumers(
    topics: Optional[Iterable[str]] = None,
    group: Optional[str] = None,
    *,
    relay: bool = True,
    handle_signals: bool = True,
    ready: Optional[Callable[[ConsumerRunner], None]] = None,
) -> None:
    """Run the registered handlers until SIGINT or SIGTERM, then stop cleanly.

    ``topics`` / ``group`` select handlers as in :func:`start_consumers`;
    ``ready(runner)`` is called once they all run (``runner.request_stop()``
    ends the run from another thread). Signals are handled only when called
    from the main thread and ``handle_signals`` is true. Inside a running
    event loop use :func:`run_consumers_async`.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "run_consumers() would block this event loop: use `await run_consumers_async()`"
        )
    runner = _runner(topics, group, relay)
    with _signals_stop(runner, handle_signals):
        try:
            runner.start()
            if ready is not None:
                ready(runner)
            while not runner.wait():
                pass
        finally:
            runner.close()


async def run_consumers_async(
    topics: Optional[Iterable[str]] = None,
    group: Optional[str] = None,
    *,
    relay: bool = True,
    handle_signals: bool = True,
    ready: Optional[Callable[[ConsumerRunner], None]] = None,
) -> None:
    """:func:`run_consumers` inside an event loop: async handlers run on this loop.

    Returns after SIGINT/SIGTERM (when ``handle_signals`` and the loop
    supports signal handlers) or ``runner.request_stop()``; cancelling the
    task also stops the consumers cleanly.
    """
    runner = _runner(topics, group, relay)
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if handle_signals and threading.current_thread() is threading.main_thread():
        for sig in _STOP_SIGNALS:
            try:
                loop.add_signal_handler(sig, runner.request_stop)
            except (NotImplementedError, RuntimeError):
                continue
            installed.append(sig)
    try:
        runner.start()
        if ready is not None:
            ready(runner)
        await runner.wait_async()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await runner.close_async()

"""The consumer side of the host-transaction protocol on SQLAlchemy 2.x.

For each delivery the core hands over the message and the statement that
records it in the inbox. Here, in one session from the user's
``sessionmaker`` (``async_sessionmaker``): the inbox statement runs first;
no row inserted means the group had the message, so the session rolls back
and the delivery counts as a duplicate; otherwise the handler runs with that
session and the session commits. Only then does the core acknowledge the
delivery. An exception rolls the session back, and the core retries the
message, then dead-letters it.

Consecutive messages of one key may come together: they share one session
and one commit (one inbox statement for all of them, then the handler of each
new one). An
exception rolls all of them back; the core hands the messages before the
failing one over again one at a time, each in a session of its own, and
retries the failing one alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from .. import _native
from .. import consumer as _consumer
from ..consumer import ConsumerOptions, _HostMode, _NewIds, _RunFailed
from ..errors import ConfigError
from ..outbox import AnyOutbox
from ..transport import Transport

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["AsyncConsumer", "Consumer"]

SessionHandler = Callable[[_native.Message, Session], Any]
"""``handler(message, session)``: writes through ``session``; never commits it."""

AsyncSessionHandler = Callable[[_native.Message, AsyncSession], Awaitable[Any]]
"""``async def handler(message, session)``: writes through ``session``; never commits it."""


def _check_outbox(outbox: AnyOutbox) -> None:
    if outbox.dialect != "postgres":
        raise ConfigError(
            "relaybox.sqlalchemy consumers record the inbox in PostgreSQL; "
            f"this outbox is on {outbox.dialect}"
        )


class Consumer(_HostMode, _consumer.Consumer):
    """Reads ``topic`` as ``group`` and calls ``handler(message, session)``.

    ``session`` comes from ``sessionmaker`` and already holds the message's
    inbox row: the handler's ORM writes commit with it, after the handler
    returns (do not commit or roll back yourself). A redelivered message is
    skipped; an exception rolls everything back, retries the message and
    finally dead-letters it (:class:`relaybox.Reject`: at once). Consecutive
    messages of one key may share one session and commit; when one of them
    raises, all of them roll back, those before it run again one per session,
    and it is retried alone. Other
    settings as :class:`relaybox.Consumer`.
    """

    _placeholders = "named"

    def __init__(
        self,
        outbox: AnyOutbox,
        topic: str,
        handler: SessionHandler,
        *,
        group: str,
        sessionmaker: sessionmaker[Session],
        transport: Transport = None,
        **options: Unpack[ConsumerOptions],
    ) -> None:
        _check_outbox(outbox)
        super().__init__(outbox, topic, handler, group=group, transport=transport, **options)
        self._sessions = sessionmaker
        self._session_handler = self._handler  # in its `process` span

    def _host_call(self, message: _native.Message, sql: str, params: dict[str, Any]) -> str:
        with self._sessions() as session:
            try:
                if session.execute(text(sql), params).rowcount == 0:  # type: ignore[attr-defined]
                    session.rollback()
                    return "duplicate"
                result = self._session_handler(message, session)
                if inspect.isawaitable(result):
                    raise TypeError("the handler returned an awaitable; use AsyncConsumer")
                session.commit()
                return "processed"
            except BaseException:
                session.rollback()
                raise

    def _host_call_run(
        self, messages: list[_native.Message], sql: str, params: dict[str, Any]
    ) -> list[str]:
        outcomes: list[str] = []
        with self._sessions() as session:
            try:
                new = _NewIds(session.execute(text(sql), params).all())
                for index, message in enumerate(messages):
                    if not new.take(message):
                        outcomes.append("duplicate")
                        continue
                    try:
                        result = self._session_handler(message, session)
                        if inspect.isawaitable(result):
                            raise TypeError("the handler returned an awaitable; use AsyncConsumer")
                    except Exception as error:
                        raise _RunFailed(index) from error
                    outcomes.append("processed")
                session.commit()
                return outcomes
            except BaseException:
                session.rollback()
                raise


class AsyncConsumer(_HostMode, _consumer.AsyncConsumer):
    """:class:`Consumer` for ``async def handler(message, session)``.

    The ``AsyncSession`` comes from ``async_sessionmaker``; the handler runs on
    the event loop that is running when the consumer starts (or a private loop
    thread).
    """

    _placeholders = "named"

    def __init__(
        self,
        outbox: AnyOutbox,
        topic: str,
        handler: AsyncSessionHandler,
        *,
        group: str,
        sessionmaker: async_sessionmaker[AsyncSession],
        transport: Transport = None,
        **options: Unpack[ConsumerOptions],
    ) -> None:
        _check_outbox(outbox)
        super().__init__(outbox, topic, handler, group=group, transport=transport, **options)
        self._sessions_async = sessionmaker
        self._session_handler_async = self._handler  # in its `process` span

    def _host_call(self, message: _native.Message, sql: str, params: dict[str, Any]) -> str:
        outcome: str = self._run_async(self._handle(message, sql, params))
        return outcome

    async def _handle(self, message: _native.Message, sql: str, params: dict[str, Any]) -> str:
        async with self._sessions_async() as session:
            try:
                result = await session.execute(text(sql), params)
                if result.rowcount == 0:  # type: ignore[attr-defined]
                    await session.rollback()
                    return "duplicate"
                await self._session_handler_async(message, session)
                await session.commit()
                return "processed"
            except BaseException:
                await session.rollback()
                raise

    def _host_call_run(
        self, messages: list[_native.Message], sql: str, params: dict[str, Any]
    ) -> list[str]:
        outcomes: list[str] = self._run_async(self._handle_run(messages, sql, params))
        return outcomes

    async def _handle_run(
        self, messages: list[_native.Message], sql: str, params: dict[str, Any]
    ) -> list[str]:
        outcomes: list[str] = []
        async with self._sessions_async() as session:
            try:
                new = _NewIds((await session.execute(text(sql), params)).all())
                for index, message in enumerate(messages):
                    if not new.take(message):
                        outcomes.append("duplicate")
                        continue
                    try:
                        await self._session_handler_async(message, session)
                    except Exception as error:
                        raise _RunFailed(index) from error
                    outcomes.append("processed")
                await session.commit()
                return outcomes
            except BaseException:
                await session.rollback()
                raise

"""The relay, :class:`Relay` and :class:`AsyncRelay`: committed rows to the broker, in key order."""

from __future__ import annotations

from typing import Any, Optional

from . import _native, _settings
from .outbox import AnyOutbox
from .transport import Transport, transport_json

__all__ = ["AsyncRelay", "Relay"]


class _RelayBase:
    """What :class:`Relay` and :class:`AsyncRelay` share: settings, start and counters."""

    def __init__(
        self,
        outbox: AnyOutbox,
        transport: Transport = None,
        *,
        batch_size: Optional[int] = None,
        poll_interval: Optional[float] = None,
        lease_ttl: Optional[float] = None,
        max_attempts: Optional[int] = None,
        backoff_initial: Optional[float] = None,
        backoff_max: Optional[float] = None,
        publish_timeout: Optional[float] = None,
        retention: Optional[float] = None,
        idempotency_window: Optional[float] = None,
        log_retention: Optional[float] = None,
        log_keep_unread: Optional[bool] = None,
        dead_letter_retention: Optional[float] = None,
        instance_id: Optional[str] = None,
        concurrency: Optional[int] = None,
        metrics_interval: Optional[float] = None,
        park_keys: Optional[bool] = None,
    ) -> None:
        self._outbox = outbox
        self._transport = transport_json(transport)
        self._config = _settings.to_json(
            {
                "batch_size": batch_size,
                "poll_interval": poll_interval,
                "lease_ttl": lease_ttl,
                "max_attempts": max_attempts,
                "backoff_initial": backoff_initial,
                "backoff_max": backoff_max,
                "publish_timeout": publish_timeout,
                "retention": retention,
                "idempotency_window": idempotency_window,
                "log_retention": log_retention,
                "log_keep_unread": log_keep_unread,
                "dead_letter_retention": dead_letter_retention,
                "instance_id": instance_id,
                "concurrency": concurrency,
                "metrics_interval": metrics_interval,
                "park_keys": park_keys,
            }
        )
        self._native: Optional[_native.Relay] = None

    def _start(self) -> None:
        if self._native is None or not self._native.running:
            self._native = _native.Relay.start(self._outbox._store, self._transport, self._config)

    def _stop_blocking(self) -> None:
        if self._native is not None:
            self._native.stop()

    async def _stop_awaiting(self) -> None:
        if self._native is not None:
            await self._native.stop_async()

    @property
    def running(self) -> bool:
        """Whether the relay is running."""
        return self._native is not None and self._native.running

    @property
    def owner(self) -> Optional[str]:
        """This relay's instance id, once started."""
        return None if self._native is None else self._native.owner

    def stats(self) -> dict[str, int]:
        """Counters: delivered, retried, dead_lettered, batches, claims, partitions_held.

        ``claims`` counts the claims run against the outbox, those that found
        nothing included.
        """
        if self._native is None:
            return dict.fromkeys(
                ("delivered", "retried", "dead_lettered", "batches", "claims", "partitions_held"),
                0,
            )
        stats: dict[str, int] = self._native.stats()
        return stats


class Relay(_RelayBase):
    """A relay running on relaybox's own threads (it never holds the GIL while it waits).

    ``Relay(outbox, transport=...)`` is created stopped; :meth:`start` it, or
    use it in a ``with`` block, which stops it on exit. Several relays
    (threads, processes, hosts) share the work through partition leases.
    Durations are in seconds. Async code uses :class:`AsyncRelay`.
    """

    def start(self) -> Relay:
        """Start relaying (settings are validated here; it returns at once); return ``self``."""
        self._start()
        return self

    def stop(self) -> None:
        """Finish the batch in flight, hand the partitions over, and stop (blocks until done)."""
        self._stop_blocking()

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class AsyncRelay(_RelayBase):
    """:class:`Relay` for ``async`` code: ``await relay.stop()``, ``async with``.

    The relay itself runs on relaybox's threads, never on the event loop.
    """

    def start(self) -> AsyncRelay:
        """Start relaying (settings are validated here; it returns at once); return ``self``."""
        self._start()
        return self

    async def stop(self) -> None:
        """Finish the batch in flight, hand the partitions over, and stop."""
        await self._stop_awaiting()

    async def __aenter__(self) -> AsyncRelay:
        return self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

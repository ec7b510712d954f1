"""The SQS subscriber: a relaybox consumer of an SQS queue that calls a hook per event.

The queue is read by relaybox's SQS source, so deduplication (the inbox),
retries with backoff and dead letters are the core's: a message is deleted
from the queue only after the hook's transaction committed; a hook that
raises is retried ``max_retries`` times, then dead-lettered. The body is the
event's wire form, or an SNS notification wrapping it (a queue subscribed to
a topic without raw message delivery), which is unwrapped
(``json.loads(body)["Message"]``).

In a Django project (``"relaybox.django"`` installed, or ``using=`` given)
the consumer is :class:`relaybox.django.Consumer`: the hook runs inside
``transaction.atomic()`` on Django's connection together with the message's
inbox row, so the hook's ORM writes take effect once per message.

Every subscriber is remembered by queue name (:func:`subscribers`), so a
Celery worker started with :class:`relaybox.eventbus.celery.SQSConsumer`
runs the subscribers of the queues it is given with ``-Q``.
"""

from __future__ import annotations

import inspect
import json
import sys
import threading
from collections.abc import Mapping
from typing import Any, Callable, Optional

from ..consumer import Consumer, Message
from ..outbox import Outbox, Transaction
from .aws import AwsSettings, config_error
from .base import Event, EventPayload

__all__ = ["AmazonSNSSubscriber", "Hook", "SQSSubscriber", "parse_body", "subscribers"]

Hook = Callable[..., Any]
"""``hook(event)``; it also gets ``trace_ctx=`` and ``db=`` when it declares them."""

_registry: dict[str, AmazonSNSSubscriber] = {}
_registry_lock = threading.Lock()


def subscribers() -> dict[str, AmazonSNSSubscriber]:
    """The subscribers built in this process by queue name (the last one built for a queue)."""
    with _registry_lock:
        return dict(_registry)


def parse_body(
    body: bytes,
    payload_classes: Optional[Mapping[str, type[EventPayload]]] = None,
) -> Event:
    """The :class:`Event` of an SQS message body (unwrapping an SNS notification).

    ``payload_classes`` maps event names to payload classes; other events get
    an :class:`EventPayload` with every field as an attribute.
    """
    document = json.loads(body)
    if (
        isinstance(document, dict)
        and document.get("Type") == "Notification"
        and isinstance(document.get("Message"), str)
    ):
        document = json.loads(document["Message"])
    if not isinstance(document, dict) or "Metadata" not in document:
        raise ValueError("the message is not an event (no Metadata object)")
    name = (document.get("Metadata") or {}).get("EventName")
    payload_cls = (payload_classes or {}).get(str(name))
    return Event.from_wire(document, payload_cls)


class AmazonSNSSubscriber:
    """Consumes the SQS queue ``queue_name`` and calls ``hook`` with each :class:`Event`.

    Connection settings are those of :class:`~relaybox.eventbus.aws.AwsSettings`
    (``region``, ``endpoint_url``, ``profile``, the credentials, or a
    ``connection_url`` ``sqs://KEY:SECRET@``). ``outbox`` holds the consumer's
    inbox (default: the messaging façade's outbox); ``group`` names the
    consumer in it (default: the queue name). ``hook(event)`` may declare
    ``trace_ctx`` (gets ``{"traceparent": ..., "tracestate": ...}``) and
    ``db`` (gets the :class:`relaybox.Transaction` that commits with the
    message's processed mark). Start with :meth:`start` or ``with``.

    ``using`` (a Django database alias) runs the hook inside
    ``transaction.atomic(using=using)`` with the message's inbox row
    (:class:`relaybox.django.Consumer`); its ``db`` is then that Django
    connection and ``outbox`` defaults to :func:`relaybox.django.get_outbox`.
    Without ``outbox`` and ``using``, a process whose Django settings install
    ``"relaybox.django"`` uses that mode on ``RELAYBOX["DATABASE"]``.
    """

    def __init__(
        self,
        queue_name: str,
        hook: Hook,
        *,
        region: Optional[str] = None,
        endpoint_url: Optional[str] = None,
        profile: Optional[str] = None,
        connection_url: Optional[str] = None,
        aws_access_key_id: Optional[str] = None,
        aws_secret_access_key: Optional[str] = None,
        aws_session_token: Optional[str] = None,
        create_queues: bool = False,
        outbox: Optional[Outbox] = None,
        group: Optional[str] = None,
        payload_classes: Optional[Mapping[str, type[EventPayload]]] = None,
        max_retries: Optional[int] = None,
        retry_delay: Optional[float] = None,
        poll_interval: Optional[float] = None,
        concurrency: Optional[int] = None,
        using: Optional[str] = None,
    ) -> None:
        if not queue_name:
            raise config_error("queue_name: the SQS subscriber needs a queue name")
        if not callable(hook):
            raise TypeError("hook must be callable")
        self.queue_name = queue_name
        self.hook = hook
        self.aws = AwsSettings.from_config(
            {
                "region": region,
                "endpoint_url": endpoint_url,
                "profile": profile,
                "connection_url": connection_url,
                "aws_access_key_id": aws_access_key_id,
                "aws_secret_access_key": aws_secret_access_key,
                "aws_session_token": aws_session_token,
            }
        )
        self.create_queues = create_queues
        self.group = group or queue_name
        self.payload_classes = dict(payload_classes or {})
        self._outbox = outbox
        self._max_retries = max_retries
        self._retry_delay = retry_delay
        self._poll_interval = poll_interval
        self._concurrency = concurrency
        self._using = using
        parameters = _parameters(hook)
        self._wants_trace = "trace_ctx" in parameters
        self._wants_db = "db" in parameters
        self._consumer: Optional[Consumer] = None
        with _registry_lock:
            _registry[queue_name] = self

    @property
    def transport(self) -> dict[str, Any]:
        """The core's ``sqs`` transport settings of this subscriber."""
        settings = self.aws.to_json()
        settings["create_queues"] = self.create_queues
        return {"sqs": settings}

    def _call_hook(self, message: Message, db: Any) -> None:
        event = parse_body(message.payload, self.payload_classes)
        kwargs: dict[str, Any] = {}
        if self._wants_trace:
            kwargs["trace_ctx"] = {
                "traceparent": event.metadata.traceparent,
                "tracestate": event.metadata.tracestate,
            }
        if self._wants_db:
            kwargs["db"] = db
        self.hook(event, **kwargs)

    def _handle(self, message: Message, tx: Transaction) -> None:
        self._call_hook(message, tx)

    def _django_using(self) -> Optional[str]:
        """The Django alias of the host-transaction mode, or ``None`` for relaybox's own."""
        if self._using is not None:
            return self._using
        if self._outbox is not None or "django" not in sys.modules:
            return None
        from django.apps import apps
        from django.conf import settings

        if not (settings.configured and apps.ready and apps.is_installed("relaybox.django")):
            return None
        from ..django._conf import alias

        return alias()

    def start(self) -> AmazonSNSSubscriber:
        """Start consuming; return ``self``."""
        if self._consumer is not None and self._consumer.running:
            return self
        settings: dict[str, Any] = {
            "max_retries": self._max_retries,
            "retry_delay": self._retry_delay,
            "poll_interval": self._poll_interval,
            "concurrency": self._concurrency,
        }
        using = self._django_using()
        if using is not None:
            from django.db import connections

            from ..django import Consumer as DjangoConsumer

            def handle(message: Message) -> None:
                self._call_hook(message, connections[using])

            self._consumer = DjangoConsumer(
                self.queue_name,
                handle,
                group=self.group,
                using=using,
                outbox=self._outbox,
                transport=self.transport,
                **settings,
            ).start()
            return self
        outbox = self._outbox
        if outbox is None:
            from ..messaging.settings import get_outbox

            outbox = get_outbox()
        self._consumer = Consumer(
            outbox,
            self.queue_name,
            self._handle,
            group=self.group,
            transport=self.transport,
            **settings,
        ).start()
        return self

    def stop(self) -> None:
        """Finish the messages in flight, then stop."""
        if self._consumer is not None:
            self._consumer.stop()

    @property
    def running(self) -> bool:
        """Whether the subscriber is consuming."""
        return self._consumer is not None and self._consumer.running

    def stats(self) -> dict[str, int]:
        """The consumer's counters: processed, duplicates, retried, dead_lettered."""
        if self._consumer is None:
            return dict.fromkeys(("processed", "duplicates", "retried", "dead_lettered"), 0)
        return self._consumer.stats()

    def __enter__(self) -> AmazonSNSSubscriber:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"AmazonSNSSubscriber(queue_name={self.queue_name!r}, aws={self.aws!r})"


SQSSubscriber = AmazonSNSSubscriber
"""Short name of :class:`AmazonSNSSubscriber`."""


def _parameters(hook: Hook) -> set[str]:
    try:
        return set(inspect.signature(hook).parameters)
    except (TypeError, ValueError):
        return set()

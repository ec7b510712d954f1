"""The SQS subscriber: a relaybox consumer of an SQS queue that calls a hook per event.

The queue is read by relaybox's SQS source, so deduplication (the inbox),
retries with backoff and dead letters are the core's: a message is deleted
from the queue only after the hook's transaction committed; a hook that
raises is retried ``max_retries`` times, then dead-lettered. The body is the
event's wire form, or an SNS notification wrapping it (a queue subscribed to
a topic without raw message delivery), which is unwrapped
(``json.loads(body)["Message"]``).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Any, Callable, Optional

from ..consumer import Consumer, Message
from ..outbox import Outbox, Transaction
from .aws import AwsSettings, config_error
from .base import Event, EventPayload

__all__ = ["AmazonSNSSubscriber", "Hook", "SQSSubscriber", "parse_body"]

Hook = Callable[..., Any]
"""``hook(event)``; it also gets ``trace_ctx=`` and ``db=`` when it declares them."""


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
        parameters = _parameters(hook)
        self._wants_trace = "trace_ctx" in parameters
        self._wants_db = "db" in parameters
        self._consumer: Optional[Consumer] = None

    @property
    def transport(self) -> dict[str, Any]:
        """The core's ``sqs`` transport settings of this subscriber."""
        settings = self.aws.to_json()
        settings["create_queues"] = self.create_queues
        return {"sqs": settings}

    def _handle(self, message: Message, tx: Transaction) -> None:
        event = parse_body(message.payload, self.payload_classes)
        kwargs: dict[str, Any] = {}
        if self._wants_trace:
            kwargs["trace_ctx"] = {
                "traceparent": event.metadata.traceparent,
                "tracestate": event.metadata.tracestate,
            }
        if self._wants_db:
            kwargs["db"] = tx
        self.hook(event, **kwargs)

    def start(self) -> AmazonSNSSubscriber:
        """Start consuming; return ``self``."""
        if self._consumer is None or not self._consumer.running:
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
                max_retries=self._max_retries,
                retry_delay=self._retry_delay,
                poll_interval=self._poll_interval,
                concurrency=self._concurrency,
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

"""The SNS publisher: events written to the relaybox outbox, relayed to an SNS topic.

:meth:`AmazonSNSPublisher.publish` never calls AWS. It writes the event's
wire form to the outbox (in the caller's transaction when there is one) with
the headers ``entityName``, ``publisherName``, ``eventName`` and any custom
routing keys; a :class:`relaybox.Relay` running the publisher's
:attr:`~AmazonSNSPublisher.transport` publishes it to SNS, where those
headers become String MessageAttributes for subscription filter policies.
An event is thus published if and only if the transaction that wrote it
commits, at least once, in order per entity id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Union

from pydantic import SecretStr

from ..outbox import Outbox
from ..relay import Relay
from .aws import AwsSettings, config_error, topic_name_of_arn
from .base import Event, EventPayload, Metadata

__all__ = ["AmazonSNSPublisher", "SNSPublisher"]

_RESERVED = frozenset({"entityName", "publisherName", "eventName"})


class AmazonSNSPublisher:
    """Publishes :class:`~relaybox.eventbus.Event` s to one SNS topic through the outbox.

    ``config`` holds ``topic_arn`` (or ``topic``, a topic name), ``region``,
    ``profile``, ``endpoint_url``, the credentials ``aws_access_key_id`` /
    ``aws_secret_access_key`` / ``aws_session_token``, and ``create_topics``
    (create the topic when it does not exist; default ``False``). ``name`` is
    the ``PublisherName`` of the events it builds.

    ``outbox`` is where events are written when the caller gives no
    transaction; without it the messaging façade's outbox is used
    (:func:`relaybox.messaging.get_outbox`, ``RELAYBOX_DATABASE_URL``).
    """

    def __init__(
        self,
        name: str,
        config: Mapping[str, Any],
        *,
        outbox: Optional[Outbox] = None,
    ) -> None:
        if not name:
            raise config_error("name: the publisher needs a name (the events' PublisherName)")
        self.name = name
        arn = config.get("topic_arn")
        topic = config.get("topic")
        if not arn and not topic:
            raise config_error("topic_arn: the SNS publisher needs topic_arn (or topic)")
        self.topic_arn: Optional[str] = str(arn) if arn else None
        self.topic: str = topic_name_of_arn(self.topic_arn) if self.topic_arn else str(topic)
        arn_region = self.topic_arn.split(":")[3] if self.topic_arn else None
        self.aws = AwsSettings.from_config(config, default_region=arn_region or None)
        self.create_topics = bool(config.get("create_topics", False))
        self._outbox = outbox

    @property
    def transport(self) -> dict[str, Any]:
        """The core's ``sns`` transport settings for the relay that delivers these events."""
        settings = self.aws.to_json()
        if self.topic_arn:
            settings["topic_arn"] = self.topic_arn
        settings["create_topics"] = self.create_topics
        return {"sns": settings}

    @property
    def outbox(self) -> Outbox:
        """The outbox events are written to when no transaction is given."""
        if self._outbox is not None:
            return self._outbox
        from ..messaging.settings import get_outbox

        return get_outbox()

    def relay(self, outbox: Optional[Outbox] = None, **options: Any) -> Relay:
        """A (stopped) :class:`relaybox.Relay` delivering ``outbox`` to SNS.

        ``options`` are the keyword arguments of :class:`relaybox.Relay`.
        """
        return Relay(outbox or self.outbox, self.transport, **options)

    def event(
        self,
        event_name: str,
        payload: Union[EventPayload, Mapping[str, Any], Any],
        *,
        entity_name: Optional[str] = None,
        entity_id: Optional[Any] = None,
        contains_personal_data: bool = False,
        traceparent: Optional[str] = None,
        tracestate: Optional[str] = None,
        authorization: Optional[str] = None,
        payload_cls: Optional[type[EventPayload]] = None,
    ) -> Event:
        """Build an event published by this publisher.

        ``payload`` is an :class:`EventPayload`, a mapping, or any object
        (an ORM row) validated with ``payload_cls`` (``from_attributes``).
        ``entity_name`` defaults to the payload class name without its
        ``RegisteredPayload`` or ``Payload`` suffix (``UserRegisteredPayload``
        → ``User``); ``entity_id`` defaults to the payload's ``id``.
        """
        if payload_cls is not None and not isinstance(payload, payload_cls):
            payload = payload_cls.model_validate(payload)
        elif not isinstance(payload, (EventPayload, Mapping)):
            payload = EventPayload.model_validate(payload)
        if entity_name is None:
            entity_name = _entity_name(payload)
        if entity_id is None:
            entity_id = (
                payload.get("id") if isinstance(payload, Mapping) else getattr(payload, "id", None)
            )
        metadata = Metadata(
            contains_personal_data=contains_personal_data,
            traceparent=traceparent,
            tracestate=tracestate,
            authorization=None if authorization is None else SecretStr(authorization),
            entity_id=entity_id,
            entity_name=entity_name,
            publisher_name=self.name,
            event_name=event_name,
        )
        return Event(
            metadata=metadata, payload=dict(payload) if isinstance(payload, Mapping) else payload
        )

    def _message(
        self, event: Event, routing_keys: Optional[Mapping[str, str]]
    ) -> tuple[bytes, dict[str, Any]]:
        headers: dict[str, str] = {}
        for name, value in (routing_keys or {}).items():
            if name in _RESERVED:
                raise config_error(f"routing key {name!r} is set from the event's metadata")
            headers[str(name)] = str(value)
        headers.update(event.metadata.attributes())
        fields = {
            "key": event.metadata.entity_id,
            "type": event.metadata.event_name,
            "headers": headers,
            "content_type": "application/json",
        }
        return event.to_wire_json(), fields

    def publish(
        self,
        event: Event,
        *,
        routing_keys: Optional[Mapping[str, str]] = None,
        db: Any = None,
    ) -> str:
        """Write ``event`` to the outbox for SNS; return the relaybox message id.

        It goes where :mod:`relaybox.messaging` writes (``relaybox.messaging.writer``):
        ``db`` (a relaybox transaction or outbox, a psycopg, SQLAlchemy, asyncpg
        or Django connection such as ``django.db.connection``, inside the
        current ``transaction.atomic()`` block), the innermost
        ``outbox.transaction()`` block, the consumer handler's ``db``, an open
        ``atomic()`` block of ``relaybox.django``, else a transaction of its own
        on :attr:`outbox`. Except in the last case the event is published only
        if that transaction commits. ``routing_keys`` are extra String
        MessageAttributes.
        """
        from ..messaging.writer import Outgoing, write

        payload, fields = self._message(event, routing_keys)
        return write(Outgoing(self.topic, payload, **fields), db, self._outbox)

    async def publish_async(
        self,
        event: Event,
        *,
        routing_keys: Optional[Mapping[str, str]] = None,
        db: Any = None,
    ) -> str:
        """:meth:`publish` without blocking the event loop."""
        from ..messaging.writer import Outgoing, write_async

        payload, fields = self._message(event, routing_keys)
        return await write_async(Outgoing(self.topic, payload, **fields), db, self._outbox)

    def __repr__(self) -> str:
        return f"AmazonSNSPublisher(name={self.name!r}, topic={self.topic!r}, aws={self.aws!r})"


SNSPublisher = AmazonSNSPublisher
"""Short name of :class:`AmazonSNSPublisher`."""


def _entity_name(payload: Any) -> str:
    name = type(payload).__name__
    if isinstance(payload, Mapping) or name == "EventPayload":
        raise config_error("entity_name: give the entity name (the payload class does not say it)")
    for suffix in ("RegisteredPayload", "Payload"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name

"""The event of the SNS/SQS event bus: payload models, metadata and the PascalCase wire form.

On the wire an event is one JSON object::

    {"Metadata": {"ContainsPersonalData": false, "Tracestate": null,
                  "Traceparent": "00-...", "Authorization": null,
                  "PublishDate": "2026-01-01T12:00:00Z", "EntityId": "42",
                  "EntityName": "User", "PublisherName": "UserService",
                  "EventName": "UserRegistered"},
     "Payload": {...}}

In Python the fields are snake_case (``event.metadata.event_name``). The
``Authorization`` value is a :class:`pydantic.SecretStr`: it is masked in
``repr``, ``str`` and ``model_dump_json()``, and only :meth:`Event.to_wire`
(what the publisher sends) writes it in clear.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping
from typing import Any, Optional, Union

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    SerializationInfo,
    SerializeAsAny,
    field_serializer,
    field_validator,
)

__all__ = ["Event", "EventFailPayload", "EventPayload", "Metadata", "WIRE_CONTEXT"]

WIRE_CONTEXT = {"relaybox_eventbus_wire": True}
"""Serialisation context under which :class:`Metadata` writes ``Authorization`` in clear."""


class EventPayload(BaseModel):
    """Base class of event payloads.

    Validates from ORM objects and other plain objects (``from_attributes``):
    ``UserRegisteredPayload.model_validate(user)`` reads the declared fields
    as attributes. Undeclared fields of a mapping are kept, so a subscriber
    without a payload class still sees every field (``event.payload.id``).
    """

    model_config = ConfigDict(from_attributes=True, extra="allow")


class EventFailPayload(EventPayload):
    """Payload of a failure event: what failed, where, and why."""

    code: str = "error"
    """A short machine-readable code (the exception's class name for Celery tasks)."""
    data: Any = None
    """Context of the failure (for Celery tasks: the task id, arguments and keyword arguments)."""
    detail: str = ""
    """Human-readable description (the exception's message)."""
    origin: Optional[str] = None
    """Where it failed (for Celery tasks: the task name)."""


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


class Metadata(BaseModel):
    """The ``Metadata`` object of an event (PascalCase on the wire, snake_case here)."""

    model_config = ConfigDict(frozen=True)

    contains_personal_data: bool = Field(
        default=False,
        validation_alias=AliasChoices("contains_personal_data", "ContainsPersonalData"),
        serialization_alias="ContainsPersonalData",
    )
    """Whether the payload holds personal data."""
    tracestate: Optional[str] = Field(
        default=None,
        validation_alias=AliasChoices("tracestate", "Tracestate"),
        serialization_alias="Tracestate",
    )
    """W3C ``tracestate`` of the publishing trace."""
    traceparent: Optional[str] = Field(
        default=None,
        validation_alias=AliasChoices("traceparent", "Traceparent"),
        serialization_alias="Traceparent",
    )
    """W3C ``traceparent`` of the publishing trace."""
    authorization: Optional[SecretStr] = Field(
        default=None,
        validation_alias=AliasChoices("authorization", "Authorization"),
        serialization_alias="Authorization",
        repr=False,
    )
    """Credentials forwarded with the event; masked everywhere except on the wire."""
    publish_date: _dt.datetime = Field(
        default_factory=_utcnow,
        validation_alias=AliasChoices("publish_date", "PublishDate"),
        serialization_alias="PublishDate",
    )
    """When the event was published (UTC)."""
    entity_id: Optional[str] = Field(
        default=None,
        validation_alias=AliasChoices("entity_id", "EntityId"),
        serialization_alias="EntityId",
    )
    """Id of the entity the event is about (also the ordering key)."""
    entity_name: str = Field(
        validation_alias=AliasChoices("entity_name", "EntityName"), serialization_alias="EntityName"
    )
    """Kind of entity (``"User"``); SNS attribute ``entityName``."""
    publisher_name: str = Field(
        validation_alias=AliasChoices("publisher_name", "PublisherName"),
        serialization_alias="PublisherName",
    )
    """Name of the publishing service; SNS attribute ``publisherName``."""
    event_name: str = Field(
        validation_alias=AliasChoices("event_name", "EventName"), serialization_alias="EventName"
    )
    """Name of the event (``"UserRegistered"``); SNS attribute ``eventName``."""

    @field_validator("entity_id", mode="before")
    @classmethod
    def _entity_id_text(cls, value: Any) -> Any:
        return None if value is None else str(value)

    @field_serializer("authorization")
    def _authorization(self, value: Optional[SecretStr], info: SerializationInfo) -> Optional[str]:
        if value is None:
            return None
        context = info.context
        if isinstance(context, Mapping) and context.get("relaybox_eventbus_wire"):
            return value.get_secret_value()
        return str(value)

    @field_serializer("publish_date")
    def _publish_date(self, value: _dt.datetime) -> str:
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        text = value.astimezone(_dt.timezone.utc).isoformat()
        return text.replace("+00:00", "Z")

    def attributes(self) -> dict[str, str]:
        """The routing attributes: ``entityName``, ``publisherName``, ``eventName``."""
        return {
            "entityName": self.entity_name,
            "publisherName": self.publisher_name,
            "eventName": self.event_name,
        }


class Event(BaseModel):
    """An event: :class:`Metadata` and a payload (an :class:`EventPayload` or a mapping)."""

    metadata: Metadata = Field(
        validation_alias=AliasChoices("metadata", "Metadata"), serialization_alias="Metadata"
    )
    """The event's metadata."""
    payload: Union[SerializeAsAny[EventPayload], dict[str, Any]] = Field(
        validation_alias=AliasChoices("payload", "Payload"), serialization_alias="Payload"
    )
    """The event's payload."""

    def to_wire(self) -> dict[str, Any]:
        """The PascalCase wire form, ``Authorization`` in clear (what is published)."""
        wire: dict[str, Any] = self.model_dump(mode="json", by_alias=True, context=WIRE_CONTEXT)
        return wire

    def to_wire_json(self) -> bytes:
        """:meth:`to_wire` as compact UTF-8 JSON."""
        return json.dumps(self.to_wire(), separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def from_wire(
        cls,
        data: Union[bytes, str, Mapping[str, Any]],
        payload_cls: Optional[type[EventPayload]] = None,
    ) -> Event:
        """Parse the wire form (JSON text or a mapping).

        The payload becomes an instance of ``payload_cls`` (default
        :class:`EventPayload`, which keeps every field as an attribute).
        """
        wire = json.loads(data) if isinstance(data, (bytes, str)) else dict(data)
        payload = (payload_cls or EventPayload).model_validate(wire.get("Payload") or {})
        return cls(metadata=Metadata.model_validate(wire.get("Metadata") or {}), payload=payload)

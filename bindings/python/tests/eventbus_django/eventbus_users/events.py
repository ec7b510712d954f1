"""The seed's event payloads, as its users wrote them (``orm_mode`` included)."""

from __future__ import annotations

from uuid import UUID

from relaybox.eventbus import EventFailPayload, EventPayload


class UserRegisteredPayload(EventPayload):
    id: UUID
    email: str

    class Config:
        orm_mode = True  # Enable ORM mode for Django model serialization


class UserRegistrationFailedPayload(EventFailPayload):
    pass

"""The seed's subscriber; its hook logs each event through the ORM (imported by the worker)."""

from __future__ import annotations

import os
from typing import Any

from relaybox.eventbus import AmazonSNSSubscriber
from relaybox.eventbus.base import Event

from .models import EventLog


def handle_user_event(event: Event, trace_ctx: Any = None) -> None:
    """Handle incoming user events"""
    EventLog.objects.create(
        event_name=event.metadata.event_name,
        entity_id=event.metadata.entity_id or "",
        payload=event.to_wire()["Payload"],
    )


subscriber = AmazonSNSSubscriber(
    connection_url="sqs://testing:testing@",
    queue_name=os.environ["EVENTBUS_DJANGO_EVENTS_QUEUE"],
    hook=handle_user_event,
    region="us-east-1",
    poll_interval=0.1,
)

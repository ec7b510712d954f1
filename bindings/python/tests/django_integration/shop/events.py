"""The ``OrderPlaced`` handler: a shipment row written through the ORM."""

from __future__ import annotations

import relaybox

from .models import Shipment


def ship(message: relaybox.Message) -> None:
    """Record a shipment; runs in ``atomic()`` with the message's inbox row."""
    Shipment.objects.create(order_reference=message.json()["reference"], message_id=message.id)

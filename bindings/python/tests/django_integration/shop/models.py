"""An order, written by the views with its event; a shipment, written by the consumer."""

from __future__ import annotations

from django.db import models


class Order(models.Model):  # type: ignore[misc]
    """An order placed through ``POST /shop/orders/`` or ``/shop/checkout/``."""

    reference = models.CharField(max_length=64, unique=True)
    item = models.CharField(max_length=200)


class Shipment(models.Model):  # type: ignore[misc]
    """One shipment per ``OrderPlaced`` event handled (no uniqueness: duplicates would show)."""

    order_reference = models.CharField(max_length=64)
    message_id = models.CharField(max_length=36)

"""The order views: the order row and its ``OrderPlaced`` event in one ``atomic()`` block."""

from __future__ import annotations

import json
from typing import Any

from django.db import transaction
from django.http import HttpRequest, JsonResponse

import relaybox.django

from .models import Order

TOPIC = "shop-orders"


class PaymentDeclined(Exception):
    """The card was refused."""


def _place(body: dict[str, Any]) -> Order:
    order: Order = Order.objects.create(reference=body["reference"], item=body["item"])
    relaybox.django.enqueue(
        TOPIC,
        {"reference": order.reference, "item": order.item},
        key=order.reference,
        type="OrderPlaced",
    )
    return order


def place_order(request: HttpRequest) -> JsonResponse:
    """``POST /shop/orders/``: the order and its event commit together."""
    body = json.loads(request.body)
    with transaction.atomic():
        order = _place(body)
    return JsonResponse({"reference": order.reference}, status=201)


def checkout(request: HttpRequest) -> JsonResponse:
    """``POST /shop/checkout/``: place the order, then charge; a refusal undoes both."""
    body = json.loads(request.body)
    with transaction.atomic():
        order = _place(body)
        if body.get("card") == "declined":
            raise PaymentDeclined(f"card declined for order {order.reference}")
    return JsonResponse({"reference": order.reference}, status=201)

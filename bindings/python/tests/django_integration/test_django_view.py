"""A Django view through ``django.test.Client`` on the real database: the order row
(a model) and its event are written in one ``transaction.atomic()`` block. A request
that fails after both writes leaves neither; a good one leaves both, and the event is
handled once by a ``relaybox.django.Consumer`` whose handler writes a model row."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from conftest import wait_for
from dj_env import PREFIX, migrated_fixture, pgm_fixture, scalar  # noqa: F401
from django.test import Client

import relaybox
import relaybox.django as rdj


def events(pg: psycopg.Connection[Any], table: str, reference: str) -> int:
    """Rows of ``table`` (outbox or log) holding the event of order ``reference`` (its key)."""
    return int(scalar(pg, f"SELECT count(*) FROM {PREFIX}{table} WHERE key = %s", reference))


def test_a_view_commits_the_event_with_the_model_row(
    migrated: None, pgm: psycopg.Connection[Any]
) -> None:
    # The shop app's modules import its models: imported once Django is set up.
    from shop.events import ship
    from shop.models import Order, Shipment
    from shop.views import TOPIC, PaymentDeclined

    client = Client(raise_request_exception=False)
    declined, placed = f"r-{uuid.uuid4().hex[:8]}", f"r-{uuid.uuid4().hex[:8]}"

    failed = client.post(
        "/shop/checkout/",
        {"reference": declined, "item": "lamp", "card": "declined"},
        content_type="application/json",
    )
    assert failed.status_code == 500
    assert failed.exc_info[0] is PaymentDeclined, failed.exc_info
    assert not Order.objects.filter(reference=declined).exists()
    assert events(pgm, "outbox", declined) == 0

    ok = client.post(
        "/shop/orders/", {"reference": placed, "item": "desk"}, content_type="application/json"
    )
    assert ok.status_code == 201 and ok.json() == {"reference": placed}
    # Committed: another connection sees the order and its event.
    assert scalar(pgm, "SELECT count(*) FROM shop_order WHERE reference = %s", placed) == 1
    assert events(pgm, "outbox", placed) == 1

    def consumer() -> rdj.Consumer:
        return rdj.Consumer(TOPIC, ship, group=f"shipping-{placed}")

    with relaybox.Relay(rdj.get_outbox(), poll_interval=0.2):
        with consumer() as c:
            wait_for("the order's event handled", lambda: c.stats()["processed"] == 1)
        assert list(Shipment.objects.values_list("order_reference", flat=True)) == [placed]
        # The group's position forgotten: the event comes again and the inbox skips it.
        pgm.execute(
            f"DELETE FROM {PREFIX}positions WHERE consumer_group = %s", (f"shipping-{placed}",)
        )
        with consumer() as c:
            wait_for("the redelivery skipped", lambda: c.stats()["duplicates"] == 1)
        assert c.stats()["processed"] == 0
    assert Shipment.objects.filter(order_reference=placed).count() == 1
    [shipment] = Shipment.objects.all()
    assert (
        scalar(
            pgm,
            f"SELECT count(*) FROM {PREFIX}inbox WHERE message_id::text = %s",
            shipment.message_id,
        )
        == 1
    )
    # Everything the relay published: the good order's event, never the declined one's.
    assert events(pgm, "log", placed) == 1 and events(pgm, "log", declined) == 0
    assert not Order.objects.filter(reference=declined).exists()

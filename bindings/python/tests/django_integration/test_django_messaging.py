"""relaybox.messaging in a Django project: ``publish_event`` inside ``transaction.atomic()``
writes on Django's connection (no ``db`` needed), and with ``handler_db="django"`` the
handlers run in ``atomic()`` with the inbox row, their ORM writes and the events they
publish committing together."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from conftest import wait_for
from dj_env import PREFIX, migrated_fixture, pgm_fixture, scalar  # noqa: F401
from django.db import connection, transaction

import relaybox
import relaybox.django as rdj
from relaybox import messaging


@pytest.fixture
def facade(migrated: None) -> Iterator[str]:
    """The messaging façade over relaybox.django's outbox; yields a topic of the test's own."""
    messaging.close_messaging()
    messaging.clear_registry()
    messaging.configure_messaging(broker="database", outbox=rdj.get_outbox(), handler_db="django")
    yield f"t{uuid.uuid4().hex[:8]}"
    messaging.clear_registry()
    messaging.close_messaging()


def test_publish_inside_atomic_joins_the_django_transaction(facade: str, pg_url: str) -> None:
    from shop.models import Order

    topic = facade
    with pytest.raises(RuntimeError), transaction.atomic():
        Order.objects.create(reference=f"{topic}-1", item="lamp")
        messaging.publish_event_sync("order.placed", {"reference": f"{topic}-1"}, topic)
        raise RuntimeError("the view fails after both writes")
    with transaction.atomic():
        Order.objects.create(reference=f"{topic}-2", item="desk")
        messaging.publish_event_sync("order.placed", {"reference": f"{topic}-2"}, topic)
        with psycopg.connect(pg_url) as other:
            pending = f"SELECT count(*) FROM {PREFIX}outbox WHERE topic = %s"
            assert scalar(other, pending, topic) == 0, "not visible before the commit"
    with psycopg.connect(pg_url) as pg:
        assert scalar(pg, f"SELECT count(*) FROM {PREFIX}outbox WHERE topic = %s", topic) == 1
        assert (
            scalar(pg, "SELECT count(*) FROM shop_order WHERE reference LIKE %s", f"{topic}%") == 1
        )
    # Outside atomic() there is no transaction to join: a transaction of its own.
    messaging.publish_event_sync("order.placed", {"reference": f"{topic}-3"}, topic)
    with pytest.raises(relaybox.ConfigError, match=r"outside transaction\.atomic\(\)"):
        messaging.publish_event_sync("order.placed", {}, topic, db=connection)


def test_handlers_run_in_atomic_with_the_inbox_row(facade: str, pg_url: str) -> None:
    from shop.models import Shipment

    topic = facade
    attempts: list[str] = []
    followups: list[dict[str, Any]] = []

    @messaging.message_handler(topic=topic, retry_delay=0.05)
    def ship(message: dict[str, Any], db: Any) -> None:
        assert db.alias == "default" and db.in_atomic_block
        attempts.append(message["reference"])
        Shipment.objects.create(order_reference=message["reference"], message_id="m")
        messaging.publish_event_sync("order.shipped", message, f"{topic}.shipped")
        if len(attempts) == 1:
            raise RuntimeError("fails after writing: the shipment and the follow-up roll back")

    @messaging.message_handler(topic=f"{topic}.shipped")
    def shipped(message: dict[str, Any], db: Any) -> None:
        followups.append(message)

    reference = f"{topic}-9"
    messaging.publish_event_sync("order.placed", {"reference": reference}, topic)
    with messaging.start_consumers() as runner:
        wait_for("the follow-up", lambda: followups == [{"reference": reference}])
        wait_for(
            "both consumers done",
            lambda: [c.stats()["processed"] for c in runner.consumers] == [1, 1],
        )
        assert {type(c).__module__ for c in runner.consumers} == {"relaybox.django._consumer"}
    assert attempts == [reference, reference]
    assert Shipment.objects.filter(order_reference=reference).count() == 1
    connection.close()

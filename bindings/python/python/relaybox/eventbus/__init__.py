"""An SNS/SQS event bus over relaybox: events published through the transactional outbox.

::

    from relaybox.eventbus import AmazonSNSPublisher, AmazonSNSSubscriber, EventPayload

    class UserRegisteredPayload(EventPayload):
        id: int
        email: str

    publisher = AmazonSNSPublisher("UserService", {
        "topic_arn": "arn:aws:sns:us-east-1:000000000000:users", "region": "us-east-1"})
    with outbox.transaction() as tx:
        tx.execute("INSERT INTO users ...")
        publisher.publish(publisher.event("UserRegistered", UserRegisteredPayload(...)))
    publisher.relay(outbox).start()          # delivers committed events to SNS

    AmazonSNSSubscriber("user-events", hook=on_user_event, region="us-east-1").start()

The Celery task bases (``CeleryTaskWithCallback``, and
``DjangoCeleryTaskWithCallback`` for Django models in ``transaction.atomic()``)
and the worker consumer ``SQSConsumer`` live in :mod:`relaybox.eventbus.celery`
(needs ``celery``). See ``docs/python-eventbus.md``.
"""

from __future__ import annotations

from .aws import AwsSettings
from .base import Event, EventFailPayload, EventPayload, Metadata
from .publisher import AmazonSNSPublisher, SNSPublisher
from .subscriber import AmazonSNSSubscriber, Hook, SQSSubscriber, parse_body, subscribers

__all__ = [
    "AmazonSNSPublisher",
    "AmazonSNSSubscriber",
    "AwsSettings",
    "Event",
    "EventFailPayload",
    "EventPayload",
    "Hook",
    "Metadata",
    "SNSPublisher",
    "SQSSubscriber",
    "parse_body",
    "subscribers",
]

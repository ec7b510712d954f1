"""The Celery worker consumer running the event bus's SQS subscribers.

::

    # proj/celery.py
    app = Celery("proj")
    add_consumer_option(app)          # gives `celery worker` the --consumer option

    # users/subscribers.py (imported by the worker: Celery's `imports` setting)
    subscriber = AmazonSNSSubscriber(queue_name="user_events", hook=handle_user_event)

.. code-block:: sh

    celery -A proj worker -Q user_events --consumer=relaybox.eventbus.celery.SQSConsumer

(the Celery setting ``worker_consumer``, ``CELERY_WORKER_CONSUMER`` in
Django settings, names the class as well). The worker runs each
:class:`~relaybox.eventbus.AmazonSNSSubscriber` whose queue it is given with
``-Q`` (every subscriber of the process without ``-Q``): relaybox's consumer
reads the SQS queue, records each message in the inbox and calls the hook,
so a message delivered twice runs the hook once. Those queues are not read
for Celery tasks; the other ``-Q`` queues are, as by Celery's own consumer.
"""

from __future__ import annotations

import logging
from typing import Any

import celery
from celery.worker.consumer import Consumer as _CeleryConsumer

from ..aws import config_error
from ..subscriber import AmazonSNSSubscriber, subscribers

__all__ = ["CONSUMER_PATH", "SQSConsumer", "add_consumer_option"]

CONSUMER_PATH = "relaybox.eventbus.celery.SQSConsumer"
"""The dotted path of :class:`SQSConsumer` (for ``--consumer`` or ``worker_consumer``)."""

logger = logging.getLogger("relaybox.eventbus")


class SQSConsumer(_CeleryConsumer):  # type: ignore[misc]
    """A Celery worker consumer that also runs the subscribers of the worker's queues.

    The subscribers are those built in the worker process
    (:func:`relaybox.eventbus.subscribers`) whose queue is one of the
    worker's ``-Q`` queues; without ``-Q``, all of them. None at all is a
    :class:`relaybox.ConfigError` naming the queues. They start before the
    Celery consumer, keep running across broker reconnections, and stop
    (finishing the messages in flight) when the worker stops.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.subscribers: list[AmazonSNSSubscriber] = _select(self.app)

    def start(self) -> None:
        """Start the subscribers, then consume Celery tasks until the worker stops."""
        for subscriber in self.subscribers:
            subscriber.start()
            logger.info("relaybox eventbus: consuming SQS queue %s", subscriber.queue_name)
        super().start()

    def stop(self) -> None:
        """Stop the subscribers and the Celery consumer."""
        self._stop_subscribers()
        super().stop()

    def shutdown(self) -> None:
        """Stop the subscribers and shut the Celery consumer down."""
        self._stop_subscribers()
        super().shutdown()

    def _stop_subscribers(self) -> None:
        for subscriber in self.subscribers:
            if subscriber.running:
                subscriber.stop()
                logger.info(
                    "relaybox eventbus: stopped SQS queue %s (%s)",
                    subscriber.queue_name,
                    subscriber.stats(),
                )


def _select(app: celery.Celery) -> list[AmazonSNSSubscriber]:
    """The subscribers of the worker's queues, which are taken off Celery's task queues."""
    queues = app.amqp.queues
    known = subscribers()
    if queues._consume_from is None:  # no -Q: every subscriber of the process
        chosen = list(known.values())
    else:
        chosen = [known[name] for name in queues.consume_from if name in known]
    if not chosen:
        wanted = sorted(queues.consume_from) if queues._consume_from is not None else []
        raise config_error(
            f"SQSConsumer: no AmazonSNSSubscriber for the worker's queues {wanted}; "
            f"subscribers built in this process: {sorted(known) or 'none'}. Build the "
            "subscriber in a module the worker imports (Celery's `imports` setting)"
        )
    queues.deselect([subscriber.queue_name for subscriber in chosen])
    return chosen


def add_consumer_option(app: celery.Celery) -> None:
    """Give ``celery -A app worker`` the option ``--consumer=<dotted path of a Consumer class>``.

    It sets the worker's consumer class like the ``worker_consumer`` setting,
    for instance ``--consumer=relaybox.eventbus.celery.SQSConsumer``.
    """
    import click

    options = app.user_options["worker"]
    if any("--consumer" in getattr(option, "opts", ()) for option in options):
        return
    options.add(
        click.Option(
            ["--consumer", "consumer_cls"],
            default=None,
            help=f"Dotted path of the worker's Consumer class, e.g. {CONSUMER_PATH}.",
        )
    )

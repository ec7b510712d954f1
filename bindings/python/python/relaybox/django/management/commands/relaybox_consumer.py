"""``manage.py relaybox_consumer app.handlers.ship --topic orders --group shipping``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils.module_loading import import_string

from relaybox.errors import RelayboxError

from ..._consumer import Consumer
from ._signals import stop_on_signals, wait


class Command(BaseCommand):
    """Consume a topic with a handler that runs inside ``transaction.atomic()``."""

    help = (
        "Run relaybox.django.Consumer with HANDLER (a dotted path to `def handler(message)`) "
        "until SIGTERM or SIGINT; messages in flight finish, then it exits 0."
    )

    def add_arguments(self, parser: Any) -> None:
        """The command's options."""
        parser.add_argument("handler", help="dotted path to the handler, e.g. shop.events.ship")
        parser.add_argument("--topic", required=True)
        parser.add_argument("--group", required=True)
        parser.add_argument("--database", help="Django database alias (RELAYBOX['DATABASE'])")
        parser.add_argument("--transport", choices=("database", "kafka"))
        parser.add_argument("--concurrency", type=int)
        parser.add_argument("--max-retries", type=int)
        parser.add_argument("--retry-delay", type=float)
        parser.add_argument("--retry-delay-max", type=float)
        parser.add_argument("--poll-interval", type=float)

    def handle(self, *args: Any, **options: Any) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly."""
        try:
            handler = import_string(options["handler"])
        except ImportError as exc:
            raise CommandError(f"cannot import handler {options['handler']!r}: {exc}") from exc
        settings = {
            name: options[name]
            for name in (
                "concurrency",
                "max_retries",
                "retry_delay",
                "retry_delay_max",
                "poll_interval",
            )
            if options.get(name) is not None
        }
        with stop_on_signals() as stop:
            try:
                consumer = Consumer(
                    options["topic"],
                    handler,
                    group=options["group"],
                    using=options.get("database"),
                    transport=options.get("transport"),
                    **settings,
                ).start()
            except (RelayboxError, TypeError) as exc:
                raise CommandError(str(exc)) from exc
            self.stderr.write(
                f"relaybox consumer: {options['topic']} as {options['group']}; "
                "stop with SIGTERM or SIGINT"
            )
            self.stderr.flush()
            try:
                wait(stop)
            finally:
                consumer.stop()
        self.stderr.write(f"relaybox consumer stopped: {consumer.stats()}")

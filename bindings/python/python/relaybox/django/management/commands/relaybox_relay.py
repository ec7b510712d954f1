"""``manage.py relaybox_relay``: run a relay until SIGTERM or SIGINT."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from relaybox.errors import RelayboxError
from relaybox.relay import Relay

from ... import _conf
from ._signals import stop_on_signals, wait


class Command(BaseCommand):
    """Deliver the outbox to the transport of ``settings.RELAYBOX``."""

    help = (
        "Run a relaybox relay (settings.RELAYBOX: TRANSPORT, RELAY) until SIGTERM or SIGINT; "
        "it finishes the batch in flight and exits 0."
    )

    def add_arguments(self, parser: Any) -> None:
        """The command's options."""
        parser.add_argument(
            "--transport",
            choices=("database", "kafka"),
            help="override RELAYBOX['TRANSPORT'] ('kafka' reads RELAYBOX_KAFKA_BOOTSTRAP)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly."""
        transport = options.get("transport") or _conf.transport()
        with stop_on_signals() as stop:
            try:
                relay = Relay(_conf.get_outbox(), transport, **_conf.relay_settings()).start()
            except RelayboxError as exc:
                raise CommandError(str(exc)) from exc
            self.stderr.write("relaybox relay running; stop with SIGTERM or SIGINT")
            self.stderr.flush()
            try:
                wait(stop)
            finally:
                relay.stop()
        self.stderr.write(f"relaybox relay stopped: {relay.stats()}")

"""Relay worker: one relaybox Relay on the Kafka transport in its own OS process.

Its own process, so the suite can SIGKILL it mid-batch. Relay settings come
as JSON keyword arguments of ``relaybox.Relay`` (``--settings``). Starting
is retried while the database is unreachable. Prints its stats every 5 s and
at a clean stop (SIGTERM).

Kafka settings beyond the bootstrap servers come as JSON keyword arguments of
``relaybox.Kafka`` (``--kafka``).

Usage: relay_worker.py --db URL --prefix P --bootstrap HOST:PORT [--settings JSON] [--kafka JSON]
"""

from __future__ import annotations

import argparse
import json
import time

import lifecycle
import relaybox


def main() -> None:
    """Relay until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--settings", default="{}")
    parser.add_argument("--kafka", default="{}")
    parser.add_argument("--name", default="relay")
    args = parser.parse_args()

    stop = lifecycle.install()
    settings = json.loads(args.settings)
    kafka = relaybox.Kafka(bootstrap_servers=args.bootstrap, **json.loads(args.kafka))
    relay = None
    while relay is None and not stop.is_set():
        try:
            outbox = relaybox.Outbox(args.db, table_prefix=args.prefix)
            relay = relaybox.Relay(outbox, kafka, **settings).start()
        except relaybox.RelayboxError as error:
            lifecycle.say(args.name, f"start failed, retrying: {error}")
            time.sleep(0.5)
    if relay is None:
        return
    lifecycle.say(args.name, f"started as {relay.owner}")
    while not stop.wait(5.0):
        lifecycle.say(args.name, json.dumps(relay.stats()))
    relay.stop()
    lifecycle.say(args.name, f"stopped {json.dumps(relay.stats())}")


if __name__ == "__main__":
    main()

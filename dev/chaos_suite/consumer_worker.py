"""Consumer worker: one relaybox Consumer (Kafka transport, consumer group) in its own OS process.

The handler inserts one row ``(id, key, seq, consumer)`` into the effects
table through the transaction the consumer gives it, so the row commits
together with the inbox entry that marks the message processed. The
table has no unique constraint: a message handled twice would show as two
rows, which is what the suite counts.

Usage: consumer_worker.py --db URL --prefix P --bootstrap HOST:PORT --topic T
       --group G --table EFFECTS [--properties JSON]
"""

from __future__ import annotations

import argparse
import json

import lifecycle
import relaybox


def main() -> None:
    """Consume until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--properties", default="{}", help="librdkafka consumer properties")
    parser.add_argument("--name", default="consumer")
    args = parser.parse_args()

    stop = lifecycle.install()
    insert = f"INSERT INTO {args.table} (id, key, seq, consumer) VALUES ($1, $2, $3, $4)"

    def handle(message: relaybox.Message, tx: relaybox.Transaction) -> None:
        seq = json.loads(message.payload)["s"]
        tx.execute(insert, [message.id, message.key, seq, args.name])

    outbox = relaybox.Outbox(args.db, table_prefix=args.prefix)
    kafka = relaybox.Kafka(
        bootstrap_servers=args.bootstrap, consumer_properties=json.loads(args.properties)
    )
    consumer = relaybox.Consumer(outbox, args.topic, handle, group=args.group, transport=kafka)
    consumer.start()
    lifecycle.say(args.name, "started")
    while not stop.wait(5.0):
        lifecycle.say(args.name, json.dumps(consumer.stats()))
    consumer.stop()
    lifecycle.say(args.name, f"stopped {json.dumps(consumer.stats())}")


if __name__ == "__main__":
    main()

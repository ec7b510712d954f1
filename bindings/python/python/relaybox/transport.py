"""Choosing the broker: the database's own log (default), Kafka, any transport.

A transport is given in the core's JSON form, or as routes sending each topic
to a transport of its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

__all__ = ["Kafka", "Route", "Transport", "transport_json", "from_env"]


@dataclass(frozen=True)
class Kafka:
    """Apache Kafka settings.

    ``properties`` are librdkafka settings for producer and consumer (SASL,
    SSL, ...); ``producer_properties`` / ``consumer_properties`` apply to one
    side only. Secret values are never logged. With ``create_topics`` missing
    topics are created with ``topic_partitions`` partitions. ``cloudevents``
    (``True``, or the default source as a string) adds the CloudEvents
    binary-mode headers ``ce_*`` to every record (see docs/cloudevents.md).
    ``transactional_id`` turns on exactly-once publishing: each outbox
    partition's batches go out in Kafka transactions, with a record of what
    was published in ``offsets_topic`` (default
    ``{transactional_id}.relaybox-published``), so a relay killed and taken
    over publishes nothing twice to ``read_committed`` readers (see
    docs/kafka.md, "Exactly once").
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    properties: Mapping[str, str] = field(default_factory=dict)
    producer_properties: Mapping[str, str] = field(default_factory=dict)
    consumer_properties: Mapping[str, str] = field(default_factory=dict)
    create_topics: bool = False
    topic_partitions: Optional[int] = None
    topic_replication: Optional[int] = None
    cloudevents: Union[bool, str] = False
    transactional_id: Optional[str] = None
    offsets_topic: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        """The core's JSON form of these settings."""
        settings: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "properties": dict(self.properties),
            "producer_properties": dict(self.producer_properties),
            "consumer_properties": dict(self.consumer_properties),
            "create_topics": self.create_topics,
        }
        if self.topic_partitions is not None:
            settings["topic_partitions"] = self.topic_partitions
        if self.topic_replication is not None:
            settings["topic_replication"] = self.topic_replication
        if self.cloudevents is not False:
            settings["cloudevents"] = self.cloudevents
        if self.transactional_id is not None:
            settings["transactional_id"] = self.transactional_id
        if self.offsets_topic is not None:
            settings["offsets_topic"] = self.offsets_topic
        return {"kafka": settings}


@dataclass(frozen=True)
class Route:
    """One route: messages of ``topics`` go to ``transport``.

    ``topics`` are topic names or globs in which ``*`` stands for any run of
    characters (``"orders.*"``). ``transport`` takes what ``Relay`` takes
    (default: the database's log). ``destination`` renames the topic on the
    way out, ``{topic}`` standing for the outbox topic (``"prod.{topic}"``).
    A relay given routes claims only their topics, so relays with disjoint
    routes share one outbox; a message goes to the first route that matches.
    """

    topics: Sequence[str]
    transport: Union[str, Kafka, Mapping[str, Any], None] = None
    destination: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        """The core's JSON form of this route."""
        route: dict[str, Any] = {
            "topics": list(self.topics),
            "transport": json.loads(transport_json(self.transport)),
        }
        if self.destination is not None:
            route["destination"] = self.destination
        return route


Transport = Union[str, Kafka, Mapping[str, Any], Sequence[Route], None]
"""``"database"`` (or ``None``), ``"kafka"`` (settings from the environment), a
:class:`Kafka`, the core's JSON form as a mapping, or a list of :class:`Route`."""


def from_env() -> Transport:
    """The transport named by ``RELAYBOX_TRANSPORT`` (``database`` or ``kafka``).

    Kafka reads ``RELAYBOX_KAFKA_BOOTSTRAP`` or ``KAFKA_BOOTSTRAP_SERVERS``
    (default ``127.0.0.1:9092``) and creates missing topics.
    """
    kind = os.environ.get("RELAYBOX_TRANSPORT", "database") or "database"
    if kind == "kafka":
        return _kafka_from_env()
    return kind


def _kafka_from_env() -> Kafka:
    servers = (
        os.environ.get("RELAYBOX_KAFKA_BOOTSTRAP")
        or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        or "127.0.0.1:9092"
    )
    return Kafka(bootstrap_servers=servers, create_topics=True)


def transport_json(transport: Transport) -> str:
    """The core's JSON text for a transport argument."""
    if transport is None or transport == "database":
        return json.dumps("database")
    if transport == "kafka":
        return json.dumps(_kafka_from_env().to_json())
    if isinstance(transport, Kafka):
        return json.dumps(transport.to_json())
    if isinstance(transport, str):
        return json.dumps(transport)
    if isinstance(transport, Sequence):
        routes: list[dict[str, Any]] = []
        for route in transport:
            if not isinstance(route, Route):
                raise TypeError("a list transport must hold relaybox.Route items")
            routes.append(route.to_json())
        return json.dumps({"routes": routes})
    return json.dumps(dict(transport))

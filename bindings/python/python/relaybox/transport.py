"""Choosing the broker: the database's own log (default) or Kafka."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

__all__ = ["Kafka", "Transport", "transport_json", "from_env"]


@dataclass(frozen=True)
class Kafka:
    """Apache Kafka settings.

    ``properties`` are librdkafka settings for producer and consumer (SASL,
    SSL, ...); ``producer_properties`` / ``consumer_properties`` apply to one
    side only. Secret values are never logged. With ``create_topics`` missing
    topics are created with ``topic_partitions`` partitions.
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    properties: Mapping[str, str] = field(default_factory=dict)
    producer_properties: Mapping[str, str] = field(default_factory=dict)
    consumer_properties: Mapping[str, str] = field(default_factory=dict)
    create_topics: bool = False
    topic_partitions: Optional[int] = None
    topic_replication: Optional[int] = None

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
        return {"kafka": settings}


Transport = Union[str, Kafka, Mapping[str, Any], None]
"""``"database"`` (or ``None``), ``"kafka"`` (settings from the environment), a
:class:`Kafka`, or the core's JSON form as a mapping."""


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
    return json.dumps(dict(transport))

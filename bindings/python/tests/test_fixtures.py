"""The cross-language fixtures of tests/fixtures: the same files every binding reads."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES, wait_for

import relaybox
from relaybox import _native

ENVELOPES = sorted((FIXTURES / "envelopes").glob("*.json"))


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)


def spec_of(fields: dict[str, Any]) -> dict[str, Any]:
    """The spec dict of a canonical message, as the native layer takes it."""
    return {
        "id": fields["id"],
        "topic": fields["topic"],
        "key": fields["key"],
        "type": fields["type"],
        "payload": base64.b64decode(fields["payload"]),
        "content_type": fields["content_type"],
        "headers": fields["headers"],
        "created_at": parse_time(fields["created_at"]),
        "available_at": parse_time(fields["available_at"]),
    }


@pytest.mark.parametrize("path", ENVELOPES, ids=lambda p: p.name)
def test_canonical_json_round_trips_byte_for_byte(path: Path) -> None:
    text = path.read_text(encoding="utf-8").rstrip("\n")
    message = _native.message_from_canonical_json(text)
    assert message.to_canonical_json() == text
    assert _native.canonical_json_of(spec_of(json.loads(text))) == text


def test_envelopes_survive_the_database_transport(outbox: relaybox.Outbox) -> None:
    expected = [path.read_text(encoding="utf-8").rstrip("\n") for path in ENVELOPES]
    for text in expected:
        fields = json.loads(text)
        fields["available_at"] = fields["created_at"]  # deliver now
        with outbox.transaction() as tx:
            tx._tx.enqueue(spec_of(fields))
    got: dict[str, str] = {}

    def collect(message: relaybox.Message, tx: relaybox.Transaction) -> None:
        got[message.id] = message.to_canonical_json()

    with relaybox.Relay(outbox):
        topics = sorted({json.loads(t)["topic"] for t in expected})
        consumers = [
            relaybox.Consumer(outbox, topic, collect, group="fixtures").start() for topic in topics
        ]
        wait_for("every envelope", lambda: len(got) == len(expected))
        for consumer in consumers:
            consumer.stop()
    for text in expected:
        fields = json.loads(text)
        fields["available_at"] = fields["created_at"]
        assert json.loads(got[fields["id"]]) == fields


CASES = json.loads((FIXTURES / "invalid_messages.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_invalid_messages_are_rejected_with_their_code(
    case: dict[str, Any], pg_url: str, prefix: str
) -> None:
    limit = case.get("max_payload_bytes")
    with relaybox.Outbox(pg_url, migrate=True, table_prefix=prefix, max_payload_bytes=limit) as box:
        with pytest.raises(relaybox.ValidationError) as info:
            with box.transaction() as tx:
                tx._tx.enqueue(spec_of(case["message"]))
        assert info.value.code == case["error_code"]
        assert box.pending_count() == 0


PARTITIONS = json.loads((FIXTURES / "partitions.json").read_text(encoding="utf-8"))


def test_partition_of_a_key_matches_the_fixture(pg_url: str, prefix: str) -> None:
    for case in PARTITIONS:
        assert _native.partition_for_key(case["key"], case["partitions"]) == case["partition"]
    # The outbox row written for a key carries that partition (empty keys are
    # not valid message keys).
    by_count: dict[int, list[dict[str, Any]]] = {}
    for case in PARTITIONS:
        by_count.setdefault(case["partitions"], []).append(case)
    for partitions, cases in by_count.items():
        with relaybox.Outbox(
            pg_url, migrate=True, table_prefix=f"{prefix}{partitions}_", partitions=partitions
        ) as box:
            for case in filter(lambda c: c["key"], cases):
                _, params, _ = box.insert_statement("t", b"", key=case["key"])
                assert params[3] == case["partition"], case

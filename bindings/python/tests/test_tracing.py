"""OpenTelemetry: one trace from the producer's request span to a span the handler makes.

The official OpenTelemetry SDK with its in-memory exporter records what the
Python API makes: a ``create`` span at enqueue, whose context the message
carries as W3C headers, and a ``process`` span around each handler call, in
which the handler's own spans run. Over the database transport and Kafka,
with a plain and an ``async def`` handler.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import wait_for
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import relaybox

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider, exporting every finished span to memory."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(provider)
    yield _EXPORTER


def _trace_of(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    return [
        s
        for s in exporter.get_finished_spans()
        if s.context is not None and s.context.trace_id == trace_id
    ]


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"spans named {name!r}: {[s.name for s in spans]}"
    return found[0]


def _enqueue_in_request(outbox: relaybox.Outbox, topic: str) -> tuple[str, Any]:
    """Enqueues one message inside the application's request span: its id, and the span."""
    tracer = trace.get_tracer("shop")
    with tracer.start_as_current_span("POST /orders") as request:
        with outbox.transaction() as tx:
            message_id = tx.enqueue(topic, {"order": 7}, key="order-7", type="OrderPlaced")
    return message_id, request


def _assert_one_path(
    exporter: InMemorySpanExporter,
    request: Any,
    topic: str,
    message_id: str,
    system: str,
    group: str,
    headers: dict[str, str],
) -> None:
    path = _trace_of(exporter, request.get_span_context().trace_id)
    create = _one(path, f"create {topic}")
    process = _one(path, f"process {topic}")
    work = _one(path, "charge card")
    assert create.parent is not None and process.parent is not None and work.parent is not None
    assert create.parent.span_id == request.get_span_context().span_id
    assert process.parent.span_id == create.context.span_id
    assert work.parent.span_id == process.context.span_id
    assert create.kind == SpanKind.PRODUCER and process.kind == SpanKind.CONSUMER
    trace_hex = f"{request.get_span_context().trace_id:032x}"
    create_hex = f"{create.context.span_id:016x}"
    assert headers["traceparent"].startswith(f"00-{trace_hex}-{create_hex}-")
    assert create.attributes is not None and process.attributes is not None
    assert create.attributes["messaging.destination.name"] == topic
    assert process.attributes["messaging.destination.name"] == topic
    assert process.attributes["messaging.message.id"] == message_id
    assert process.attributes["messaging.system"] == system
    assert process.attributes["messaging.consumer.group.name"] == group


def test_one_trace_over_the_database_transport(
    spans: InMemorySpanExporter, outbox: relaybox.Outbox
) -> None:
    topic = f"traced-{uuid.uuid4().hex[:8]}"
    message_id, request = _enqueue_in_request(outbox, topic)
    seen: dict[str, dict[str, str]] = {}

    def handle(message: relaybox.Message, tx: relaybox.Transaction) -> None:
        with trace.get_tracer("shop").start_as_current_span("charge card"):
            seen[message.id] = message.headers

    with relaybox.Relay(outbox), relaybox.Consumer(outbox, topic, handle, group="billing") as c:
        wait_for("handled", lambda: c.stats()["processed"] == 1)
    _assert_one_path(
        spans, request, topic, message_id, "relaybox.database", "billing", seen[message_id]
    )


def test_one_trace_over_kafka_with_an_async_handler(
    spans: InMemorySpanExporter, outbox: relaybox.Outbox, kafka_bootstrap: str
) -> None:
    topic = f"py-traced-{uuid.uuid4().hex[:8]}"
    kafka = relaybox.Kafka(bootstrap_servers=kafka_bootstrap, create_topics=True)
    message_id, request = _enqueue_in_request(outbox, topic)
    seen: dict[str, dict[str, str]] = {}

    async def handle(message: relaybox.Message, tx: relaybox.AsyncTransaction) -> None:
        with trace.get_tracer("shop").start_as_current_span("charge card"):
            seen[message.id] = message.headers

    with relaybox.Relay(outbox, kafka) as relay:
        wait_for("relayed to Kafka", lambda: relay.stats()["delivered"] == 1)
    consumer = relaybox.AsyncConsumer(outbox, topic, handle, group="py-traced", transport=kafka)
    consumer.start()
    try:
        wait_for("handled", lambda: consumer.stats()["processed"] == 1, timeout=60)
    finally:
        consumer._stop_blocking()
    _assert_one_path(spans, request, topic, message_id, "kafka", "py-traced", seen[message_id])


def test_a_traceparent_given_by_the_caller_is_kept(
    spans: InMemorySpanExporter, outbox: relaybox.Outbox
) -> None:
    given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with trace.get_tracer("shop").start_as_current_span("POST /orders"):
        with outbox.transaction() as tx:
            message_id = tx.enqueue("kept", b"x", headers={"traceparent": given})
    with outbox.transaction() as tx:
        table = f"{outbox.table_prefix}outbox"
        stored = tx.query(
            f"SELECT headers->>'traceparent' AS tp FROM {table} WHERE id = $1::uuid", [message_id]
        )
    assert stored[0]["tp"] == given

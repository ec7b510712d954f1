"""OpenTelemetry spans of the Python API (internal), when ``opentelemetry-api`` is installed.

At enqueue, each message records a ``create`` span (a child of the caller's
current span) and carries its context as W3C ``traceparent``/``tracestate``
headers; a consumer runs each handler call inside a ``process`` span whose
parent is that context, so the spans a handler makes join the producer's
trace. The relay's ``publish`` spans are recorded by the relay process (see
docs/observability.md). Without ``opentelemetry-api`` nothing here runs; with
the API but no SDK the spans are the API's no-op spans.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Callable, Optional, TypeVar

try:
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - exercised by installs without OpenTelemetry
    _trace = None  # type: ignore[assignment]

__all__ = ["messaging_system", "stamp", "traced_handler"]

_SCOPE = "relaybox"
_SYSTEMS = {"database": "relaybox.database", "sqs": "aws_sqs", "sns": "aws.sns"}
_PROPAGATOR = TraceContextTextMapPropagator() if _trace is not None else None
# A proxy that follows the global tracer provider, set before or after import.
_TRACER = _trace.get_tracer(_SCOPE) if _trace is not None else None

F = TypeVar("F", bound=Callable[..., Any])


def messaging_system(transport_json: str) -> str:
    """The ``messaging.system`` of a transport in the core's JSON form."""
    settings = json.loads(transport_json)
    name = settings if isinstance(settings, str) else next(iter(settings), "relaybox")
    return _SYSTEMS.get(name, name)


def stamp(
    topic: str, headers: Optional[Mapping[str, str]], event_type: Optional[str]
) -> Optional[dict[str, str]]:
    """``headers`` with the trace context of a new ``create`` span, unless they have one."""
    if _trace is None or (headers is not None and "traceparent" in headers):
        return dict(headers) if headers is not None else None
    carrier: dict[str, str] = dict(headers) if headers is not None else {}
    attributes = {
        "messaging.system": "relaybox",
        "messaging.destination.name": topic,
        "messaging.operation.name": "create",
        "messaging.operation.type": "create",
    }
    if event_type:
        attributes["relaybox.message.type"] = event_type
    assert _TRACER is not None
    with _TRACER.start_as_current_span(
        f"create {topic}", kind=_trace.SpanKind.PRODUCER, attributes=attributes
    ):
        assert _PROPAGATOR is not None
        _PROPAGATOR.inject(carrier)
    if not carrier and headers is None:
        return None
    return carrier


@contextmanager
def _process_span(message: Any, group: str, system: str) -> Iterator[None]:
    assert _trace is not None and _PROPAGATOR is not None
    parent = _PROPAGATOR.extract(message.headers)
    attributes = {
        "messaging.system": system,
        "messaging.destination.name": message.topic,
        "messaging.message.id": str(message.id),
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.consumer.group.name": group,
    }
    assert _TRACER is not None
    with _TRACER.start_as_current_span(
        f"process {message.topic}",
        context=parent,
        kind=_trace.SpanKind.CONSUMER,
        attributes=attributes,
    ):
        yield


def traced_handler(handler: F, group: str, system: str) -> F:
    """``handler`` run inside a ``process`` span per message.

    Without OpenTelemetry it is ``handler`` itself. The span records the
    handler's exception and error status when it raises.
    """
    if _trace is None:
        return handler
    call = getattr(handler, "__call__", None)  # noqa: B004 - callable objects
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call):

        @functools.wraps(handler)
        async def traced_async(message: Any, *args: Any, **kwargs: Any) -> Any:
            with _process_span(message, group, system):
                return await handler(message, *args, **kwargs)

        return traced_async  # type: ignore[return-value]

    @functools.wraps(handler)
    def traced(message: Any, *args: Any, **kwargs: Any) -> Any:
        with _process_span(message, group, system):
            return handler(message, *args, **kwargs)

    return traced  # type: ignore[return-value]

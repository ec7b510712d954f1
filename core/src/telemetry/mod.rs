//! OpenTelemetry traces of a message's path: a `create` span where it is
//! enqueued, a `publish` span where the relay hands it to the transport and a
//! `process` span around the consumer's handler, all in the trace whose
//! context the message carries as W3C `traceparent`/`tracestate` headers.
//!
//! Spans go to the process's global tracer provider
//! ([`opentelemetry::global`]) under the instrumentation scope `relaybox`.
//! They are recorded only after [`enable`] (the `relaybox` command calls it
//! when the `OTEL_*` environment configures an exporter, see [`otlp`]):
//! until then the relay and the consumer create no span and the only work
//! left is copying a caller's active trace context into the headers of
//! what it enqueues.
//!
//! Attributes follow the OpenTelemetry messaging conventions
//! (`messaging.system`, `messaging.destination.name`,
//! `messaging.message.id`, `messaging.operation.type`,
//! `messaging.operation.name`, `messaging.batch.message_count`,
//! `messaging.consumer.group.name`), with `relaybox.attempt` (the delivery
//! attempt, from 1) and `relaybox.dead_lettered`.

mod headers;
#[cfg(feature = "otlp")]
pub mod otlp;
mod spans;

use std::sync::atomic::{AtomicBool, Ordering};

pub use headers::{extract, inject, TRACEPARENT, TRACESTATE};
pub(crate) use spans::{end_process, process_span, stamp, PublishSpans, Published};

/// The instrumentation scope of relaybox's spans.
pub const SCOPE: &str = "relaybox";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns span recording on (or off) for this process. Call it once the
/// global tracer provider is installed
/// ([`opentelemetry::global::set_tracer_provider`]).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether relaybox records spans in this process.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The `messaging.system` value of a transport, by the name its sink or
/// source reports.
pub(crate) fn messaging_system(transport: &str) -> &str {
    match transport {
        "sqs" => "aws_sqs",
        "sns" => "aws.sns",
        "database" => "relaybox.database",
        "message-db" | "message_db" => "message_db",
        other => other,
    }
}

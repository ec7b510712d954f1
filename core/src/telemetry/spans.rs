//! The spans relaybox records: `create` when a message is enqueued,
//! `publish` when the relay has handed it to the transport, `process`
//! around the consumer's handler. Each is parented by the context the
//! message's headers carry.

use std::borrow::Cow;
use std::time::SystemTime;

use opentelemetry::global::{self, BoxedTracer};
use opentelemetry::trace::{Span, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

use super::headers::{extract, inject, TRACEPARENT};
use super::{enabled, messaging_system, SCOPE};
use crate::message::Message;

fn tracer() -> BoxedTracer {
    global::tracer(SCOPE)
}

fn message_attributes(
    system: &str,
    operation: &'static str,
    kind: &'static str,
    message: &Message,
) -> Vec<KeyValue> {
    vec![
        KeyValue::new("messaging.system", system.to_string()),
        KeyValue::new("messaging.destination.name", message.topic.clone()),
        KeyValue::new("messaging.message.id", message.id.to_string()),
        KeyValue::new("messaging.operation.name", operation),
        KeyValue::new("messaging.operation.type", kind),
    ]
}

/// `messages` with the caller's trace context in their headers, for the
/// outbox to store: when spans are recorded, each message gets a `create`
/// span (a child of the caller's current span, or the root of a new trace)
/// and carries that span's context; otherwise the caller's active context,
/// if any, is copied as it is. A message that already has a `traceparent`
/// header keeps it. Borrowed unchanged when there is nothing to add.
pub(crate) fn stamp(messages: &[Message]) -> Cow<'_, [Message]> {
    let traced = enabled();
    let cx = Context::current();
    if !traced && !cx.span().span_context().is_valid() {
        return Cow::Borrowed(messages);
    }
    if messages.iter().all(|m| m.headers.contains_key(TRACEPARENT)) {
        return Cow::Borrowed(messages);
    }
    let tracer = traced.then(tracer);
    let mut stamped = messages.to_vec();
    for message in stamped
        .iter_mut()
        .filter(|m| !m.headers.contains_key(TRACEPARENT))
    {
        match &tracer {
            Some(tracer) => {
                let span = tracer
                    .span_builder(format!("create {}", message.topic))
                    .with_kind(SpanKind::Producer)
                    .with_attributes(message_attributes("relaybox", "create", "create", message))
                    .start_with_context(tracer, &cx);
                let created = cx.with_span(span);
                inject(&created, &mut message.headers);
                created.span().end();
            }
            None => inject(&cx, &mut message.headers),
        }
    }
    Cow::Owned(stamped)
}

/// What became of one message the relay handed to the transport.
pub(crate) enum Published<'a> {
    /// The transport acknowledged it.
    Delivered,
    /// It failed and will be tried again.
    Failed(&'a str),
    /// It failed for the last time and went to dead letters.
    DeadLettered(&'a str),
}

/// The `publish` spans of one batch: one per message, from the moment the
/// batch was handed to the transport to its acknowledgement.
pub(crate) struct PublishSpans {
    tracer: BoxedTracer,
    system: String,
    started: SystemTime,
    batch: usize,
}

impl PublishSpans {
    /// The spans of a batch of `batch` messages handed to `transport` now;
    /// `None` when spans are not recorded.
    pub(crate) fn start(transport: &str, batch: usize) -> Option<Self> {
        enabled().then(|| PublishSpans {
            tracer: tracer(),
            system: messaging_system(transport).to_string(),
            started: SystemTime::now(),
            batch,
        })
    }

    /// The same spans for a batch found to hold `batch` messages.
    pub(crate) fn with_batch(self, batch: usize) -> Self {
        PublishSpans { batch, ..self }
    }

    /// Records the span of `message` (delivery `attempt`, from 1).
    pub(crate) fn record(&self, message: &Message, attempt: u32, outcome: Published<'_>) {
        let mut attributes = message_attributes(&self.system, "publish", "send", message);
        attributes.push(KeyValue::new("relaybox.attempt", i64::from(attempt)));
        if self.batch > 1 {
            attributes.push(KeyValue::new(
                "messaging.batch.message_count",
                self.batch as i64,
            ));
        }
        if let Some(key) = &message.key {
            attributes.push(KeyValue::new("messaging.message.key", key.clone()));
        }
        let dead = matches!(outcome, Published::DeadLettered(_));
        attributes.push(KeyValue::new("relaybox.dead_lettered", dead));
        let mut span = self
            .tracer
            .span_builder(format!("publish {}", message.topic))
            .with_kind(SpanKind::Producer)
            .with_start_time(self.started)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &extract(&message.headers));
        if let Published::Failed(error) | Published::DeadLettered(error) = outcome {
            span.set_status(Status::error(error.to_string()));
        }
        span.end();
    }
}

/// A `process` span for `message`, delivered by `transport` to consumer
/// group `group` (delivery `attempt`, from 1), as the context the handler
/// runs in; `None` when spans are not recorded. The caller ends it with
/// [`end_process`].
pub(crate) fn process_span(
    message: &Message,
    transport: &str,
    group: &str,
    attempt: u32,
) -> Option<Context> {
    if !enabled() {
        return None;
    }
    let tracer = tracer();
    let mut attributes =
        message_attributes(messaging_system(transport), "process", "process", message);
    attributes.push(KeyValue::new(
        "messaging.consumer.group.name",
        group.to_string(),
    ));
    attributes.push(KeyValue::new("relaybox.attempt", i64::from(attempt)));
    let span = tracer
        .span_builder(format!("process {}", message.topic))
        .with_kind(SpanKind::Consumer)
        .with_attributes(attributes)
        .start_with_context(&tracer, &extract(&message.headers));
    Some(Context::new().with_span(span))
}

/// Ends the `process` span of `cx`, with the handler's error if it failed
/// and whether the failure sent the message to dead letters.
pub(crate) fn end_process(cx: &Context, error: Option<&str>, dead_lettered: bool) {
    let span = cx.span();
    span.set_attribute(KeyValue::new("relaybox.dead_lettered", dead_lettered));
    if let Some(error) = error {
        span.set_status(Status::error(error.to_string()));
    }
    span.end();
}

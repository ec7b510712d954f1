//! W3C Trace Context in a message's headers: `traceparent` and `tracestate`
//! written from, and read into, an OpenTelemetry [`Context`].

use std::collections::BTreeMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The header carrying the W3C trace parent.
pub const TRACEPARENT: &str = "traceparent";
/// The header carrying the W3C trace state.
pub const TRACESTATE: &str = "tracestate";

struct Headers<'a>(&'a mut BTreeMap<String, String>);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

struct ReadHeaders<'a>(&'a BTreeMap<String, String>);

impl Extractor for ReadHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Writes the span context of `cx` into `headers` as `traceparent` (and
/// `tracestate` when it has one); writes nothing for a context without a
/// valid span.
pub fn inject(cx: &Context, headers: &mut BTreeMap<String, String>) {
    TraceContextPropagator::new().inject_context(cx, &mut Headers(headers));
}

/// The remote span context that `headers` carry, as a parent context (empty
/// when they carry none or a malformed one).
pub fn extract(headers: &BTreeMap<String, String>) -> Context {
    TraceContextPropagator::new().extract(&ReadHeaders(headers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };

    #[test]
    fn a_context_survives_the_headers() {
        let span = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "x")]).unwrap(),
        );
        let cx = Context::new().with_remote_span_context(span.clone());
        let mut headers = BTreeMap::new();
        inject(&cx, &mut headers);
        assert_eq!(
            headers[TRACEPARENT],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(headers[TRACESTATE], "vendor=x");
        let back = extract(&headers);
        let read = back.span().span_context().clone();
        assert_eq!(read.trace_id(), span.trace_id());
        assert_eq!(read.span_id(), span.span_id());
        assert!(read.is_remote());
    }

    #[test]
    fn no_context_writes_nothing_and_garbage_reads_as_none() {
        let mut headers = BTreeMap::new();
        inject(&Context::new(), &mut headers);
        assert!(headers.is_empty());
        headers.insert(TRACEPARENT.into(), "not a trace parent".into());
        assert!(!extract(&headers).span().span_context().is_valid());
    }
}

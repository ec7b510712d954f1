//! One trace from the producer's request to the consumer's handler: the
//! OpenTelemetry SDK's in-memory exporter records the spans relaybox makes
//! (`create` at enqueue, `publish` in the relay, `process` around the
//! handler) and the application's own (the request, and work done in the
//! handler), over the database transport and over Kafka.
//!
//! Needs `RELAYBOX_TEST_DATABASE_URL` and `RELAYBOX_KAFKA_BOOTSTRAP`
//! (`dev/services start postgres kafka && eval "$(dev/services env)"`).
#![cfg(feature = "kafka")]

mod common;
mod kafka_common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::{consumer_config, relay_config, start_db_relay, Backend, TestDb};
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{SpanId, SpanKind, TraceContextExt, TraceId, Tracer};
use opentelemetry::{global, Context, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use relaybox::transport::kafka::{KafkaConfig, KafkaSink, KafkaSource, KafkaSourceConfig};
use relaybox::{
    handler_fn, BoxError, Consumer, DatabaseSource, DatabaseSourceConfig, Message, Relay, Source,
};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(45);

/// The process's tracer provider: every finished span goes to this exporter.
fn spans() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        global::set_tracer_provider(provider);
        relaybox::telemetry::enable(true);
        exporter
    })
}

/// Enqueues one message on `topic` inside the application's request span
/// and returns the message id and the request span's trace and span ids.
async fn enqueue_in_request(db: &TestDb, topic: &str) -> (uuid::Uuid, TraceId, SpanId) {
    let request = global::tracer("shop").start("POST /orders");
    let cx = Context::current_with_span(request);
    let (trace, span) = {
        let s = cx.span();
        (s.span_context().trace_id(), s.span_context().span_id())
    };
    let store = db.store.clone();
    let topic = topic.to_string();
    let id = async move {
        let tx = store.begin().await.expect("begin");
        let message = Message::json(&topic, &serde_json::json!({"order": 7}))
            .expect("message")
            .with_key("order-7");
        let id = tx.enqueue(message).await.expect("enqueue");
        tx.commit().await.expect("commit");
        id
    }
    .with_context(cx.clone())
    .await;
    cx.span().end();
    (id, trace, span)
}

/// A handler that does traced work of its own and reports the message id.
fn traced_handler(done: mpsc::UnboundedSender<uuid::Uuid>) -> impl relaybox::Handler {
    handler_fn(move |message: Message, _tx| {
        let done = done.clone();
        async move {
            global::tracer("shop").in_span("charge card", |_| ());
            let _ = done.send(message.id);
            Ok::<(), BoxError>(())
        }
    })
}

/// Waits until the exporter holds spans of every name in `names` in trace
/// `trace`, and returns every span of that trace.
async fn trace_of(trace: TraceId, names: &[String]) -> Vec<SpanData> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found: Vec<SpanData> = spans()
            .get_finished_spans()
            .expect("spans")
            .into_iter()
            .filter(|s| s.span_context.trace_id() == trace)
            .collect();
        if names
            .iter()
            .all(|n| found.iter().any(|s| &s.name.to_string() == n))
        {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "trace {trace} has {:?}, expected {names:?}",
            found.iter().map(|s| s.name.to_string()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn one<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let matching: Vec<&SpanData> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(matching.len(), 1, "spans named {name:?}: {matching:?}");
    matching[0]
}

fn attribute(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

/// The path `request → create → publish`, `create → process → charge card`,
/// with the messaging attributes of each relaybox span.
fn assert_one_path(
    path: &[SpanData],
    request: SpanId,
    topic: &str,
    id: uuid::Uuid,
    system: &str,
    group: &str,
) {
    let create = one(path, &format!("create {topic}"));
    let publish = one(path, &format!("publish {topic}"));
    let process = one(path, &format!("process {topic}"));
    let work = one(path, "charge card");
    assert_eq!(create.parent_span_id, request);
    assert_eq!(publish.parent_span_id, create.span_context.span_id());
    assert_eq!(process.parent_span_id, create.span_context.span_id());
    assert_eq!(work.parent_span_id, process.span_context.span_id());
    assert_eq!(create.span_kind, SpanKind::Producer);
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert_eq!(process.span_kind, SpanKind::Consumer);
    for span in [create, publish, process] {
        assert_eq!(
            attribute(span, "messaging.destination.name"),
            Some(topic.to_string().into())
        );
        assert_eq!(
            attribute(span, "messaging.message.id"),
            Some(id.to_string().into())
        );
    }
    let expected: [(&SpanData, &str, Value); 7] = [
        (publish, "messaging.system", system.to_string().into()),
        (publish, "messaging.operation.type", "send".into()),
        (publish, "relaybox.attempt", 1i64.into()),
        (publish, "relaybox.dead_lettered", false.into()),
        (process, "messaging.system", system.to_string().into()),
        (process, "messaging.operation.type", "process".into()),
        (
            process,
            "messaging.consumer.group.name",
            group.to_string().into(),
        ),
    ];
    for (span, key, value) in expected {
        assert_eq!(attribute(span, key), Some(value), "{key} of {}", span.name);
    }
}

async fn consume_until(
    db: &TestDb,
    source: Arc<dyn Source>,
    group: &str,
    id: uuid::Uuid,
) -> Consumer {
    let (done, mut handled) = mpsc::unbounded_channel();
    let consumer = Consumer::start(
        db.store.clone(),
        source,
        Arc::new(traced_handler(done)),
        consumer_config(group),
    )
    .expect("consumer");
    let got = tokio::time::timeout(WAIT, handled.recv())
        .await
        .expect("handled in time");
    assert_eq!(got, Some(id));
    consumer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_request_to_handler_over_the_database_transport() {
    spans();
    let db = TestDb::new(Backend::Postgres).await;
    let topic = format!("traced-{}", common::unique_prefix());
    let (id, trace, request) = enqueue_in_request(&db, &topic).await;

    let relay = start_db_relay(&db.store, relay_config());
    let source = DatabaseSource::new(
        db.store.clone(),
        DatabaseSourceConfig::new(&topic, "billing"),
    )
    .expect("database source");
    let consumer = consume_until(&db, source, "billing", id).await;

    let names = ["create", "publish", "process"].map(|op| format!("{op} {topic}"));
    let mut wanted = names.to_vec();
    wanted.push("charge card".into());
    let path = trace_of(trace, &wanted).await;
    assert_one_path(&path, request, &topic, id, "relaybox.database", "billing");
    consumer.shutdown().await.expect("consumer shutdown");
    relay.shutdown().await.expect("relay shutdown");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_request_to_handler_over_kafka() {
    spans();
    let bootstrap = kafka_common::bootstrap();
    let db = TestDb::new(Backend::Postgres).await;
    let topic = kafka_common::topic("traced");
    let group = kafka_common::group("traced");
    let (id, trace, request) = enqueue_in_request(&db, &topic).await;

    let sink = KafkaSink::new(kafka_common::kafka_config(&bootstrap)).expect("kafka sink");
    let relay = Relay::start(db.store.clone(), Arc::new(sink), relay_config()).expect("relay");
    let source = KafkaSource::new(KafkaSourceConfig::new(
        KafkaConfig::new(&bootstrap),
        &topic,
        group.clone(),
    ))
    .expect("kafka source");
    let consumer = consume_until(&db, source, &group, id).await;

    let mut wanted: Vec<String> = ["create", "publish", "process"]
        .iter()
        .map(|op| format!("{op} {topic}"))
        .collect();
    wanted.push("charge card".into());
    let path = trace_of(trace, &wanted).await;
    assert_one_path(&path, request, &topic, id, "kafka", &group);
    consumer.shutdown().await.expect("consumer shutdown");
    relay.shutdown().await.expect("relay shutdown");
    db.cleanup().await;
}

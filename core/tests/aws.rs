//! The SNS and SQS transports against moto (AWS stand-in in server mode) and
//! PostgreSQL: what the relay publishes is read back with the AWS SDK's own
//! ReceiveMessage (not relaybox's source), and the consumer is driven through
//! `SqsSource`.
//!
//! Needs `RELAYBOX_TEST_DATABASE_URL` and `RELAYBOX_AWS_ENDPOINT_URL` with
//! moto's credentials (`dev/services start postgres moto && eval
//! "$(dev/services env)"`); the tests fail, never skip, without them. Every
//! test uses its own topics, queues, groups and table prefix.
#![cfg(feature = "aws")]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use common::*;
use relaybox::transport::aws::{
    source_queue_name, SnsConfig, SnsSink, SqsConfig, SqsSink, SqsSource, SqsSourceConfig,
};
use relaybox::{
    AckToken, Consumer, Delivery, Error, Message, Relay, Sink, Source, TransportConfig,
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(45);

/// Relay settings for moto: its server takes hundreds of milliseconds per
/// batch call on a loaded machine, so the publish timeout is generous.
fn aws_relay_config() -> relaybox::RelayConfig {
    relaybox::RelayConfig {
        lease_ttl: Duration::from_secs(30),
        publish_timeout: Some(Duration::from_secs(10)),
        ..relay_config()
    }
}

fn endpoint() -> String {
    match std::env::var("RELAYBOX_AWS_ENDPOINT_URL") {
        Ok(u) if !u.trim().is_empty() => u,
        _ => panic!(
            "RELAYBOX_AWS_ENDPOINT_URL is not set: the SNS/SQS tests run against moto and are \
             never skipped. Start it with `dev/services start moto && eval \"$(dev/services env)\"`"
        ),
    }
}

fn suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

fn sns_config() -> SnsConfig {
    SnsConfig {
        region: Some("us-east-1".into()),
        endpoint_url: Some(endpoint()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        create_topics: true,
        create_queues: true,
        visibility_timeout: Duration::from_secs(30),
        ..SnsConfig::default()
    }
}

fn sqs_config() -> SqsConfig {
    SqsConfig {
        region: Some("us-east-1".into()),
        endpoint_url: Some(endpoint()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        create_queues: true,
        visibility_timeout: Duration::from_secs(30),
        ..SqsConfig::default()
    }
}

/// Plain AWS SDK clients on moto, independent of relaybox.
async fn raw_clients() -> (aws_sdk_sqs::Client, aws_sdk_sns::Client) {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint())
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .load()
        .await;
    (
        aws_sdk_sqs::Client::new(&sdk),
        aws_sdk_sns::Client::new(&sdk),
    )
}

/// A message as ReceiveMessage returned it.
#[derive(Debug, Clone)]
struct Raw {
    body: String,
    attributes: HashMap<String, String>,
    receipt: String,
}

impl Raw {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }
}

/// Receives until `n` messages came (deleting none), within `WAIT`.
async fn receive_raw(sqs: &aws_sdk_sqs::Client, url: &str, n: usize) -> Vec<Raw> {
    let mut out: Vec<Raw> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while out.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} messages arrived in {url}",
            out.len()
        );
        let r = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(60)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive_message");
        for m in r.messages.unwrap_or_default() {
            out.push(Raw {
                body: m.body.unwrap_or_default(),
                attributes: m
                    .message_attributes
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| {
                        assert_eq!(v.data_type, "String", "attribute {k}");
                        (k, v.string_value.unwrap_or_default())
                    })
                    .collect(),
                receipt: m.receipt_handle.unwrap_or_default(),
            });
        }
    }
    out
}

/// Messages visible plus in flight in a queue.
async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> (u64, u64) {
    let a = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("get_queue_attributes")
        .attributes
        .unwrap_or_default();
    let get = |k: &QueueAttributeName| a.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
    (
        get(&QueueAttributeName::ApproximateNumberOfMessages),
        get(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

async fn queue_url(sqs: &aws_sdk_sqs::Client, name: &str) -> String {
    sqs.get_queue_url()
        .queue_name(name)
        .send()
        .await
        .unwrap_or_else(|e| panic!("queue {name}: {e:?}"))
        .queue_url
        .expect("url")
}

/// A queue (made with the SDK) subscribed to `topic_arn`.
async fn subscribed_queue(
    sqs: &aws_sdk_sqs::Client,
    sns: &aws_sdk_sns::Client,
    name: &str,
    topic_arn: &str,
    raw: bool,
) -> String {
    let url = sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("create_queue")
        .queue_url
        .expect("url");
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("queue arn")
        .attributes
        .unwrap()
        .remove(&QueueAttributeName::QueueArn)
        .unwrap();
    sns.subscribe()
        .topic_arn(topic_arn)
        .protocol("sqs")
        .endpoint(arn)
        .attributes("RawMessageDelivery", if raw { "true" } else { "false" })
        .send()
        .await
        .expect("subscribe");
    url
}

fn event(topic: &str, i: usize) -> Message {
    Message::new(topic, format!("{{\"order\": {i}, \"note\": \"é\"}}"))
        .with_key(format!("key-{}", i % 4))
        .with_type("OrderRegistered")
        .with_content_type("application/json")
        .with_header("entityName", "Order")
        .with_header("publisherName", "billing")
        .with_header("eventName", "OrderRegistered")
        .with_header(
            "traceparent",
            format!("00-{:032x}-{:016x}-01", i + 1, i + 1),
        )
}

// ---- 1. relay → SNS → subscribed queues, read with the SDK -------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_sns_reaches_subscribed_queues_with_body_and_routing_attributes() {
    let (sqs, sns) = raw_clients().await;
    let db = TestDb::new(Backend::Postgres).await;
    let s = suffix();
    let topic = format!("orders-{s}");
    let topic_arn = sns
        .create_topic()
        .name(&topic)
        .send()
        .await
        .expect("create_topic")
        .topic_arn
        .unwrap();
    let raw_url = subscribed_queue(&sqs, &sns, &format!("raw-{s}"), &topic_arn, true).await;
    let env_url = subscribed_queue(&sqs, &sns, &format!("env-{s}"), &topic_arn, false).await;

    let sink = SnsSink::new(SnsConfig {
        create_topics: false,
        ..sns_config()
    })
    .expect("sns sink");
    let relay = Relay::start(db.store.clone(), Arc::new(sink), aws_relay_config()).expect("relay");
    let messages: Vec<Message> = (0..25).map(|i| event(&topic, i)).collect();
    db.enqueue_committed(&messages).await;
    let raw = receive_raw(&sqs, &raw_url, messages.len()).await;
    let wrapped = receive_raw(&sqs, &env_url, messages.len()).await;
    relay.shutdown().await.expect("relay shutdown");
    assert_eq!(relay.stats().delivered, 25);

    let by_id: HashMap<String, &Raw> = raw
        .iter()
        .map(|r| (r.attr("relaybox-id").expect("relaybox-id").to_string(), r))
        .collect();
    assert_eq!(by_id.len(), 25, "each message arrived once: {raw:?}");
    for m in &messages {
        let r = by_id[&m.id.to_string()];
        assert_eq!(r.body.as_bytes(), &m.payload[..], "raw body of {}", m.id);
        let mut want: HashMap<String, String> = m.headers.clone().into_iter().collect();
        want.insert("relaybox-id".into(), m.id.to_string());
        want.insert("relaybox-type".into(), "OrderRegistered".into());
        want.insert("relaybox-key".into(), m.key.clone().unwrap());
        want.insert("content-type".into(), "application/json".into());
        assert_eq!(r.attributes, want, "attributes of {}", m.id);
    }
    // Without raw delivery, the body is SNS's notification; its Message is the
    // payload (json.loads(body)["Message"]) and its MessageAttributes carry
    // the routing attributes.
    let mut seen = HashSet::new();
    for w in &wrapped {
        let n: serde_json::Value = serde_json::from_str(&w.body).expect("notification JSON");
        assert_eq!(n["Type"], "Notification");
        assert_eq!(n["TopicArn"], topic_arn.as_str());
        let id = n["MessageAttributes"]["relaybox-id"]["Value"]
            .as_str()
            .expect("relaybox-id in the notification");
        let m = messages.iter().find(|m| m.id.to_string() == id).unwrap();
        assert_eq!(n["Message"].as_str().unwrap().as_bytes(), &m.payload[..]);
        for name in ["entityName", "publisherName", "eventName"] {
            assert_eq!(
                n["MessageAttributes"][name]["Value"].as_str(),
                m.headers.get(name).map(String::as_str),
                "{name} of {id}"
            );
            assert_eq!(n["MessageAttributes"][name]["Type"], "String");
        }
        seen.insert(id.to_string());
    }
    assert_eq!(seen.len(), 25);
    db.cleanup().await;
}

// ---- 2. attribute limit, missing topic, fixed topic_arn, FIFO -------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_sink_limits_attributes_names_missing_topics_and_sets_fifo_ids() {
    let (sqs, sns) = raw_clients().await;
    let s = suffix();

    // More than 10 attributes: a clear, non-retryable error; the message after
    // it with the same key is held back, another key goes through.
    let topic = format!("limits-{s}");
    let sink = SnsSink::new(sns_config()).expect("sink");
    let mut crowded = Message::new(&topic, "x").with_key("a");
    // relaybox-id and relaybox-key plus 9 headers: 11 attributes.
    for i in 0..9 {
        crowded = crowded.with_header(format!("h{i}"), "v");
    }
    let batch = vec![
        crowded.clone(),
        Message::new(&topic, "after").with_key("a"),
        Message::new(&topic, "other").with_key("b"),
    ];
    let results = sink.publish(&batch).await;
    match &results[0] {
        Err(e @ Error::Transport { message, .. }) => {
            assert!(!e.retryable());
            assert_eq!(e.message_id(), Some(crowded.id));
            assert!(message.contains("at most 10"), "{message}");
        }
        other => panic!("expected the attribute limit error, got {other:?}"),
    }
    assert!(results[1].is_err(), "same key after a failure is not sent");
    assert!(results[2].is_ok(), "{:?}", results[2]);

    // A missing topic without create_topics: an error naming it.
    let missing = format!("missing-{s}");
    let sink = SnsSink::new(SnsConfig {
        create_topics: false,
        ..sns_config()
    })
    .unwrap();
    let m = Message::new(&missing, "p");
    let r = sink.publish(std::slice::from_ref(&m)).await;
    match &r[0] {
        Err(e) => {
            assert!(e.to_string().contains(&missing), "{e}");
            assert_eq!(e.message_id(), Some(m.id));
        }
        Ok(()) => panic!("published to a missing topic"),
    }

    // topic_arn: every message goes to that FIFO topic, whatever its topic;
    // MessageGroupId = key, MessageDeduplicationId = relaybox id.
    let fifo = format!("fixed-{s}.fifo");
    let arn = sns
        .create_topic()
        .name(&fifo)
        .attributes("FifoTopic", "true")
        .send()
        .await
        .unwrap()
        .topic_arn
        .unwrap();
    let qurl = sqs
        .create_queue()
        .queue_name(format!("fixedq-{s}.fifo"))
        .attributes(QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let qarn = sqs
        .get_queue_attributes()
        .queue_url(&qurl)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()
        .remove(&QueueAttributeName::QueueArn)
        .unwrap();
    sns.subscribe()
        .topic_arn(&arn)
        .protocol("sqs")
        .endpoint(qarn)
        .attributes("RawMessageDelivery", "true")
        .send()
        .await
        .unwrap();
    let sink = SnsSink::new(SnsConfig {
        topic_arn: Some(arn.clone()),
        create_topics: false,
        ..sns_config()
    })
    .unwrap();
    let batch: Vec<Message> = (0..3)
        .map(|i| Message::new("anything", format!("f{i}")).with_key("cust-7"))
        .collect();
    for r in sink.publish(&batch).await {
        r.expect("fifo publish");
    }
    let got = sqs
        .receive_message()
        .queue_url(&qurl)
        .max_number_of_messages(10)
        .wait_time_seconds(2)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    assert_eq!(got.len(), 3, "{got:?}");
    for (m, g) in batch.iter().zip(&got) {
        assert_eq!(
            g.body.as_deref(),
            Some(std::str::from_utf8(&m.payload).unwrap())
        );
        let sys = g.attributes.clone().unwrap_or_default();
        assert_eq!(
            sys.get(&MessageSystemAttributeName::MessageGroupId)
                .map(String::as_str),
            Some("cust-7")
        );
        assert_eq!(
            sys.get(&MessageSystemAttributeName::MessageDeduplicationId),
            Some(&m.id.to_string())
        );
    }
}

// ---- 2b. a topic the endpoint lost -------------------------------------------------

/// The endpoint loses the topic and the group's queue (moto restarted, or
/// both deleted): the sink creates the topic again and, before publishing to
/// it, sets up this process's source of the topic again, so the message
/// reaches the new queue instead of a topic without subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_sink_subscribes_the_sources_again_before_publishing_to_a_recreated_topic() {
    let (sqs, sns) = raw_clients().await;
    let s = suffix();
    let topic = format!("lost-{s}");
    let group = format!("g{s}");
    let source = SqsSource::new(SqsSourceConfig::Sns {
        config: sns_config(),
        topic: topic.clone(),
        group: group.clone(),
    })
    .expect("sns source");
    source.prepare().await.expect("queue and subscription");
    let sink = SnsSink::new(sns_config()).expect("sns sink");
    let before = event(&topic, 0);
    let results = sink.publish(std::slice::from_ref(&before)).await;
    assert!(results[0].is_ok(), "{results:?}");

    let queue = source.queue_name().to_string();
    let arn = sns
        .create_topic()
        .name(&topic)
        .send()
        .await
        .expect("the topic's ARN")
        .topic_arn
        .expect("topic arn");
    sns.delete_topic()
        .topic_arn(&arn)
        .send()
        .await
        .expect("delete_topic");
    sqs.delete_queue()
        .queue_url(queue_url(&sqs, &queue).await)
        .send()
        .await
        .expect("delete_queue");

    let after = event(&topic, 1);
    let results = sink.publish(std::slice::from_ref(&after)).await;
    assert!(results[0].is_ok(), "{results:?}");
    let got = receive_raw(&sqs, &queue_url(&sqs, &queue).await, 1).await;
    let after_id = after.id.to_string();
    assert_eq!(
        got.iter()
            .map(|r| r.attr("relaybox-id"))
            .collect::<Vec<_>>(),
        vec![Some(after_id.as_str())],
        "the queue set up again holds the message published after the loss"
    );
}

// ---- 3. SQS sink and source round trip -----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_round_trip_handles_every_message_once_and_empties_the_queue() {
    let (sqs, _) = raw_clients().await;
    let db = TestDb::new(Backend::Postgres).await;
    let topic = format!("jobs-{}", suffix());
    let sink = SqsSink::new(sqs_config()).expect("sqs sink");

    // What the sink sent, read with the SDK: body and attributes (binary
    // payloads travel in base64, marked by relaybox-encoding).
    let probe = vec![
        event(&topic, 0),
        Message::new(&topic, vec![0u8, 0xff, 0xfe, 7]).with_key("bin"),
    ];
    for r in sink.publish(&probe).await {
        r.expect("send");
    }
    let url = queue_url(&sqs, &topic).await;
    let got = receive_raw(&sqs, &url, 2).await;
    let text = got
        .iter()
        .find(|r| r.attr("relaybox-id") == Some(&probe[0].id.to_string()[..]))
        .unwrap();
    assert_eq!(text.body.as_bytes(), &probe[0].payload[..]);
    assert_eq!(text.attr("entityName"), Some("Order"));
    assert_eq!(text.attr("eventName"), Some("OrderRegistered"));
    let bin = got
        .iter()
        .find(|r| r.attr("relaybox-id") == Some(&probe[1].id.to_string()[..]))
        .unwrap();
    assert_eq!(bin.attr("relaybox-encoding"), Some("base64"));
    for r in &got {
        sqs.delete_message()
            .queue_url(&url)
            .receipt_handle(&r.receipt)
            .send()
            .await
            .unwrap();
    }

    let relay = Relay::start(db.store.clone(), Arc::new(sink), aws_relay_config()).expect("relay");
    let messages: Vec<Message> = (0..120).map(|i| event(&topic, i)).collect();
    db.enqueue_committed(&messages).await;
    let recorder = Recorder::new(&db).arc();
    let source = TransportConfig::Sqs(sqs_config())
        .source(&db.store, &topic, "workers")
        .expect("source");
    let consumer = Consumer::start(
        db.store.clone(),
        source,
        recorder.clone(),
        consumer_config("workers"),
    )
    .expect("consumer");
    wait_for("every message handled", WAIT, async || {
        let n = recorder.handled_count();
        if n >= messages.len() {
            Ok(())
        } else {
            Err(format!("{n} handled"))
        }
    })
    .await;
    wait_for(
        "the queue emptied by deletes",
        WAIT,
        async || match queue_depth(&sqs, &url).await {
            (0, 0) => Ok(()),
            d => Err(format!("{d:?} visible/in flight")),
        },
    )
    .await;
    consumer.shutdown().await.expect("consumer shutdown");
    relay.shutdown().await.expect("relay shutdown");
    let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
    assert_handled_once(&db, &[&recorder], &ids).await;
    let handled = recorder.handled();
    let first = handled.iter().find(|m| m.id == messages[5].id).unwrap();
    assert_eq!(first.payload, messages[5].payload);
    assert_eq!(first.key, messages[5].key);
    assert_eq!(first.event_type, "OrderRegistered");
    assert_eq!(first.content_type, "application/json");
    assert_eq!(
        first.headers.get("publisherName").map(String::as_str),
        Some("billing")
    );
    assert_eq!(first.topic, topic);
    db.cleanup().await;
}

// ---- 4. SNS consumer: once per message, redelivery after the visibility timeout --

/// A source that hands everything out and never deletes anything.
struct NoAck {
    inner: Arc<SqsSource>,
    delivered: Mutex<HashMap<Uuid, u32>>,
}

#[async_trait::async_trait]
impl Source for NoAck {
    fn name(&self) -> &str {
        "no-ack"
    }
    async fn fetch(&self, max: usize, wait: Duration) -> relaybox::Result<Vec<Delivery>> {
        let d = self.inner.fetch(max, wait).await?;
        let mut counts = self.delivered.lock().unwrap();
        for x in &d {
            *counts.entry(x.message.id).or_default() += 1;
        }
        Ok(d)
    }
    async fn ack(&self, _acks: &[AckToken]) -> relaybox::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_consumer_handles_once_and_the_inbox_skips_visibility_timeout_redeliveries() {
    let (sqs, _) = raw_clients().await;
    let db = TestDb::new(Backend::Postgres).await;
    let topic = format!("events-{}", suffix());
    let group = "audit";
    let config = SnsConfig {
        visibility_timeout: Duration::from_secs(1),
        ..sns_config()
    };
    let source_config = SqsSourceConfig::Sns {
        config: config.clone(),
        topic: topic.clone(),
        group: group.into(),
    };
    // The first fetch creates the queue and its subscription.
    let inner = SqsSource::new(source_config.clone()).expect("source");
    assert_eq!(inner.queue_name(), source_queue_name(&topic, group));
    assert_eq!(inner.queue_name(), format!("audit-{topic}"));
    assert!(inner
        .fetch(10, Duration::from_millis(100))
        .await
        .unwrap()
        .is_empty());

    let sink = SnsSink::new(config.clone()).expect("sink");
    let messages: Vec<Message> = (0..30).map(|i| event(&topic, i)).collect();
    for r in sink.publish(&messages).await {
        r.expect("publish");
    }

    // Consumer 1 never deletes: after the 1 s visibility timeout SQS delivers
    // again, and the inbox keeps the handler at one call per message.
    let recorder = Recorder::new(&db).arc();
    let no_ack = Arc::new(NoAck {
        inner,
        delivered: Mutex::new(HashMap::new()),
    });
    let c1 = Consumer::start(
        db.store.clone(),
        no_ack.clone(),
        recorder.clone(),
        consumer_config(group),
    )
    .expect("consumer");
    wait_for("every message delivered at least twice", WAIT, async || {
        let d = no_ack.delivered.lock().unwrap().clone();
        let twice = messages
            .iter()
            .filter(|m| d.get(&m.id).copied().unwrap_or(0) >= 2)
            .count();
        if twice == messages.len() {
            Ok(())
        } else {
            Err(format!("{twice} redelivered"))
        }
    })
    .await;
    c1.shutdown().await.expect("shutdown");
    let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
    assert_handled_once(&db, &[&recorder], &ids).await;

    // Consumer 2 with the real source: redelivered again, skipped by the
    // inbox, and deleted, so the queue ends empty.
    let source = TransportConfig::Sns(config)
        .source(&db.store, &topic, group)
        .expect("source");
    let c2 = Consumer::start(
        db.store.clone(),
        source,
        recorder.clone(),
        consumer_config(group),
    )
    .expect("consumer 2");
    let url = queue_url(&sqs, &format!("audit-{topic}")).await;
    wait_for("the queue emptied", WAIT, async || {
        match queue_depth(&sqs, &url).await {
            (0, 0) => Ok(()),
            d => Err(format!("{d:?} visible/in flight")),
        }
    })
    .await;
    let stats = c2.stats();
    c2.shutdown().await.expect("shutdown");
    assert!(
        stats.duplicates >= 1,
        "consumer 2 saw the redeliveries as duplicates: {stats:?}"
    );
    assert_handled_once(&db, &[&recorder], &ids).await;
    db.cleanup().await;
}

// ---- 4b. order per key through FIFO ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_topic_keeps_the_order_of_each_key_with_concurrent_lanes() {
    let db = TestDb::new(Backend::Postgres).await;
    let topic = format!("ordered-{}.fifo", suffix());
    let group = "shipping";
    let config = SnsConfig {
        visibility_timeout: Duration::from_secs(5),
        ..sns_config()
    };
    let source = SqsSource::new(SqsSourceConfig::Sns {
        config: config.clone(),
        topic: topic.clone(),
        group: group.into(),
    })
    .expect("source");
    source.prepare().await.expect("FIFO queue and subscription");
    assert_eq!(
        source.queue_name(),
        format!("shipping-ordered-{}", &topic[8..])
    );
    let recorder = Recorder::new(&db).arc();
    let consumer = Consumer::start(
        db.store.clone(),
        source,
        recorder.clone(),
        relaybox::ConsumerConfig {
            concurrency: 4,
            ..consumer_config(group)
        },
    )
    .expect("consumer");
    let relay = Relay::start(
        db.store.clone(),
        Arc::new(SnsSink::new(config).unwrap()),
        aws_relay_config(),
    )
    .unwrap();
    let messages: Vec<Message> = (0..60)
        .map(|i| Message::new(&topic, format!("{{\"n\":{i}}}")).with_key(format!("key-{}", i % 6)))
        .collect();
    for chunk in messages.chunks(15) {
        db.enqueue_committed(chunk).await;
    }
    wait_for("every message handled", WAIT, async || {
        let n = recorder.handled_count();
        if n >= messages.len() {
            Ok(())
        } else {
            Err(format!("{n} handled"))
        }
    })
    .await;
    relay.shutdown().await.unwrap();
    consumer.shutdown().await.unwrap();
    let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
    assert_handled_once(&db, &[&recorder], &ids).await;
    let mut want: HashMap<String, Vec<Uuid>> = HashMap::new();
    for m in &messages {
        want.entry(m.key.clone().unwrap()).or_default().push(m.id);
    }
    let mut got: HashMap<String, Vec<Uuid>> = HashMap::new();
    for m in recorder.handled() {
        got.entry(m.key.clone().unwrap()).or_default().push(m.id);
    }
    assert_eq!(got, want, "each key handled in enqueue order");
    db.cleanup().await;
}

// ---- 5. dead letters ---------------------------------------------------------------

// ---- 6. configuration errors and redaction --------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_names_and_missing_queues_are_errors_naming_them() {
    // A queue name SQS cannot take.
    let long = "t".repeat(80);
    match SqsSource::new(SqsSourceConfig::Sns {
        config: sns_config(),
        topic: long,
        group: "g".into(),
    }) {
        Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "group"),
        other => panic!("expected a configuration error, got {other:?}"),
    }

    // A queue that does not exist, without create_queues: the fetch names it.
    let missing = format!("nope-{}", suffix());
    let source = SqsSource::new(SqsSourceConfig::Sqs {
        config: SqsConfig {
            create_queues: false,
            ..sqs_config()
        },
        topic: missing.clone(),
    })
    .unwrap();
    let e = source
        .fetch(10, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&missing), "{e}");
    assert!(!e.retryable(), "{e:?}");

    // Without an endpoint (moto stopped, say): a retryable transport error.
    let sink = SqsSink::new(SqsConfig {
        endpoint_url: Some("http://127.0.0.1:9".into()),
        ..sqs_config()
    })
    .unwrap();
    let r = sink.publish(&[Message::new("q", "p")]).await;
    let e = r[0].as_ref().unwrap_err();
    assert!(e.retryable(), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_keys_never_show_in_debug_output_or_errors() {
    let secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY";
    let token = "FwoGZXIvYXdzEXAMPLETOKEN";
    let t = TransportConfig::from_json(serde_json::json!({"sns": {
        "region": "eu-west-1",
        "endpoint_url": "http://127.0.0.1:9",
        "access_key_id": "AKIAEXAMPLE",
        "secret_access_key": secret,
        "session_token": token,
    }}))
    .unwrap();
    let TransportConfig::Sns(config) = &t else {
        panic!("sns")
    };
    let sink = SnsSink::new(config.clone()).unwrap();
    let source = SqsSource::new(SqsSourceConfig::Sns {
        config: config.clone(),
        topic: "orders".into(),
        group: "g".into(),
    })
    .unwrap();
    let mut shown = format!("{t:?} {config:?} {sink:?} {source:?}");
    // Errors of failing calls (nothing listens on port 9).
    for r in sink.publish(&[Message::new("orders", "p")]).await {
        let e = r.unwrap_err();
        shown.push_str(&format!(" {e} {e:?}"));
    }
    let e = source
        .fetch(1, Duration::from_millis(10))
        .await
        .unwrap_err();
    shown.push_str(&format!(" {e} {e:?}"));
    assert!(!shown.contains(secret), "{shown}");
    assert!(!shown.contains(token), "{shown}");
    assert!(shown.contains("***"), "{shown}");
    assert!(
        shown.contains("AKIAEXAMPLE"),
        "the key id is not a secret: {shown}"
    );
}

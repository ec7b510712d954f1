//! Section 8 (opt-in): PostgreSQL -> Kafka: the drains beside their two
//! ceilings and a hand-tuned relay, the takeover, a naive poller, the
//! drains with a transaction held open, and commit-to-handler latency and
//! idle CPU through a real broker.

pub(crate) mod client;
pub(crate) mod drains;
pub(crate) mod held;
pub(crate) mod latency;
pub(crate) mod naive;
pub(crate) mod programs;
pub(crate) mod takeover;

use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use uuid::Uuid;

use crate::context::Bench;
use crate::environment::loadavg;
use crate::kafka::client::{kafka_message, Broker};
use crate::kafka::drains::kafka_drains;
use crate::kafka::held::held_snapshot_rows;
use crate::kafka::latency::{kafka_latency_section, produce_round_trips};
use crate::report::{header, ms, thousands};

/// Bootstrap servers of the broker (exported by `dev/services env`).
pub(crate) const BOOTSTRAP_ENV: &str = "RELAYBOX_KAFKA_BOOTSTRAP";
/// Payload size of this section's messages.
pub(crate) const PAYLOAD_BYTES: usize = 256;
/// Partitions of the topics this section creates.
pub(crate) const PARTITIONS: i32 = 6;
/// Distinct keys of this section's messages.
pub(crate) const KAFKA_KEYS: usize = 100;
/// Batch of the PostgreSQL ceiling: the relay's largest (`RelayConfig`'s default `batch_size`).
pub(crate) const PG_CEILING_BATCH: u32 = 5000;
/// Drain rate target: relaybox / the hand-tuned relay.
pub(crate) const VS_HAND_TUNED_TARGET: f64 = 2.0;
/// Drain rate target: relaybox / rdkafka alone.
pub(crate) const VS_RDKAFKA_TARGET: f64 = 0.80;
/// Machine CPU per message target: relaybox / the hand-tuned relay.
pub(crate) const CPU_VS_HAND_TUNED_TARGET: f64 = 0.5;
/// Takeover target: from SIGKILL to the killed relay's partitions delivered again.
pub(crate) const TAKEOVER_TARGET: Duration = Duration::from_secs(2);
/// `KafkaConfig::delivery_timeout`'s default: how long a send waits for its report.
pub(crate) const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Warm-up messages of the latency run (until the consumer has joined its group).
pub(crate) const WARM_UP: usize = 50;

/// A fresh topic name of this run (deleted at the end).
pub(crate) fn new_topic(b: &mut Bench, what: &str) -> String {
    let random = Uuid::now_v7().simple().to_string();
    let topic = format!("{}{}-{what}", b.prefix, &random[random.len() - 6..]);
    b.kafka_topics.push(topic.clone());
    topic
}

/// Which parts of section 8 a run includes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KafkaParts {
    /// The whole section (`kafka`).
    All,
    /// Its latency window alone (`kafka-latency`).
    LatencyOnly,
    /// Its held-snapshot rows alone (`kafka-held`).
    HeldOnly,
}

/// Section 8, or the parts of it that `parts` names.
pub(crate) async fn section_kafka(b: &mut Bench, parts: KafkaParts) -> Result<()> {
    let n = b.sizes.kafka_backlog;
    let bootstrap = std::env::var(BOOTSTRAP_ENV).map_err(|_| {
        anyhow!(
            "{BOOTSTRAP_ENV} is not set: run the Kafka section with `dev/bench kafka` (which \
             starts the local broker), or `dev/services start postgres kafka` and \
             eval \"$(dev/services env)\""
        )
    })?;
    header(&format!(
        "8. Kafka: PostgreSQL -> Kafka, {}-message backlog, {PAYLOAD_BYTES}-byte payloads",
        thousands(n as u64)
    ));
    let broker = Broker::connect(&bootstrap)?;
    println!("  broker:    {bootstrap}, {}", broker.describe().await?);
    println!("  producer:  KafkaSink's settings: enable.idempotence=true acks=all linger.ms=0");
    println!(
        "             batch.num.messages=10000 message.timeout.ms=0 (librdkafka {})",
        rdkafka::util::get_rdkafka_version().1
    );
    println!("  messages:  order_id = i, key customer-<i % {KAFKA_KEYS}> ({KAFKA_KEYS} keys), type OrderPlaced");
    println!("  topics:    a fresh one per run, {PARTITIONS} partitions, replication 1, created and its leaders");
    println!("             known before the clock starts; records as KafkaSink sends them (key, 256-byte");
    println!("             value, headers relaybox-id/-type/content-type/relaybox-created-at, timestamp)");
    println!("  load avg:  {}", loadavg());
    for i in [0, n] {
        let size = kafka_message("t", i).payload.len();
        ensure!(
            size == PAYLOAD_BYTES,
            "payload of {size} bytes, not {PAYLOAD_BYTES}"
        );
    }
    let probe = new_topic(b, "probe");
    broker.create_topic(&probe, PARTITIONS).await?;
    broker.wait_ready(&probe, PARTITIONS).await?;
    let rounds = if b.sizes.diagnostics_batch.is_some() {
        200
    } else {
        50
    };
    for linger in [5, 0] {
        let h = produce_round_trips(&broker, &probe, linger, rounds).await?;
        println!(
            "  round trip: produce 1 record + await its acks=all report, linger.ms={linger}: p50 {} p99 {} ({rounds} in a row)",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99))
        );
    }
    match parts {
        KafkaParts::All => {
            kafka_drains(b, &broker).await?;
            held_snapshot_rows(b, &broker).await?;
            kafka_latency_section(b, &broker, false).await
        }
        KafkaParts::LatencyOnly => kafka_latency_section(b, &broker, true).await,
        KafkaParts::HeldOnly => held_snapshot_rows(b, &broker).await,
    }
}

/// Deletes the consumer groups and topics this run created (best effort).
pub(crate) async fn delete_kafka_leftovers(b: &Bench) {
    if b.kafka_topics.is_empty() && b.kafka_groups.is_empty() {
        return;
    }
    let Ok(bootstrap) = std::env::var(BOOTSTRAP_ENV) else {
        return;
    };
    let admin: AdminClient<DefaultClientContext> = match ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
    {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "could not delete the Kafka topics {:?}: {e}",
                b.kafka_topics
            );
            return;
        }
    };
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    if !b.kafka_groups.is_empty() {
        let groups: Vec<&str> = b.kafka_groups.iter().map(String::as_str).collect();
        match admin.delete_groups(&groups, &options).await {
            Ok(results) => {
                for r in results {
                    if let Err((g, code)) = r {
                        eprintln!("could not delete Kafka consumer group {g}: {code}");
                    }
                }
            }
            Err(e) => eprintln!("could not delete Kafka consumer groups {groups:?}: {e}"),
        }
    }
    if !b.kafka_topics.is_empty() {
        let topics: Vec<&str> = b.kafka_topics.iter().map(String::as_str).collect();
        match admin.delete_topics(&topics, &options).await {
            Ok(results) => {
                let mut deleted = 0;
                for r in results {
                    match r {
                        Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => deleted += 1,
                        Err((t, code)) => eprintln!("could not delete Kafka topic {t}: {code}"),
                    }
                }
                println!("kafka topics deleted: {deleted} of {}", topics.len());
            }
            Err(e) => eprintln!("could not delete Kafka topics {topics:?}: {e}"),
        }
    }
}

//! Section 8's latency: the produce round trip, commit-to-handler latency
//! through Kafka, the consumer's capacity and the idle pipeline.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use chrono::Utc;
use hdrhistogram::Histogram;
use rdkafka::producer::FutureProducer;
use rdkafka::util::Timeout;
use relaybox::transport::kafka::{KafkaSink, KafkaSource, KafkaSourceConfig};
use relaybox::{Message, Sink};

use crate::context::{Bench, CAPACITY_MESSAGES, IDLE_TARGET};
use crate::cpu::own_cpu_over;
use crate::kafka::client::{delivered, kafka_config, kafka_message, record, sink_settings, Broker};
use crate::kafka::{new_topic, DELIVERY_TIMEOUT, PARTITIONS, WARM_UP};
use crate::latency::{
    database_consumer_capacity, latency_figure, measure_consumer, print_latency_rows, warm_up,
    WARM_UP_FOR,
};
use crate::pipeline::{
    start_pipeline_with, stop_pipeline, wait_processed, Clocks, SharedHistogram,
};
use crate::report::{histogram, ms, thousands};
use crate::steady::{produce_steady, Steady};

/// Forwards to the wrapped sink (so the relay's path is unchanged: a
/// `KafkaSink` has no `log_store()` either, and `send` is forwarded so the
/// relay pipelines alike) and measures, per message, `now - created_at`
/// when `send` is called and when the batch's reports are in.
pub(crate) struct Clocked {
    pub(crate) inner: Arc<dyn Sink>,
    pub(crate) called: SharedHistogram,
    pub(crate) acked: SharedHistogram,
    /// Itself, for the acknowledgement futures `send` returns.
    pub(crate) me: Mutex<std::sync::Weak<Clocked>>,
}

impl Clocked {
    pub(crate) fn new(inner: Arc<dyn Sink>) -> Arc<Clocked> {
        let clocked = Arc::new(Clocked {
            inner,
            called: Arc::new(Mutex::new(histogram())),
            acked: Arc::new(Mutex::new(histogram())),
            me: Mutex::new(std::sync::Weak::new()),
        });
        *clocked.me.lock().expect("self lock") = Arc::downgrade(&clocked);
        clocked
    }

    pub(crate) fn reset(&self) {
        self.called.lock().expect("histogram lock").reset();
        self.acked.lock().expect("histogram lock").reset();
    }

    pub(crate) fn ages(h: &SharedHistogram, batch: &[Message]) {
        let now = Utc::now();
        let mut h = h.lock().expect("histogram lock");
        for m in batch {
            let micros = (now - m.created_at).num_microseconds().unwrap_or(0);
            h.saturating_record(micros.max(0) as u64);
        }
    }
}

#[async_trait::async_trait]
impl Sink for Clocked {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn publish(&self, batch: &[Message]) -> Vec<relaybox::Result<()>> {
        Clocked::ages(&self.called, batch);
        let results = self.inner.publish(batch).await;
        Clocked::ages(&self.acked, batch);
        results
    }

    /// Forwards the hand-over too, so the relay pipelines as with a bare
    /// `KafkaSink`; the acknowledgement clock stops when the acks resolve.
    async fn send(&self, batch: &[Message]) -> relaybox::Acks {
        Clocked::ages(&self.called, batch);
        let acks = self.inner.send(batch).await;
        let me = self.me.lock().expect("self lock").upgrade();
        let batch = batch.to_vec();
        Box::pin(async move {
            let results = acks.await;
            if let Some(me) = me {
                Clocked::ages(&me.acked, &batch);
            }
            results
        })
    }
}

pub(crate) struct KafkaLatency {
    pub(crate) steady: Steady,
    /// Commit to handler start.
    pub(crate) latency: Histogram<u64>,
    /// `created_at` to handler start.
    pub(crate) since_created: Histogram<u64>,
    pub(crate) called: Histogram<u64>,
    pub(crate) acked: Histogram<u64>,
    pub(crate) handed: Histogram<u64>,
    pub(crate) batches: u64,
    /// This process's CPU with the pipeline idle afterwards, % of one core.
    pub(crate) idle_cpu: f64,
}

/// Relay (KafkaSink) + Consumer (KafkaSource) at 1,000 msg/s.
pub(crate) async fn kafka_latency(b: &mut Bench, broker: &Broker) -> Result<KafkaLatency> {
    let run_for = b.sizes.latency_for;
    let topic = new_topic(b, "latency");
    let group = format!("{topic}-group");
    b.kafka_groups.push(group.clone());
    let b: &Bench = b;
    b.reset().await?;
    b.settle().await?;
    let config = kafka_config(&broker.bootstrap);
    let sink = KafkaSink::new(config.clone())?;
    sink.ensure_topic(&topic).await?;
    broker.wait_ready(&topic, PARTITIONS).await?;
    let clocked = Clocked::new(Arc::new(sink));
    let source = KafkaSource::new(KafkaSourceConfig::new(config, &topic, &group))?;
    let clocks = Clocks::new();
    let (relay, consumer) =
        start_pipeline_with(b, "kafka-latency", clocked.clone(), source, &group, &clocks).await?;
    let outcome = async {
        // Warm-up: the consumer joins its group and handles messages end to end.
        for i in 0..WARM_UP {
            let tx = b.store.begin().await?;
            tx.enqueue(kafka_message(&topic, i)).await?;
            tx.commit().await?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        wait_processed(&consumer, WARM_UP as u64, Duration::from_secs(60)).await?;
        let t = topic.clone();
        let make: Arc<dyn Fn(usize) -> Message + Send + Sync> =
            Arc::new(move |i| kafka_message(&t, i));
        let warmed = warm_up(b, &consumer, make.clone(), WARM_UP as u64).await?;
        clocks.reset();
        clocked.reset();
        let batches = relay.stats().batches;
        let steady = produce_steady(b, run_for, make).await?;
        wait_processed(
            &consumer,
            warmed + steady.produced as u64,
            Duration::from_secs(30),
        )
        .await?;
        let batches = relay.stats().batches - batches;
        // The same pipeline idle: everything handled, nothing new.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let idle_cpu = own_cpu_over(b.sizes.idle_for).await;
        Ok::<_, anyhow::Error>((steady, batches, idle_cpu))
    }
    .await;
    let (steady, batches, idle_cpu) = stop_pipeline(&relay, &consumer, outcome).await?;
    let (since_created, latency) = clocks.handler_latencies(&steady)?;
    let called = clocked.called.lock().expect("histogram lock").clone();
    let acked = clocked.acked.lock().expect("histogram lock").clone();
    let handed = clocks.handed.lock().expect("histogram lock").clone();
    b.reset().await?;
    Ok(KafkaLatency {
        steady,
        latency,
        since_created,
        called,
        acked,
        handed,
        batches,
        idle_cpu,
    })
}

/// Sequential single-record produce -> delivery report round trips with
/// KafkaSink's settings but `linger_ms`.
pub(crate) async fn produce_round_trips(
    broker: &Broker,
    topic: &str,
    linger_ms: u32,
    n: usize,
) -> Result<Histogram<u64>> {
    let mut settings = sink_settings(&broker.bootstrap);
    settings.set("linger.ms", linger_ms.to_string());
    let producer: FutureProducer = settings.create()?;
    let mut h = histogram();
    // The first send connects and fetches the topic's metadata: not counted.
    for i in 0..=n {
        let m = kafka_message(topic, i);
        let begun = Instant::now();
        producer
            .send(record(topic, &m), Timeout::After(DELIVERY_TIMEOUT))
            .await
            .map_err(|(e, _)| anyhow!("producing to {topic}: {e}"))?;
        if i > 0 {
            h.saturating_record(begun.elapsed().as_micros() as u64);
        }
    }
    Ok(h)
}

/// How fast a `Consumer` (default `ConsumerConfig`) with a `KafkaSource`
/// handles `n` records already in a fresh topic of `partitions`
/// partitions, from its first handled record to its last.
pub(crate) async fn consumer_capacity(
    b: &mut Bench,
    broker: &Broker,
    partitions: i32,
    n: usize,
) -> Result<f64> {
    let topic = new_topic(b, &format!("consume-{partitions}p"));
    let group = format!("{topic}-group");
    b.kafka_groups.push(group.clone());
    let b: &Bench = b;
    b.reset().await?;
    broker.create_topic(&topic, partitions).await?;
    broker.wait_ready(&topic, partitions).await?;
    let producer: FutureProducer = sink_settings(&broker.bootstrap).create()?;
    let messages: Vec<Message> = (0..n).map(|i| kafka_message(&topic, i)).collect();
    let mut pending = Vec::with_capacity(n);
    for m in &messages {
        pending.push(
            producer
                .send_result(record(&topic, m))
                .map_err(|(e, _)| anyhow!("producing to {topic}: {e}"))?,
        );
    }
    for d in pending {
        delivered(d).await?;
    }
    let source = KafkaSource::new(KafkaSourceConfig::new(
        kafka_config(&broker.bootstrap),
        &topic,
        &group,
    ))?;
    let r = measure_consumer(b, source, &group, n).await?;
    b.reset().await?;
    Ok(r)
}

/// Section 8's latency window and, in full runs unless `latency_only`,
/// the consumer's capacity.
pub(crate) async fn kafka_latency_section(
    b: &mut Bench,
    broker: &Broker,
    latency_only: bool,
) -> Result<()> {
    // Latency through Kafka.
    println!(
        "\n  Commit-to-handler latency through Kafka at 1,000 msg/s for {} s (relay + KafkaSink,",
        b.sizes.latency_for.as_secs()
    );
    println!("  Consumer + KafkaSource; default RelayConfig and ConsumerConfig; first {WARM_UP} warm-up messages,");
    println!(
        "  then {} s at the same rate, not counted):",
        WARM_UP_FOR.as_secs()
    );
    let lat = kafka_latency(b, broker).await?;
    print_latency_rows(&[(
        "relay -> Kafka -> consumer",
        &lat.steady,
        &lat.latency,
        lat.batches,
    )]);
    println!("  where the time goes (per message, since created_at; cumulative; send/report times come from");
    println!("  a forwarding Sink around KafkaSink, hand-out times from a forwarding Source):");
    for (leg, h) in [
        ("-> relay calls KafkaSink::send", &lat.called),
        ("-> its batch's acks=all reports are in", &lat.acked),
        ("-> KafkaSource::fetch returns it", &lat.handed),
        ("-> consumer's handler starts", &lat.since_created),
    ] {
        println!(
            "    {leg:<42} p50 {:>9}  p99 {:>9}  max {:>9}",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max())
        );
    }
    latency_figure(
        b,
        "kafka: latency p50 / p99 / max @1k msg/s",
        &lat.latency,
        &lat.steady,
    );
    println!(
        "  idle afterwards ({} s, the same relay and consumer, no traffic): this process {:.2}% of a core",
        b.sizes.idle_for.as_secs(),
        lat.idle_cpu
    );
    b.figure(
        "kafka: idle CPU, this process (relay + consumer)",
        format!("{:.2}% of a core", lat.idle_cpu),
        "~0% (< 1%)",
        Some(lat.idle_cpu < IDLE_TARGET),
    );
    if b.sizes.diagnostics_batch.is_some() && !latency_only {
        // The consumer's capacity, which bounds the latency run.
        let records = CAPACITY_MESSAGES;
        let mut rates = Vec::new();
        for partitions in [PARTITIONS, 12] {
            rates.push((
                format!("KafkaSource, {partitions:>2} partitions"),
                consumer_capacity(b, broker, partitions, records).await?,
            ));
        }
        let database = database_consumer_capacity(b, records, kafka_message).await?;
        rates.push(("DatabaseSource, for comparison".to_string(), database));
        println!(
            "  consumer capacity (Consumer, default ConsumerConfig: concurrency 8, batch 100; {} records",
            thousands(records as u64)
        );
        println!("  already waiting; a handler that does nothing; rate from the first handled to the last):");
        for (name, r) in &rates {
            println!("    {name:<48} {:>7} msg/s", thousands(*r as u64));
        }
        b.figure(
            format!("kafka: consumer capacity (KafkaSource, {PARTITIONS} partitions)"),
            format!("{} msg/s", thousands(rates[0].1 as u64)),
            "(info)",
            None,
        );
    }
    Ok(())
}

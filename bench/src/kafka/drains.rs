//! Section 8's drains: interleaved runs of the PostgreSQL ceiling,
//! librdkafka alone, relaybox and the hand-tuned relay, with their ratios.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::DeliveryFuture;
use relaybox::transport::kafka::KafkaSink;
use relaybox::{Message, RelayConfig};

use crate::ceiling::ceiling_drain;
use crate::context::{Bench, DRAIN_TARGET};
use crate::cpu::{cores, Busy, MachineCpu};
use crate::drain::timed_drain;
use crate::environment::loadavg;
use crate::kafka::client::{delivered, kafka_config, kafka_message, record, Broker};
use crate::kafka::naive::naive_to_kafka;
use crate::kafka::programs::{check_exactly, hand_tuned};
use crate::kafka::takeover::takeover;
use crate::kafka::{
    new_topic, CPU_VS_HAND_TUNED_TARGET, KAFKA_KEYS, PARTITIONS, PG_CEILING_BATCH,
    VS_HAND_TUNED_TARGET, VS_RDKAFKA_TARGET,
};
use crate::report::{rate, thousands, verdict};

/// The rows of one interleaved run of the drains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DrainRow {
    CeilingPg,
    CeilingRdkafka,
    Relaybox,
    HandTuned,
    /// relaybox publishing exactly once (`transactional_id`): the option's cost.
    RelayboxExactlyOnce,
}

pub(crate) const ROWS: [DrainRow; 5] = [
    DrainRow::CeilingPg,
    DrainRow::CeilingRdkafka,
    DrainRow::Relaybox,
    DrainRow::HandTuned,
    DrainRow::RelayboxExactlyOnce,
];

impl DrainRow {
    pub(crate) fn name(self) -> String {
        match self {
            DrainRow::CeilingPg => {
                format!("ceiling: PostgreSQL alone, batch {PG_CEILING_BATCH}")
            }
            DrainRow::CeilingRdkafka => "ceiling: librdkafka alone, no DB".into(),
            DrainRow::Relaybox => "relaybox, RelayConfig::default()".into(),
            DrainRow::HandTuned => "hand-tuned Python relay, batch 1000".into(),
            DrainRow::RelayboxExactlyOnce => "relaybox, exactly once (transactional_id)".into(),
        }
    }

    pub(crate) fn short(self) -> &'static str {
        match self {
            DrainRow::CeilingPg => "ceiling PG",
            DrainRow::CeilingRdkafka => "ceiling rdkafka",
            DrainRow::Relaybox => "relaybox",
            DrainRow::HandTuned => "hand-tuned",
            DrainRow::RelayboxExactlyOnce => "relaybox exactly once",
        }
    }
}

/// One timed row: `n` messages in `elapsed`, the machine's busy CPU over it.
pub(crate) struct Measured {
    pub(crate) n: usize,
    pub(crate) elapsed: Duration,
    pub(crate) busy: Busy,
}

impl Measured {
    pub(crate) fn rate(&self) -> f64 {
        rate(self.n, self.elapsed)
    }

    /// The machine's CPU per message, µs.
    pub(crate) fn cpu_us(&self) -> f64 {
        self.busy.machine * 1e6 / self.n as f64
    }
}

pub(crate) fn print_rows_header() {
    println!(
        "    {:<40} {:>9} {:>9} {:>10}   split of the CPU per message",
        "row", "elapsed", "msg/s", "CPU us/msg"
    );
}

pub(crate) fn print_row(name: &str, m: &Measured) {
    let per = |s: f64| s * 1e6 / m.n as f64;
    println!(
        "    {:<40} {:>7.2} s {:>9} {:>10.1}   this process {:.1}, relay program {:.1}, PostgreSQL {:.1}, broker {:.1}, rest {:.1}",
        name,
        m.elapsed.as_secs_f64(),
        thousands(m.rate() as u64),
        m.cpu_us(),
        per(m.busy.own),
        per(m.busy.children),
        per(m.busy.postgres),
        per(m.busy.java),
        per(m.busy.machine - m.busy.own - m.busy.children - m.busy.postgres - m.busy.java),
    );
}

/// The three ratio targets: (what, value, target text, met).
pub(crate) fn ratios(
    relay: (f64, f64),
    hand: (f64, f64),
    rdkafka: f64,
) -> [(String, f64, String, bool); 3] {
    let (relay_rate, relay_cpu) = relay;
    let (hand_rate, hand_cpu) = hand;
    let vs_hand = relay_rate / hand_rate;
    let vs_rdkafka = relay_rate / rdkafka;
    let cpu_vs_hand = relay_cpu / hand_cpu;
    [
        (
            "relaybox / hand-tuned drain rate".into(),
            vs_hand,
            format!(">= {VS_HAND_TUNED_TARGET:.2}"),
            vs_hand >= VS_HAND_TUNED_TARGET,
        ),
        (
            "relaybox / librdkafka-alone drain rate".into(),
            vs_rdkafka,
            format!(">= {VS_RDKAFKA_TARGET:.2}"),
            vs_rdkafka >= VS_RDKAFKA_TARGET,
        ),
        (
            "relaybox / hand-tuned machine CPU per msg".into(),
            cpu_vs_hand,
            format!("<= {CPU_VS_HAND_TUNED_TARGET:.2}"),
            cpu_vs_hand <= CPU_VS_HAND_TUNED_TARGET,
        ),
    ]
}

pub(crate) fn print_ratios(ratios: &[(String, f64, String, bool); 3]) {
    for (what, value, target, met) in ratios {
        println!(
            "    {what:<42} {value:>6.2}   target {target:<8} {}",
            verdict(Some(*met))
        );
    }
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.is_empty() {
        f64::NAN
    } else if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// rdkafka alone: produces `n` records like the relay's to a fresh
/// topic, all handed to librdkafka first (waiting for the oldest report
/// when its queue is full), then every delivery report awaited.
pub(crate) async fn producer_ceiling(
    broker: &Broker,
    topic: &str,
    n: usize,
) -> Result<(Duration, Busy)> {
    let messages: Vec<Message> = (0..n).map(|i| kafka_message(topic, i)).collect();
    let producer = broker.fresh_topic_producer(topic).await?;
    let cpu = MachineCpu::start();
    let started = Instant::now();
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::with_capacity(n);
    for m in &messages {
        let mut rec = record(topic, m);
        loop {
            match producer.send_result(rec) {
                Ok(d) => {
                    pending.push_back(d);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    match pending.pop_front() {
                        Some(d) => delivered(d).await?,
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                Err((e, _)) => bail!("producing to {topic}: {e}"),
            }
        }
    }
    for d in pending {
        delivered(d).await?;
    }
    let elapsed = started.elapsed();
    let busy = cpu.stop();
    let records = broker.records(topic, PARTITIONS).await?;
    ensure!(
        records == n as i64,
        "topic {topic} holds {records} records, expected {n}"
    );
    Ok((elapsed, busy))
}

pub(crate) struct KafkaDrain {
    pub(crate) elapsed: Duration,
    pub(crate) batches: u64,
    /// The machine's busy CPU over `elapsed`.
    pub(crate) busy: Busy,
}

/// The relay with a `KafkaSink` (create_topics) on a pre-filled backlog
/// of `n` messages for `topic`; `RelayConfig::default()` but its instance
/// id. `exactly_once` sets a `transactional_id` of the topic's own.
pub(crate) async fn relay_to_kafka(
    b: &Bench,
    broker: &Broker,
    topic: &str,
    n: usize,
    exactly_once: bool,
) -> Result<KafkaDrain> {
    b.backlog_in_order(n, topic, kafka_message).await?;
    let mut config = kafka_config(&broker.bootstrap);
    if exactly_once {
        config.transactional_id = Some(topic.to_string());
    }
    let sink = KafkaSink::new(config)?;
    // create_topics = true: the sink creates the topic here, before the clock starts.
    sink.ensure_topic(topic).await?;
    broker.wait_ready(topic, PARTITIONS).await?;
    let config = RelayConfig {
        instance_id: Some(format!("{}kafka-drain", b.prefix)),
        ..RelayConfig::default()
    };
    let (elapsed, stats, busy) = timed_drain(b, Arc::new(sink), config, n).await?;
    // Offsets, not records: each transaction also leaves a marker per
    // partition it wrote to (the reader checks the records themselves).
    let offsets = broker.records(topic, PARTITIONS).await?;
    ensure!(
        offsets == n as i64 || (exactly_once && offsets > n as i64),
        "topic {topic} holds {offsets} offsets, expected {n}"
    );
    Ok(KafkaDrain {
        elapsed,
        batches: stats.batches,
        busy,
    })
}

/// Section 8's drains: `kafka_runs` interleaved runs of the two ceilings,
/// relaybox and the hand-tuned relay, each topic checked by the
/// third-party reader; medians and their ratios; then the takeover
/// measurement and the naive poller.
pub(crate) async fn kafka_drains(b: &mut Bench, broker: &Broker) -> Result<()> {
    let n = b.sizes.kafka_backlog;
    let runs = b.sizes.kafka_runs;
    println!(
        "\n  Drains of a {}-message backlog ({KAFKA_KEYS} keys), {runs} interleaved run(s); machine CPU from",
        thousands(n as u64)
    );
    println!("  /proc/stat over each row's clock (every process on the {} cores), split from /proc/<pid>/stat:", cores());
    println!(
        "  this process, the relay program it ran (the hand-tuned relay, counted once it exited),"
    );
    println!(
        "  the processes named postgres, the broker's JVM, and the rest: other processes, and the"
    );
    println!("  hand-tuned relay's PostgreSQL backend, which exits with it before its share can be read.");
    let mut results: Vec<(DrainRow, Measured)> = Vec::new();
    let mut readings = 0usize;
    for run in 0..runs {
        let order: Vec<DrainRow> = (0..ROWS.len())
            .map(|k| ROWS[(k + run) % ROWS.len()])
            .collect();
        println!(
            "\n  run {} of {runs} (order: {}; load average {})",
            run + 1,
            order
                .iter()
                .map(|r| r.short())
                .collect::<Vec<_>>()
                .join(", "),
            loadavg()
        );
        print_rows_header();
        let mut this_run: Vec<(DrainRow, f64, f64)> = Vec::new();
        for row in order {
            let (m, notes) = match row {
                DrainRow::CeilingPg => {
                    b.backlog_in_order(n, "bench.kafka", kafka_message).await?;
                    let r = ceiling_drain(b, n, PG_CEILING_BATCH, false).await?;
                    let m = Measured {
                        n,
                        elapsed: r.elapsed,
                        busy: r.busy,
                    };
                    (m, vec![format!("{} batches", r.batches)])
                }
                DrainRow::CeilingRdkafka => {
                    let topic = new_topic(b, &format!("rdkafka-{}", run + 1));
                    let (elapsed, busy) = producer_ceiling(broker, &topic, n).await?;
                    let read = check_exactly(broker, &topic, n).await?;
                    readings += 1;
                    (
                        Measured { n, elapsed, busy },
                        vec![format!("reader: {read}")],
                    )
                }
                DrainRow::Relaybox | DrainRow::RelayboxExactlyOnce => {
                    let eos = row == DrainRow::RelayboxExactlyOnce;
                    let label = if eos { "eos" } else { "relaybox" };
                    let topic = new_topic(b, &format!("{label}-{}", run + 1));
                    if eos {
                        b.kafka_topics.push(format!("{topic}.relaybox-published"));
                    }
                    let r = relay_to_kafka(b, broker, &topic, n, eos).await?;
                    let read = check_exactly(broker, &topic, n).await?;
                    readings += 1;
                    let m = Measured {
                        n,
                        elapsed: r.elapsed,
                        busy: r.busy,
                    };
                    (
                        m,
                        vec![
                            format!("{} batches (adaptive)", thousands(r.batches)),
                            format!("reader: {read}"),
                        ],
                    )
                }
                DrainRow::HandTuned => {
                    let topic = new_topic(b, &format!("handtuned-{}", run + 1));
                    let (m, own) = hand_tuned(b, broker, &topic, n).await?;
                    let read = check_exactly(broker, &topic, n).await?;
                    readings += 1;
                    let note = format!(
                        "clocked from spawn to exit (starting Python included); its own clock, first \
                         SELECT to last COMMIT: {:.2} s = {} msg/s",
                        own.as_secs_f64(),
                        thousands(rate(n, own) as u64)
                    );
                    (m, vec![note, format!("reader: {read}")])
                }
            };
            print_row(&row.name(), &m);
            for note in notes {
                println!("      {note}");
            }
            this_run.push((row, m.rate(), m.cpu_us()));
            results.push((row, m));
        }
        let of = |row: DrainRow| {
            this_run
                .iter()
                .find(|(r, _, _)| *r == row)
                .map(|(_, rate, cpu)| (*rate, *cpu))
                .expect("every row ran")
        };
        println!("    ratios of this run:");
        print_ratios(&ratios(
            of(DrainRow::Relaybox),
            of(DrainRow::HandTuned),
            of(DrainRow::CeilingRdkafka).0,
        ));
    }

    // Medians over the runs, and the ratios of the medians.
    let medians = |row: DrainRow| {
        let rates: Vec<f64> = results
            .iter()
            .filter(|(r, _)| *r == row)
            .map(|(_, m)| m.rate())
            .collect();
        let cpus: Vec<f64> = results
            .iter()
            .filter(|(r, _)| *r == row)
            .map(|(_, m)| m.cpu_us())
            .collect();
        (median(&rates), median(&cpus))
    };
    println!("\n  medians of {runs} run(s):");
    println!("    {:<40} {:>9} {:>10}", "row", "msg/s", "CPU us/msg");
    for row in ROWS {
        let (r, cpu) = medians(row);
        println!(
            "    {:<40} {:>9} {:>10.1}",
            row.name(),
            thousands(r as u64),
            cpu
        );
        b.figure(
            format!("kafka: {} (median of {runs})", row.short()),
            format!("{} msg/s, {cpu:.1} us CPU/msg", thousands(r as u64)),
            "(info)",
            None,
        );
    }
    let relay = medians(DrainRow::Relaybox);
    let eos = medians(DrainRow::RelayboxExactlyOnce);
    println!(
        "  exactly once costs: {:.2}x the default's drain rate, {:.2}x its CPU per message",
        eos.0 / relay.0,
        eos.1 / relay.1
    );
    b.figure(
        format!("kafka: exactly once / default (medians of {runs})"),
        format!(
            "drain rate {:.2}x, CPU per message {:.2}x",
            eos.0 / relay.0,
            eos.1 / relay.1
        ),
        "(info)",
        None,
    );
    println!("  ratios of the medians:");
    let median_ratios = ratios(
        relay,
        medians(DrainRow::HandTuned),
        medians(DrainRow::CeilingRdkafka).0,
    );
    print_ratios(&median_ratios);
    b.figure(
        format!("kafka: relaybox drain (median of {runs})"),
        format!("{} msg/s", thousands(relay.0 as u64)),
        ">= 50,000 msg/s",
        Some(relay.0 >= DRAIN_TARGET),
    );
    for (what, value, target, met) in &median_ratios {
        b.figure(
            format!("kafka: {what}"),
            format!("{value:.2} (medians of {runs})"),
            target,
            Some(*met),
        );
    }
    b.figure(
        "kafka: third-party reader (confluent-kafka)",
        format!("{readings} topics: all complete, none twice, in order per key"),
        "(checked)",
        None,
    );
    println!("  Every topic above was read back whole by a confluent-kafka consumer (bench/check_topic.py):");
    println!("  every id present once, keys as enqueued, each key in one partition and in enqueue order.");

    takeover(b, broker).await?;

    // Naive baseline.
    let topic = new_topic(b, "naive");
    let (done, elapsed) = naive_to_kafka(b, broker, &topic).await?;
    let naive = rate(done, elapsed);
    println!(
        "\n  naive poller: SELECT 1 row; produce it and await its delivery report; UPDATE ... SET sent_at"
    );
    println!(
        "  (autocommit each; sleeps 1 s only when the table is empty): {} rows in {:.2} s = {} msg/s",
        thousands(done as u64),
        elapsed.as_secs_f64(),
        thousands(naive as u64)
    );
    println!(
        "  relaybox (median {} msg/s) / naive = {:.0}x",
        thousands(relay.0 as u64),
        relay.0 / naive
    );
    b.figure(
        "kafka: naive 1-row poller",
        format!(
            "{} msg/s; relaybox/naive = {:.0}x",
            thousands(naive as u64),
            relay.0 / naive
        ),
        "(info)",
        None,
    );
    b.reset().await
}

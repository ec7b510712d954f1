//! The relay and consumer pipelines of the latency and idle sections, with
//! the clocks that record where a message's time goes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use chrono::Utc;
use hdrhistogram::Histogram;
use relaybox::{
    handler_fn, BoxError, Consumer, ConsumerConfig, DatabaseSink, DatabaseSource,
    DatabaseSourceConfig, Message, Relay, RelayConfig, Sink,
};
use uuid::Uuid;

use crate::context::{Bench, LATENCY_TOPIC};
use crate::report::histogram;
use crate::steady::Steady;

pub(crate) type SharedHistogram = Arc<Mutex<Histogram<u64>>>;

/// A handler that records `now - created_at` (µs) in `latencies`, and when
/// `starts` is given, its start time per message id.
pub(crate) fn recording_handler(
    latencies: SharedHistogram,
    starts: Option<StartTimes>,
) -> Arc<dyn relaybox::Handler> {
    Arc::new(handler_fn(move |m: Message, _tx| {
        let latencies = latencies.clone();
        let starts = starts.clone();
        async move {
            let now = Utc::now();
            latencies
                .lock()
                .expect("histogram lock")
                .saturating_record(age(now, &m));
            if let Some(starts) = starts {
                starts
                    .lock()
                    .expect("start times lock")
                    .entry(m.id)
                    .or_insert(now);
            }
            Ok::<(), BoxError>(())
        }
    }))
}

/// `now - created_at` of `m`, in µs.
pub(crate) fn age(now: chrono::DateTime<Utc>, m: &Message) -> u64 {
    (now - m.created_at).num_microseconds().unwrap_or(0).max(0) as u64
}

/// Forwards to a `Source` and records, per delivery, `now - created_at` when
/// `fetch` hands it to the consumer.
pub(crate) struct HandOut {
    pub(crate) inner: Arc<dyn relaybox::Source>,
    pub(crate) ages: SharedHistogram,
}

#[async_trait::async_trait]
impl relaybox::Source for HandOut {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn fetch(&self, max: usize, wait: Duration) -> relaybox::Result<Vec<relaybox::Delivery>> {
        let batch = self.inner.fetch(max, wait).await?;
        let now = Utc::now();
        let mut ages = self.ages.lock().expect("histogram lock");
        for d in &batch {
            ages.saturating_record(age(now, &d.message));
        }
        Ok(batch)
    }

    async fn ack(&self, acks: &[relaybox::AckToken]) -> relaybox::Result<()> {
        self.inner.ack(acks).await
    }

    async fn dead_letter(
        &self,
        delivery: &relaybox::Delivery,
        error: &str,
    ) -> relaybox::Result<bool> {
        self.inner.dead_letter(delivery, error).await
    }

    async fn close(&self) -> relaybox::Result<()> {
        self.inner.close().await
    }
}

/// When each message's handler started (wall clock), by message id.
pub(crate) type StartTimes = Arc<Mutex<HashMap<Uuid, chrono::DateTime<Utc>>>>;

/// Where the latency runs record: the handler's start and the source handing
/// each message out (both `now - created_at`, µs), and the handler's start
/// time per message (set against the producer's commit afterwards).
#[derive(Clone)]
pub(crate) struct Clocks {
    pub(crate) handler: SharedHistogram,
    pub(crate) handed: SharedHistogram,
    pub(crate) started: StartTimes,
}

impl Clocks {
    pub(crate) fn new() -> Clocks {
        Clocks {
            handler: Arc::new(Mutex::new(histogram())),
            handed: Arc::new(Mutex::new(histogram())),
            started: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Commit-to-handler latency (µs) of every message `steady` committed:
    /// handler start minus the moment the producer's `commit` returned.
    ///
    /// With `RELAYBOX_BENCH_LATENCY_DUMP=<file>`, also writes one line per
    /// message, in commit order, to `<file>` (a window's later file replaces
    /// an earlier one's): the commit's wall-clock time (UTC, as in the
    /// broker's GC log) and the latency in µs.
    pub(crate) fn since_commit(&self, steady: &Steady) -> Result<Histogram<u64>> {
        let started = self.started.lock().expect("start times lock");
        let mut h = histogram();
        let mut lines = Vec::new();
        for (id, committed) in &steady.committed {
            let start = started
                .get(id)
                .with_context(|| format!("no handler start recorded for message {id}"))?;
            let micros = (*start - *committed).num_microseconds().unwrap_or(0);
            h.saturating_record(micros.max(0) as u64);
            lines.push((*committed, micros));
        }
        if let Ok(path) = std::env::var("RELAYBOX_BENCH_LATENCY_DUMP") {
            lines.sort_unstable();
            let text: String = lines
                .iter()
                .map(|(at, micros)| format!("{} {micros}\n", at.format("%H:%M:%S%.6f")))
                .collect();
            std::fs::write(&path, text).with_context(|| format!("writing {path}"))?;
        }
        Ok(h)
    }

    /// The handler's two clocks over a window: `created_at` to handler
    /// start, checked to hold one value per message `steady` committed, and
    /// commit to handler start ([`Clocks::since_commit`]), in that order.
    pub(crate) fn handler_latencies(
        &self,
        steady: &Steady,
    ) -> Result<(Histogram<u64>, Histogram<u64>)> {
        let since_created = self.handler.lock().expect("histogram lock").clone();
        ensure!(
            since_created.len() == steady.produced as u64,
            "recorded {} latencies for {} messages",
            since_created.len(),
            steady.produced
        );
        let latency = self.since_commit(steady)?;
        Ok((since_created, latency))
    }

    /// Empties every clock, for a window that starts now.
    pub(crate) fn reset(&self) {
        self.handler.lock().expect("histogram lock").reset();
        self.handed.lock().expect("histogram lock").reset();
        self.started.lock().expect("start times lock").clear();
    }
}

/// A relay (DatabaseSink) and a consumer (DatabaseSource) whose handler
/// records `now - created_at` in `clocks`; waits until the relay holds every partition.
pub(crate) async fn start_pipeline(
    b: &Bench,
    name: &str,
    clocks: &Clocks,
) -> Result<(Relay, Consumer)> {
    let store = b.store.clone();
    let group = format!("bench-{name}");
    let source = DatabaseSource::new(
        store.clone(),
        DatabaseSourceConfig::new(LATENCY_TOPIC, group.clone()),
    )?;
    start_pipeline_with(
        b,
        name,
        Arc::new(DatabaseSink::new(store)),
        source,
        &group,
        clocks,
    )
    .await
}

/// The latency runs' relay settings: the defaults, or the JSON object in
/// `RELAYBOX_BENCH_LATENCY_RELAY` (e.g. `{"batches_in_flight": 1}`; keys as
/// in `RelayConfig::from_json`, the rest default).
pub(crate) fn latency_relay_config() -> Result<RelayConfig> {
    match std::env::var("RELAYBOX_BENCH_LATENCY_RELAY") {
        Ok(text) => Ok(RelayConfig::from_json(serde_json::from_str(&text)?)?),
        Err(_) => Ok(RelayConfig::default()),
    }
}

/// A relay (default settings) on `sink` and a consumer of group `group` on
/// `source` whose handler records `now - created_at` in `clocks` (and the
/// source's hand-out too); waits until the relay holds every partition.
pub(crate) async fn start_pipeline_with(
    b: &Bench,
    name: &str,
    sink: Arc<dyn Sink>,
    source: Arc<dyn relaybox::Source>,
    group: &str,
    clocks: &Clocks,
) -> Result<(Relay, Consumer)> {
    let store = b.store.clone();
    let relay = Relay::start(
        store.clone(),
        sink,
        RelayConfig {
            instance_id: Some(format!("{}{name}", b.prefix)),
            ..latency_relay_config()?
        },
    )?;
    let source = Arc::new(HandOut {
        inner: source,
        ages: clocks.handed.clone(),
    });
    let consumer = Consumer::start(
        store.clone(),
        source,
        recording_handler(clocks.handler.clone(), Some(clocks.started.clone())),
        ConsumerConfig::new(group),
    )?;
    let partitions = u64::from(store.partitions().await?);
    let since = Instant::now();
    while relay.stats().partitions_held < partitions {
        ensure!(
            since.elapsed() < Duration::from_secs(10),
            "the relay did not take its partitions"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((relay, consumer))
}

/// Shuts down the consumer, then the relay, of a pipeline whatever its run
/// came to, then returns `outcome`, the run's result.
pub(crate) async fn stop_pipeline<T>(
    relay: &Relay,
    consumer: &Consumer,
    outcome: Result<T>,
) -> Result<T> {
    consumer.shutdown().await?;
    relay.shutdown().await?;
    outcome
}

pub(crate) async fn wait_processed(consumer: &Consumer, n: u64, within: Duration) -> Result<()> {
    let since = Instant::now();
    while consumer.stats().processed < n {
        ensure!(
            since.elapsed() < within,
            "the consumer processed {} of {n} messages in {within:?}",
            consumer.stats().processed
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

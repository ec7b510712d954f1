//! The relay's metrics, recorded through the [`metrics`] crate's facade.
//!
//! Nothing is exported from here: an application (or `relaybox relay
//! --listen`) installs a recorder, e.g. `metrics-exporter-prometheus`, and
//! sees every metric below; without one, recording costs next to nothing.
//! docs/metrics.md lists them with their meaning.
//!
//! The backlog gauges come from [`Store::status`], sampled by each running
//! relay every `metrics_interval` (see [`sample_backlog`]); the other
//! metrics are recorded as the relay works.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use metrics::Unit;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use tokio_util::sync::CancellationToken;

use crate::message::Message;
use crate::store::{Completion, Status, Store};

/// Messages the transport acknowledged, per `topic`.
pub const DELIVERED: &str = "relaybox_delivered_total";
/// Failed delivery attempts scheduled for a retry, per `topic`.
pub const RETRIED: &str = "relaybox_retried_total";
/// Messages moved to dead letters, per `topic`.
pub const DEAD_LETTERED: &str = "relaybox_dead_lettered_total";
/// Seconds from handing a batch to the transport to its last acknowledgement,
/// per `transport`.
pub const PUBLISH_LATENCY: &str = "relaybox_publish_latency_seconds";
/// Messages per batch claimed from the outbox.
pub const BATCH_SIZE: &str = "relaybox_batch_size";
/// Partitions held by the relays of this process.
pub const LEASES_HELD: &str = "relaybox_leases_held";
/// Unix time (seconds) of the last batch with a delivered message.
pub const LAST_PUBLISH: &str = "relaybox_last_publish_timestamp_seconds";
/// Undelivered messages in the outbox, per `topic`.
pub const BACKLOG: &str = "relaybox_backlog_messages";
/// Undelivered messages that failed at least once, per `topic`.
pub const RETRYING: &str = "relaybox_retrying_messages";
/// Age in seconds of the oldest undelivered message, per `topic`.
pub const OLDEST_PENDING_AGE: &str = "relaybox_oldest_pending_age_seconds";
/// Messages in the dead-letter table.
pub const DEAD_LETTERS: &str = "relaybox_dead_letters";
/// Keys parked behind a dead letter of the relay.
pub const PARKED_KEYS: &str = "relaybox_parked_keys";

/// Bucket bounds (seconds) suggested for [`PUBLISH_LATENCY`].
pub const PUBLISH_LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bucket bounds (messages) suggested for [`BATCH_SIZE`].
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// Describes every metric (help text and unit) to the installed recorder.
/// Called when a relay starts, so a recorder installed before gets them.
pub(crate) fn describe() {
    describe_counter!(
        DELIVERED,
        Unit::Count,
        "Messages the transport acknowledged."
    );
    describe_counter!(
        RETRIED,
        Unit::Count,
        "Failed delivery attempts scheduled for a retry."
    );
    describe_counter!(
        DEAD_LETTERED,
        Unit::Count,
        "Messages moved to dead letters."
    );
    describe_histogram!(
        PUBLISH_LATENCY,
        Unit::Seconds,
        "Time from handing a batch to the transport to its last acknowledgement."
    );
    describe_histogram!(
        BATCH_SIZE,
        Unit::Count,
        "Messages per batch claimed from the outbox."
    );
    describe_gauge!(
        LEASES_HELD,
        Unit::Count,
        "Partitions held by this process's relays."
    );
    describe_gauge!(
        LAST_PUBLISH,
        Unit::Seconds,
        "Unix time of the last batch with a delivered message."
    );
    describe_gauge!(BACKLOG, Unit::Count, "Undelivered messages in the outbox.");
    describe_gauge!(
        RETRYING,
        Unit::Count,
        "Undelivered messages that failed at least once."
    );
    describe_gauge!(
        OLDEST_PENDING_AGE,
        Unit::Seconds,
        "Age of the oldest undelivered message."
    );
    describe_gauge!(
        DEAD_LETTERS,
        Unit::Count,
        "Messages in the dead-letter table."
    );
    describe_gauge!(
        PARKED_KEYS,
        Unit::Count,
        "Keys parked behind a dead letter of the relay."
    );
}

/// Records a claimed batch of `n` messages.
pub(crate) fn batch_claimed(n: usize) {
    histogram!(BATCH_SIZE).record(n as f64);
}

/// Records the time `transport` took to acknowledge a batch.
pub(crate) fn published(transport: &str, took: Duration) {
    histogram!(PUBLISH_LATENCY, "transport" => transport.to_string()).record(took.as_secs_f64());
}

/// What became of a completed batch, per topic, to record once the
/// outcome is stored.
#[derive(Default)]
pub(crate) struct BatchTally {
    delivered: HashMap<String, u64>,
    retried: HashMap<String, u64>,
    dead: HashMap<String, u64>,
}

impl BatchTally {
    /// Counts the outcome `done` of a batch of `messages` per topic.
    pub(crate) fn new(messages: &[Message], done: &Completion) -> Self {
        let topics: HashMap<uuid::Uuid, &str> =
            messages.iter().map(|m| (m.id, m.topic.as_str())).collect();
        let per_topic = |ids: &mut dyn Iterator<Item = uuid::Uuid>| {
            let mut counts: HashMap<String, u64> = HashMap::new();
            for id in ids {
                if let Some(topic) = topics.get(&id) {
                    *counts.entry((*topic).to_string()).or_default() += 1;
                }
            }
            counts
        };
        BatchTally {
            delivered: per_topic(&mut done.delivered.iter().copied()),
            retried: per_topic(&mut done.retry.iter().map(|(id, ..)| *id)),
            dead: per_topic(&mut done.dead.iter().map(|(id, _)| *id)),
        }
    }

    /// Messages moved to the database transport's log: `(topic, count)`.
    pub(crate) fn moved(per_topic: Vec<(String, u64)>) -> Self {
        BatchTally {
            delivered: per_topic.into_iter().collect(),
            ..BatchTally::default()
        }
    }

    /// Messages delivered in the batch.
    pub(crate) fn delivered(&self) -> u64 {
        self.delivered.values().sum()
    }

    /// Adds the counts to the counters and, when a message was delivered,
    /// sets the time of the last delivery.
    pub(crate) fn record(self) {
        if self.delivered() > 0 {
            published_now();
        }
        count(DELIVERED, self.delivered);
        count(RETRIED, self.retried);
        count(DEAD_LETTERED, self.dead);
    }
}

fn count(name: &'static str, per_topic: HashMap<String, u64>) {
    for (topic, n) in per_topic {
        counter!(name, "topic" => topic).increment(n);
    }
}

fn published_now() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    gauge!(LAST_PUBLISH).set(now.as_secs_f64());
}

/// Records that a relay of this process went from holding `before` to
/// `after` partitions (the gauge adds up the relays of the process).
pub(crate) fn leases_changed(before: usize, after: usize) {
    if after > before {
        gauge!(LEASES_HELD).increment((after - before) as f64);
    } else if before > after {
        gauge!(LEASES_HELD).decrement((before - after) as f64);
    }
}

/// Sets the backlog gauges from `status`. Topics in `shown` (those set
/// before) that have no backlog any more are set to zero and forgotten.
pub(crate) fn backlog(status: &Status, shown: &mut HashSet<String>) {
    let mut now: HashSet<String> = HashSet::with_capacity(status.topics.len());
    for t in &status.topics {
        let topic = t.topic.clone();
        gauge!(BACKLOG, "topic" => topic.clone()).set(t.pending as f64);
        gauge!(RETRYING, "topic" => topic.clone()).set(t.retrying as f64);
        gauge!(OLDEST_PENDING_AGE, "topic" => topic.clone()).set(t.oldest_age_seconds);
        now.insert(topic);
    }
    for topic in shown.difference(&now) {
        gauge!(BACKLOG, "topic" => topic.clone()).set(0.0);
        gauge!(RETRYING, "topic" => topic.clone()).set(0.0);
        gauge!(OLDEST_PENDING_AGE, "topic" => topic.clone()).set(0.0);
    }
    *shown = now;
    gauge!(DEAD_LETTERS).set(status.dead_letters as f64);
    gauge!(PARKED_KEYS).set(status.parked_keys_total as f64);
}

/// Sets the backlog gauges from [`Store::status`] every `interval` until
/// `cancel`; a failed sample is logged at debug level (the relay's own
/// work reports database trouble) and the gauges keep their values.
pub(crate) async fn sample_backlog(store: Store, interval: Duration, cancel: CancellationToken) {
    let mut shown = HashSet::new();
    loop {
        match store.status().await {
            Ok(status) => backlog(&status, &mut shown),
            Err(e) => tracing::debug!(error = %e, "relaybox backlog sample failed"),
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

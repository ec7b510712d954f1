//! The throughput chart's data: every [`EVERY`] the console reads three
//! counters from the database and keeps the last [`CAPACITY`] readings.
//!
//! - `enqueued`: the outbox's high-water mark (rows ever inserted), which
//!   deleting delivered rows does not lower;
//! - `pending`: undelivered outbox rows;
//! - `dead_letters`: dead letters kept.
//!
//! Between two readings, messages enqueued per second is the change of
//! `enqueued`; messages that left the outbox are those enqueued minus the
//! change of `pending`; of those, the rise in `dead_letters` were
//! dead-lettered and the rest delivered. The counters are the database's,
//! so the chart shows every relay's work, whichever process serves it.

use std::collections::VecDeque;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use chrono::Utc;
use relaybox::Store;
use serde::Serialize;

use super::Console;

/// How often the counters are read.
pub const EVERY: Duration = Duration::from_secs(2);

/// How many readings are kept: ten minutes' worth.
pub const CAPACITY: usize = 300;

/// One reading of the counters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// When, in seconds since the Unix epoch.
    pub at: f64,
    /// Rows ever inserted into the outbox.
    pub enqueued: i64,
    /// Undelivered outbox rows.
    pub pending: i64,
    /// Dead letters kept.
    pub dead_letters: i64,
}

/// A ring of the most recent readings.
pub struct Samples {
    ring: Mutex<VecDeque<Sample>>,
    capacity: usize,
}

impl Samples {
    /// An empty ring keeping at most `capacity` readings.
    pub fn new(capacity: usize) -> Samples {
        Samples {
            ring: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity: capacity.max(2),
        }
    }

    /// Adds a reading, dropping the oldest when full.
    pub fn push(&self, sample: Sample) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back(sample);
    }

    /// The readings, oldest first.
    pub fn snapshot(&self) -> Vec<Sample> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().copied().collect()
    }
}

/// The chart's series: one point per pair of consecutive readings, at the
/// later one's time.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Series {
    /// Seconds since the Unix epoch.
    pub t: Vec<f64>,
    /// Messages enqueued per second.
    pub enqueued: Vec<f64>,
    /// Messages delivered per second.
    pub delivered: Vec<f64>,
    /// Messages dead-lettered per second.
    pub dead_lettered: Vec<f64>,
    /// Undelivered messages at the later reading.
    pub pending: Vec<i64>,
}

/// Rates between consecutive readings. Counters that go down (a purge of
/// dead letters, a dead letter retried) count as no change, so no rate is
/// negative.
pub fn series(samples: &[Sample]) -> Series {
    let mut out = Series::default();
    for pair in samples.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let seconds = b.at - a.at;
        if seconds <= 0.0 {
            continue;
        }
        let enqueued = (b.enqueued - a.enqueued).max(0);
        let left = (enqueued - (b.pending - a.pending)).max(0);
        let dead = (b.dead_letters - a.dead_letters).clamp(0, left);
        out.t.push(b.at);
        out.enqueued.push(enqueued as f64 / seconds);
        out.delivered.push((left - dead) as f64 / seconds);
        out.dead_lettered.push(dead as f64 / seconds);
        out.pending.push(b.pending);
    }
    out
}

/// Reads the counters once.
pub async fn take(store: &Store) -> relaybox::Result<Sample> {
    let enqueued = store.outbox_high_water().await?;
    let status = store.status().await?;
    Ok(Sample {
        at: Utc::now().timestamp_micros() as f64 / 1e6,
        enqueued,
        pending: status.topics.iter().map(|t| t.pending).sum(),
        dead_letters: status.dead_letters,
    })
}

/// Reads the counters every `every` into the console's ring until the
/// console is dropped. A failed reading is logged (once until the next
/// success) and leaves a gap.
pub fn spawn(console: Weak<Console>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut failing = false;
        loop {
            tick.tick().await;
            let Some(console) = console.upgrade() else {
                break;
            };
            match take(&console.store).await {
                Ok(sample) => {
                    failing = false;
                    console.samples.push(sample);
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "relaybox console cannot read the throughput counters");
                }
                Err(_) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at: f64, enqueued: i64, pending: i64, dead_letters: i64) -> Sample {
        Sample {
            at,
            enqueued,
            pending,
            dead_letters,
        }
    }

    #[test]
    fn rates_come_from_counter_changes() {
        let s = series(&[
            at(0.0, 100, 10, 0),
            // 20 enqueued, backlog +4: 16 left, 1 of them dead-lettered.
            at(2.0, 120, 14, 1),
            // Nothing enqueued, the backlog drained: 14 delivered.
            at(4.0, 120, 0, 1),
        ]);
        assert_eq!(s.t, [2.0, 4.0]);
        assert_eq!(s.enqueued, [10.0, 0.0]);
        assert_eq!(s.delivered, [7.5, 7.0]);
        assert_eq!(s.dead_lettered, [0.5, 0.0]);
        assert_eq!(s.pending, [14, 0]);
    }

    #[test]
    fn falling_counters_give_no_negative_rate() {
        // Dead letters purged (3 -> 0), then 2 retried back into the outbox.
        let s = series(&[at(0.0, 5, 0, 3), at(1.0, 5, 0, 0), at(2.0, 7, 2, 0)]);
        assert_eq!(s.delivered, [0.0, 0.0]);
        assert_eq!(s.dead_lettered, [0.0, 0.0]);
        assert_eq!(s.enqueued, [0.0, 2.0]);
        // A consumer dead-letters a message: no outbox change, no negative delivery.
        let s = series(&[at(0.0, 5, 0, 0), at(1.0, 5, 0, 1)]);
        assert_eq!((s.delivered[0], s.dead_lettered[0]), (0.0, 0.0));
    }

    #[test]
    fn fewer_than_two_readings_give_no_points() {
        assert_eq!(series(&[]), Series::default());
        assert_eq!(series(&[at(0.0, 1, 1, 1)]), Series::default());
    }

    #[test]
    fn the_ring_keeps_the_latest() {
        let ring = Samples::new(3);
        for n in 0..5 {
            ring.push(at(n as f64, n, 0, 0));
        }
        let kept: Vec<i64> = ring.snapshot().iter().map(|s| s.enqueued).collect();
        assert_eq!(kept, [2, 3, 4]);
    }
}

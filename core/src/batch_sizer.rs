//! How many rows a relay's batch loop claims next: few while rows trickle
//! in, so that each is published at once, and more while a backlog waits,
//! so that the database's and the broker's cost per batch is shared by many
//! rows. The size doubles while claims come back full and their batches are
//! published quickly, and halves when a claim comes back mostly empty or a
//! batch is slow to publish, between [`FIRST`] rows (or the largest batch,
//! when smaller) and the configured largest batch.

use std::time::Duration;

/// The size a loop starts with, and the smallest it returns to.
pub(crate) const FIRST: u32 = 100;

/// A batch that took longer than this from hand-over to acknowledgement
/// halves the size: batches stay short next to the publish timeout and a
/// slow transport (one that sends message by message) keeps small batches.
pub(crate) const SLOW_BATCH: Duration = Duration::from_secs(1);

/// The claim size of one batch loop.
#[derive(Debug, Clone)]
pub(crate) struct BatchSizer {
    floor: u32,
    largest: u32,
    current: u32,
    slow: Duration,
}

impl BatchSizer {
    /// Sizes between [`FIRST`] and `largest`; a batch slower than `slow`
    /// (or [`SLOW_BATCH`] when that is shorter) halves the size.
    pub(crate) fn new(largest: u32, slow: Duration) -> BatchSizer {
        let largest = largest.max(1);
        let floor = FIRST.min(largest);
        BatchSizer {
            floor,
            largest,
            current: floor,
            slow: slow.min(SLOW_BATCH),
        }
    }

    /// Rows to claim next.
    pub(crate) fn limit(&self) -> u32 {
        self.current
    }

    /// A claim of at most `limit` rows returned `rows`: full, it doubles the
    /// size; less than half full, it halves it.
    pub(crate) fn claimed(&mut self, limit: u32, rows: usize) {
        if rows >= limit as usize {
            self.current = self.current.max(limit).saturating_mul(2).min(self.largest);
        } else if rows.saturating_mul(2) < limit as usize {
            self.current = (self.current / 2).max(self.floor);
        }
    }

    /// A batch was acknowledged `took` after its hand-over: a slow one
    /// halves the size.
    pub(crate) fn published(&mut self, took: Duration) {
        if took > self.slow {
            self.current = (self.current / 2).max(self.floor);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_grows_the_batches_to_the_largest() {
        let mut s = BatchSizer::new(5_000, Duration::from_secs(10));
        let mut sizes = Vec::new();
        for _ in 0..8 {
            let limit = s.limit();
            sizes.push(limit);
            s.claimed(limit, limit as usize);
            s.published(Duration::from_millis(50));
        }
        assert_eq!(sizes, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[test]
    fn a_trickle_brings_them_back_down() {
        let mut s = BatchSizer::new(5_000, Duration::from_secs(10));
        for _ in 0..6 {
            let limit = s.limit();
            s.claimed(limit, limit as usize);
        }
        assert_eq!(s.limit(), 5_000);
        let mut sizes = Vec::new();
        for _ in 0..7 {
            let limit = s.limit();
            s.claimed(limit, 3);
            sizes.push(s.limit());
        }
        assert_eq!(sizes, [2500, 1250, 625, 312, 156, 100, 100]);
    }

    #[test]
    fn slow_batches_halve_the_size() {
        let mut s = BatchSizer::new(5_000, Duration::from_secs(10));
        for _ in 0..4 {
            let limit = s.limit();
            s.claimed(limit, limit as usize);
        }
        assert_eq!(s.limit(), 1_600);
        s.published(Duration::from_millis(1_500));
        assert_eq!(s.limit(), 800);
        // A publish timeout shorter than a second is the threshold.
        let mut short = BatchSizer::new(5_000, Duration::from_millis(200));
        short.claimed(100, 100);
        short.published(Duration::from_millis(300));
        assert_eq!(short.limit(), 100);
    }

    #[test]
    fn a_small_largest_batch_is_kept_to() {
        let mut s = BatchSizer::new(10, Duration::from_secs(10));
        assert_eq!(s.limit(), 10);
        s.claimed(10, 10);
        assert_eq!(s.limit(), 10);
        s.claimed(10, 1);
        assert_eq!(s.limit(), 10);
    }
}

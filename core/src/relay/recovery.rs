//! What the relay knows of its transport's health: rows that failed while
//! the transport was down are retried at once, once, when it delivers again.

use std::collections::HashSet;

/// What the relay knows of its transport's health, to retry at once the rows
/// that failed during an outage when the transport delivers again, instead
/// of letting them sit out their backoff while they hold back their keys.
#[derive(Default)]
pub(super) struct Recovery {
    /// A batch failed with retryable transport errors and nothing of it was
    /// delivered, and no batch was delivered whole since: the transport
    /// looks down.
    down: bool,
    /// Rows scheduled for a retry after a retryable transport error, since
    /// the last recovery.
    waiting: HashSet<uuid::Uuid>,
    /// Rows made due early once already. A row that fails again after that
    /// waits out its backoff: in a partial outage (some topics or broker
    /// partitions failing while others work), batches that go through must
    /// not make the failing rows burn their attempts at the pace of the
    /// traffic.
    retried_early: HashSet<uuid::Uuid>,
}

/// Rows remembered as retried early, at most; beyond, the memory is cleared
/// (those rows may then be retried early once more).
const RETRIED_EARLY_KEPT: usize = 100_000;

impl Recovery {
    /// Records a completed batch: the rows it `settled` (delivered or
    /// dead-lettered), those it scheduled for a retry after a retryable
    /// transport error (`transport_failed`), how many it `delivered` and
    /// whether any of its messages `failed`. Returns the rows to make due
    /// now: when a batch is delivered whole while the transport looked
    /// down, those that failed since the last recovery and were not retried
    /// early before.
    pub(super) fn note(
        &mut self,
        settled: &[uuid::Uuid],
        transport_failed: &[uuid::Uuid],
        delivered: usize,
        failed: bool,
    ) -> Vec<uuid::Uuid> {
        for id in settled {
            self.waiting.remove(id);
            self.retried_early.remove(id);
        }
        for id in transport_failed {
            if !self.retried_early.contains(id) {
                self.waiting.insert(*id);
            }
        }
        if delivered == 0 && !transport_failed.is_empty() {
            self.down = true;
        }
        if !(self.down && delivered > 0 && !failed) {
            return Vec::new();
        }
        self.down = false;
        if self.retried_early.len() + self.waiting.len() > RETRIED_EARLY_KEPT {
            self.retried_early.clear();
        }
        let due: Vec<uuid::Uuid> = self.waiting.drain().collect();
        self.retried_early.extend(due.iter().copied());
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_retries_the_rows_of_an_outage_once() {
        let ids: Vec<uuid::Uuid> = (0..4).map(|_| uuid::Uuid::now_v7()).collect();
        let mut r = Recovery::default();
        // A batch that failed whole: the transport looks down.
        assert!(r.note(&[], &ids[..2], 0, true).is_empty());
        // A batch with failures does not end the outage.
        assert!(r.note(&[ids[3]], &ids[2..3], 1, true).is_empty());
        // A batch delivered whole does: the rows that failed are due now.
        let mut due = r.note(&[], &[], 1, false);
        due.sort();
        assert_eq!(due, ids[..3].to_vec());
        // They fail again in a new outage: not retried early a second time.
        assert!(r.note(&[], &ids[..1], 0, true).is_empty());
        assert!(r.note(&[], &[], 1, false).is_empty());
        // A delivered row is forgotten.
        r.note(&ids[..1], &[], 1, false);
        assert!(r.retried_early.len() == 2 && r.waiting.is_empty());
    }
}

//! Which deliveries are settled, per partition, and so which offsets the
//! consumer may acknowledge.

use std::collections::{BTreeMap, HashMap};

use crate::source::AckToken;

/// Which deliveries are settled (processed, skipped or dead-lettered), per
/// partition, and so which offsets may be acknowledged: an offset only when
/// every delivery of its partition at or before it is settled.
#[derive(Default)]
pub(super) struct AckTracker {
    partitions: HashMap<i32, PartitionTrack>,
}

#[derive(Default)]
struct PartitionTrack {
    /// Offsets handed to lanes and not yet passed by the settled prefix, with
    /// how many of their deliveries are unsettled (a redelivery after a
    /// rebalance can bring an offset twice).
    open: BTreeMap<i64, u32>,
    /// Highest offset whose partition is settled up to it.
    settled_to: Option<i64>,
    /// Highest offset acknowledged to the source.
    acked_to: Option<i64>,
}

impl AckTracker {
    pub(super) fn add(&mut self, ack: AckToken) {
        let track = self.partitions.entry(ack.partition).or_default();
        *track.open.entry(ack.offset).or_default() += 1;
    }

    pub(super) fn settle(&mut self, ack: AckToken) {
        let Some(track) = self.partitions.get_mut(&ack.partition) else {
            return;
        };
        if let Some(n) = track.open.get_mut(&ack.offset) {
            *n = n.saturating_sub(1);
        }
        while let Some(entry) = track.open.first_entry() {
            if *entry.get() > 0 {
                break;
            }
            let offset = *entry.key();
            entry.remove();
            track.settled_to = Some(track.settled_to.map_or(offset, |s| s.max(offset)));
        }
    }

    /// The tokens that would acknowledge more than is acknowledged already.
    pub(super) fn ackable(&self) -> Vec<AckToken> {
        self.partitions
            .iter()
            .filter_map(|(&partition, t)| match (t.settled_to, t.acked_to) {
                (Some(s), Some(a)) if s <= a => None,
                (Some(offset), _) => Some(AckToken { partition, offset }),
                (None, _) => None,
            })
            .collect()
    }

    pub(super) fn acked(&mut self, tokens: &[AckToken]) {
        for token in tokens {
            if let Some(t) = self.partitions.get_mut(&token.partition) {
                t.acked_to = Some(t.acked_to.map_or(token.offset, |a| a.max(token.offset)));
            }
        }
    }
}

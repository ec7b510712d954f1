//! Leases: the lease loop keeps this relay's fair share of the partitions
//! (heartbeat, renewal, taking free partitions, giving surplus ones up,
//! taking over those of relays found gone) and runs the background purges.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::worker::Worker;
use super::LOG_TARGET;
use crate::error::Result;
use crate::store::LeaseSession;

/// The number of partitions relay `me` should hold: `total` shared among
/// the `live` relays (sorted, the same list for every relay), the first
/// `total % live` of them holding one more than the others, so that the
/// shares add up to `total` exactly.
fn fair_share(total: u32, live: &[String], me: &str) -> usize {
    let n = live.len().max(1) as u32;
    let rank = live.iter().position(|o| o == me).unwrap_or(live.len()) as u32;
    (total / n + u32::from(rank < total % n)) as usize
}

/// How often the lease loop looks at the leases (at most; never less often
/// than `lease_ttl / 3`): one read-only statement, after which it refreshes
/// (heartbeat, renew, give or take) only if the live relays changed, it is
/// not at its fair share while it could be, or it is time to renew.
const LEASE_LOOK: Duration = Duration::from_millis(500);

/// The lease loop's memory between looks.
struct LeaseTending {
    /// The live relays at the last refresh.
    live: Vec<String>,
    /// When the leases are due for renewal.
    renew_at: Instant,
    /// Looks in a row at which the presence lock was refused.
    refused: u32,
}

impl Worker {
    /// Looks at the leases every [`LEASE_LOOK`] (or `lease_ttl / 3` if
    /// shorter), refreshes them when needed, and purges retained rows.
    pub(super) async fn lease_loop(&self, session: &mut LeaseSession) {
        let renew_every = self.config.lease_ttl / 3;
        let look_every = renew_every.min(LEASE_LOOK);
        let mut tending = LeaseTending {
            live: Vec::new(),
            renew_at: Instant::now(),
            refused: 0,
        };
        let mut next_purge = Instant::now();
        // A lane's lease rows are made by its first relay (see `Store::seed_lane`).
        let mut seeded = false;
        let mut mix_checked = false;
        while !self.cancel.is_cancelled() {
            if !seeded {
                match self.store.seed_lane().await {
                    Ok(()) => seeded = true,
                    Err(e) => {
                        tracing::warn!(target: LOG_TARGET, owner = %self.owner, error = %e, "relaybox relay could not create the leases of its topics")
                    }
                }
            }
            let next_look = match self.tend_leases(session, &mut tending).await {
                Ok(()) => {
                    if !mix_checked {
                        mix_checked = self.warn_of_other_lanes().await;
                    }
                    Instant::now() + look_every
                }
                Err(e) => {
                    self.counters
                        .leases
                        .failed(format!("lease refresh failed: {e}"));
                    tracing::warn!(target: LOG_TARGET, owner = %self.owner, error = %e, "relaybox lease refresh failed");
                    Instant::now() + renew_every.min(Duration::from_secs(1))
                }
            };
            if Instant::now() >= next_purge {
                self.purge_retained().await;
                let window = self.config.idempotency_window;
                next_purge = Instant::now() + Duration::from_secs(60).min(window);
            }
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = tokio::time::sleep_until(next_look) => {}
            }
        }
    }

    /// One lease tick: makes sure the presence lock is held (PostgreSQL),
    /// looks at the leases (freeing those of relays found gone), and
    /// refreshes them if the look calls for it.
    async fn tend_leases(
        &self,
        session: &mut LeaseSession,
        tending: &mut LeaseTending,
    ) -> Result<()> {
        if !self.store.hold_presence(session).await? {
            // Without its presence lock the relay looks gone to the others,
            // who may free its leases at any look: it renews and takes none
            // until it holds the lock again. Its claims stay fenced by the
            // leases either way.
            // Refused once, it may be a relay that took this one for gone
            // and is freeing its leases; still refused a second later,
            // another session holds it for good.
            tending.refused += 1;
            self.counters
                .leases
                .failed("another session holds the relay's presence lock".into());
            if tending.refused == 3 {
                tracing::warn!(target: LOG_TARGET, owner = %self.owner, "relaybox relay cannot take its presence lock: another session holds it (another relay with the same instance_id?); it renews and takes no leases until it can");
            }
            return Ok(());
        }
        tending.refused = 0;
        let view = self.store.lease_view(session).await?;
        self.counters.leases.looked(view.free);
        if !view.gone.is_empty() {
            tracing::info!(target: LOG_TARGET, owner = %self.owner, gone = ?view.gone, "relaybox relay instances gone (their database sessions ended): their partitions are free");
        }
        let total = self.store.partitions().await?;
        let held = self.held.borrow().clone();
        let target = fair_share(total, &view.live, &self.owner);
        let refresh = Instant::now() >= tending.renew_at
            || !view.gone.is_empty()
            || view.live != tending.live
            || view.mine != held
            || held.len() > target
            || (held.len() < target && view.free > 0);
        if refresh {
            tending.live = self.refresh_leases(session).await?;
            tending.renew_at = Instant::now() + self.config.lease_ttl / 3;
        }
        Ok(())
    }

    /// Warns when relays that serve every topic run beside relays that
    /// serve some topics only: the former also claim the latter's topics,
    /// so those topics' messages may go to either transport. Returns
    /// whether the look was made.
    async fn warn_of_other_lanes(&self) -> bool {
        let Ok(live) = self.store.live_topics().await else {
            return false;
        };
        let routed = self.sink.topics().is_some();
        let others: Vec<&str> = live
            .iter()
            .filter(|(owner, topics)| *owner != self.owner && topics.is_some() != routed)
            .map(|(owner, _)| owner.as_str())
            .collect();
        if !others.is_empty() {
            if routed {
                tracing::warn!(target: LOG_TARGET, owner = %self.owner, others = ?others, "relaybox relays that serve every topic run beside this relay, which serves some topics only: they also take its topics; give every relay on this outbox routes");
            } else {
                tracing::warn!(target: LOG_TARGET, owner = %self.owner, others = ?others, "relaybox relays with routes run beside this relay, which serves every topic: it also takes their topics; give every relay on this outbox routes");
            }
        }
        true
    }

    /// Heartbeat, renew, then take or give partitions towards the fair
    /// share; returns the live relays.
    async fn refresh_leases(&self, session: &mut LeaseSession) -> Result<Vec<String>> {
        let ttl = self.config.lease_ttl;
        let live = self.store.heartbeat(session, ttl).await?;
        let total = self.store.partitions().await?;
        let target = fair_share(total, &live, &self.owner);
        let mut held = self.store.renew_leases(session, ttl).await?;
        held.sort_unstable();
        if held.len() > target {
            let give: Vec<u32> = held.split_off(target);
            self.store.release_leases(session, &give).await?;
        } else if held.len() < target {
            let got = self
                .store
                .acquire_leases(session, ttl, (target - held.len()) as u32)
                .await?;
            held.extend(got);
            held.sort_unstable();
        }
        let before = self
            .counters
            .partitions_held
            .swap(held.len() as u64, Ordering::Relaxed);
        crate::metrics::leases_changed(before as usize, held.len());
        self.partitions_held(&held);
        self.held.send_if_modified(|current| {
            let changed = *current != held;
            *current = held;
            changed
        });
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fair_shares_add_up_to_every_partition() {
        let live: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let shares: Vec<usize> = live.iter().map(|o| fair_share(16, &live, o)).collect();
        assert_eq!(shares, [6, 5, 5]);
        assert_eq!(fair_share(16, &live[..1], "a"), 16);
        assert_eq!(fair_share(2, &live, "c"), 0);
        // Not yet among the live relays: the smaller share.
        assert_eq!(fair_share(16, &live, "d"), 5);
    }
}

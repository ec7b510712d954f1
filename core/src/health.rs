//! A running relay's readiness: [`Relay::health`](crate::Relay::health)
//! looks at the database, the relay's leases and its transport.

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::store::Store;

/// What [`Relay::health`](crate::Relay::health) found. The relay is ready
/// when `problems` is empty.
///
/// Leases count as fine when the relay holds at least one partition, and
/// also when it holds none because other relays hold every partition (more
/// relays than partitions, or a relay that just joined while the others
/// hand partitions over): such a relay is a working standby that takes
/// partitions over when another relay goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Health {
    /// The relay's task is running (it was neither shut down nor failed);
    /// when it is not, nothing else is checked and every other field is
    /// false.
    pub running: bool,
    /// A `SELECT 1` on the store's pool answered.
    pub database: bool,
    /// The lease loop looked at the leases within `lease_ttl`, and the
    /// relay holds a partition or none is free.
    pub leases: bool,
    /// Partitions the relay holds.
    pub partitions_held: u64,
    /// The sink's [`check`](crate::Sink::check) passed.
    pub transport: bool,
    /// One line per problem, naming what is not ready (`database: ...`,
    /// `leases: ...`, `transport redis: ...`); empty when ready.
    pub problems: Vec<String>,
}

impl Health {
    /// Whether every check passed.
    pub fn is_ready(&self) -> bool {
        self.problems.is_empty()
    }

    /// The problems on one line, or `None` when ready.
    pub fn reason(&self) -> Option<String> {
        (!self.problems.is_empty()).then(|| self.problems.join("; "))
    }
}

/// `SELECT 1` on `store`'s pool.
pub(crate) async fn ping(store: &Store) -> Result<()> {
    store.check_open()?;
    if let Some(pool) = store.pg_pool() {
        sqlx::query("SELECT 1").execute(pool).await?;
    } else if let Some(pool) = store.sqlite_pool() {
        sqlx::query("SELECT 1").execute(pool).await?;
    }
    Ok(())
}

/// Runs `check` (`what` it does, for the error), failing it after `timeout`.
pub(crate) async fn within<F>(timeout: Duration, what: &str, check: F) -> Result<()>
where
    F: std::future::Future<Output = Result<()>>,
{
    match tokio::time::timeout(timeout, check).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout {
            what: what.into(),
            after: Some(timeout),
        }),
    }
}

/// What the lease loop last saw, shared with [`Relay::health`](crate::Relay::health).
#[derive(Default)]
pub(crate) struct LeaseHealth {
    last: Mutex<Option<LeaseLook>>,
}

struct LeaseLook {
    at: Instant,
    /// The look's outcome: partitions nobody held, or what went wrong.
    outcome: std::result::Result<u32, String>,
}

impl LeaseHealth {
    /// Records a look at the leases that found `free` partitions nobody held.
    pub(crate) fn looked(&self, free: u32) {
        self.set(Ok(free));
    }

    /// Records a lease tick that failed, or could not look, for `reason`.
    pub(crate) fn failed(&self, reason: String) {
        self.set(Err(reason));
    }

    fn set(&self, outcome: std::result::Result<u32, String>) {
        *self.last.lock().expect("lease health lock") = Some(LeaseLook {
            at: Instant::now(),
            outcome,
        });
    }

    /// What is wrong with the leases of a relay holding `held` partitions
    /// whose leases last `ttl`, if anything.
    pub(crate) fn problem(&self, held: u64, ttl: Duration) -> Option<String> {
        let last = self.last.lock().expect("lease health lock");
        let Some(look) = last.as_ref() else {
            return Some("leases: the relay has not looked at the leases yet".into());
        };
        let age = look.at.elapsed();
        match &look.outcome {
            Err(reason) => Some(format!("leases: {reason}")),
            Ok(_) if age > ttl => Some(format!(
                "leases: no look at the leases for {:.1} s (lease_ttl {:.1} s)",
                age.as_secs_f64(),
                ttl.as_secs_f64()
            )),
            Ok(free) if held == 0 && *free > 0 => Some(format!(
                "leases: the relay holds no partition while {free} are free"
            )),
            Ok(_) => None,
        }
    }
}

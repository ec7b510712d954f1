//! Leases: a relay instance's standing with the store ([`LeaseSession`],
//! the presence lock on PostgreSQL), its look at the leases, heartbeats,
//! renewing, taking and giving up partitions, and the lanes of relays that
//! serve some topics only.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgConnection;

use super::{postgres, scope, sqlite, PgSql, Pool, SqliteSql, Store};
use crate::error::{Error, Result};

/// A relay instance's standing with the store, through which it keeps its
/// leases.
///
/// On PostgreSQL, a connection of its own (outside the pool) that holds the
/// instance's *presence lock*, a session-level advisory lock keyed by the
/// table prefix and the instance id, for as long as the relay runs; the
/// lease statements run on it. PostgreSQL releases a session's advisory
/// locks as soon as the session ends (the process died, the socket closed),
/// so another relay that can take an instance's presence lock knows that
/// instance is gone and frees its leases at once instead of waiting for
/// them to expire. A failed statement drops the connection, and with it the
/// lock; the next lease tick connects and takes it again.
///
/// On SQLite, nothing: leases are kept through the pool and a dead relay's
/// leases are taken over once they expire.
pub(crate) struct LeaseSession {
    owner: String,
    conn: Option<PgConnection>,
}

impl LeaseSession {
    /// The presence connection; an error when it is not connected.
    fn pg(&mut self) -> Result<&mut PgConnection> {
        self.conn
            .as_mut()
            .ok_or_else(|| Error::internal("the relay's presence connection is not open"))
    }

    /// Closes the presence connection, which lets the presence lock go.
    pub(crate) async fn close(mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = sqlx::Connection::close(conn).await;
        }
    }

    /// Passes `result` on; after a failure, drops the connection (and so
    /// the presence lock and any lock taken on it) to start afresh.
    fn settle<T>(&mut self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

/// What a relay sees of the leases at one look (see [`Store::lease_view`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LeaseView {
    /// Live relay instances (heartbeat not expired, session not gone), in
    /// byte order of their ids.
    pub live: Vec<String>,
    /// Instances that looked live but whose session is gone (PostgreSQL):
    /// their leases were freed and they no longer count as live.
    pub gone: Vec<String>,
    /// The partitions this relay holds an unexpired lease on, ascending.
    pub mine: Vec<u32>,
    /// Partitions nobody holds (free, or their lease expired).
    pub free: u32,
}

impl Store {
    /// This store as seen by a relay that serves `topics` only (`None`: every
    /// topic): the same pool, with lease statements on the lane of `topics`
    /// and claims of rows of those topics only (see [`crate::route`]).
    ///
    /// With `park_keys` off, the claims take no notice of the relay's dead
    /// letters (see `RelayConfig::park_keys`); the store's own statements park keys.
    pub(crate) fn for_relay(
        &self,
        topics: Option<&crate::route::Topics>,
        park_keys: bool,
    ) -> Store {
        let prefix = &self.inner.options.table_prefix;
        let scope = match topics {
            None if park_keys => return self.clone(),
            None => scope::LeaseScope::every_topic(prefix),
            Some(topics) => scope::LeaseScope::lane(prefix, topics),
        }
        .parking(prefix, park_keys);
        let pool = match &self.inner.pool {
            Pool::Postgres(pool, _) => {
                Pool::Postgres(pool.clone(), Arc::new(PgSql::scoped(prefix, &scope)))
            }
            Pool::Sqlite(pool, _) => {
                Pool::Sqlite(pool.clone(), Arc::new(SqliteSql::scoped(prefix, &scope)))
            }
        };
        Store {
            inner: self.inner.clone(),
            scoped: Some(Arc::new(pool)),
        }
    }

    /// The live relay instances and the topic patterns of each (`None` for
    /// one that serves every topic).
    pub(crate) async fn live_topics(&self) -> Result<Vec<(String, Option<crate::route::Topics>)>> {
        let rows = on_dialect!(self, live_topics())?;
        Ok(rows
            .into_iter()
            .map(|(owner, topics)| {
                let topics = topics.and_then(|t| crate::route::Topics::from_json(&t));
                (owner, topics)
            })
            .collect())
    }

    /// Creates the lease rows of this store's lane (see
    /// [`for_topics`](Store::for_topics)) when missing; nothing otherwise.
    pub(crate) async fn seed_lane(&self) -> Result<()> {
        on_dialect!(self, seed_lane())
    }

    /// A lease session for the relay instance `owner`; nothing is opened
    /// until [`hold_presence`](Store::hold_presence).
    pub(crate) fn lease_session(&self, owner: &str) -> LeaseSession {
        LeaseSession {
            owner: owner.to_string(),
            conn: None,
        }
    }

    /// Makes sure `session` holds its presence lock (PostgreSQL): connects
    /// and takes the lock when it has no connection. False when another
    /// session holds the lock: a relay freeing the leases of this instance
    /// (it looked gone), or another relay running with the same
    /// `instance_id`. Always true on SQLite.
    pub(crate) async fn hold_presence(&self, session: &mut LeaseSession) -> Result<bool> {
        let pool = match self.pool() {
            Ok(pool) => pool,
            Err(e) => {
                // A closed store: let the presence lock go, so that other
                // relays take this one's partitions without waiting.
                session.conn = None;
                return Err(e);
            }
        };
        match pool {
            Pool::Postgres(pool, sql) => {
                if session.conn.is_some() {
                    return Ok(true);
                }
                let timeout = self.inner.options.connect_timeout;
                let mut conn = postgres::presence_connection(pool, &session.owner, timeout).await?;
                if postgres::take_presence(&mut conn, sql, &session.owner).await? {
                    session.conn = Some(conn);
                    Ok(true)
                } else {
                    Ok(false)
                }
            }
            Pool::Sqlite(..) => Ok(true),
        }
    }

    /// One look at the leases: the live instances, this relay's leases and
    /// how many partitions are free. On PostgreSQL it also tries the
    /// presence lock of every other live instance: an instance whose lock
    /// it can take has no session any more, so its leases are freed at once
    /// and its heartbeat expired (listed in `gone`), then the lock is let
    /// go. Otherwise read-only, one statement: a relay looks often and
    /// refreshes its leases only when a look says something changed.
    pub(crate) async fn lease_view(&self, session: &mut LeaseSession) -> Result<LeaseView> {
        match self.pool()? {
            Pool::Postgres(_, sql) => {
                let owner = session.owner.clone();
                let result = postgres::lease_view(session.pg()?, sql, &owner).await;
                session.settle(result)
            }
            Pool::Sqlite(pool, sql) => sqlite::lease_view(pool, sql, &session.owner).await,
        }
    }

    /// Records the relay as live until `ttl` from now; returns every live
    /// instance, itself included, in byte order of their ids.
    pub(crate) async fn heartbeat(
        &self,
        session: &mut LeaseSession,
        ttl: Duration,
    ) -> Result<Vec<String>> {
        let owner = session.owner.clone();
        let mut live = match self.pool()? {
            Pool::Postgres(_, sql) => {
                let result = postgres::heartbeat(session.pg()?, sql, &owner, ttl).await;
                session.settle(result)
            }
            Pool::Sqlite(pool, sql) => sqlite::heartbeat(pool, sql, &owner, ttl).await,
        }?;
        live.sort_unstable();
        Ok(live)
    }

    /// Extends the leases the relay still owns to `ttl` from now; returns
    /// their partitions.
    pub(crate) async fn renew_leases(
        &self,
        session: &mut LeaseSession,
        ttl: Duration,
    ) -> Result<Vec<u32>> {
        let owner = session.owner.clone();
        match self.pool()? {
            Pool::Postgres(_, sql) => {
                let result = postgres::renew_leases(session.pg()?, sql, &owner, ttl).await;
                session.settle(result)
            }
            Pool::Sqlite(pool, sql) => sqlite::renew_leases(pool, sql, &owner, ttl).await,
        }
    }

    /// Takes up to `max` free or expired partitions for `ttl`; returns them.
    pub(crate) async fn acquire_leases(
        &self,
        session: &mut LeaseSession,
        ttl: Duration,
        max: u32,
    ) -> Result<Vec<u32>> {
        let owner = session.owner.clone();
        match self.pool()? {
            Pool::Postgres(_, sql) => {
                let result = postgres::acquire_leases(session.pg()?, sql, &owner, ttl, max).await;
                session.settle(result)
            }
            Pool::Sqlite(pool, sql) => sqlite::acquire_leases(pool, sql, &owner, ttl, max).await,
        }
    }

    /// Releases `partitions` so that other relays can take them at once.
    pub(crate) async fn release_leases(
        &self,
        session: &mut LeaseSession,
        partitions: &[u32],
    ) -> Result<()> {
        let owner = session.owner.clone();
        match self.pool()? {
            Pool::Postgres(_, sql) => {
                let result =
                    postgres::release_leases(session.pg()?, sql, &owner, Some(partitions)).await;
                session.settle(result)
            }
            Pool::Sqlite(pool, sql) => {
                sqlite::release_leases(pool, sql, &owner, Some(partitions)).await
            }
        }
    }

    /// Releases every lease of `owner` and removes it from the live
    /// instances, through the pool (the relay's presence connection may be
    /// the reason it stops).
    pub(crate) async fn leave(&self, owner: &str) -> Result<()> {
        match self.pool()? {
            Pool::Postgres(pool, sql) => {
                let mut conn = pool.acquire().await?;
                postgres::release_leases(&mut conn, sql, owner, None).await?;
                postgres::remove_instance(&mut conn, sql, owner).await
            }
            Pool::Sqlite(pool, sql) => {
                sqlite::release_leases(pool, sql, owner, None).await?;
                sqlite::remove_instance(pool, sql, owner).await
            }
        }
    }
}

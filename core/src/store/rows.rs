//! The rows the store returns: dead letters, consumer positions, the status
//! `relaybox status` shows, log entries and the bookkeeping of claimed
//! outbox rows.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::message::Message;

/// Where a claimed outbox row stands; its message travels beside it in
/// the claim.
#[derive(Clone, Copy, Debug)]
pub struct OutboxRow {
    /// Insertion order, monotonic.
    pub seq: i64,
    /// Partition (hash of the key mod the partition count).
    pub partition: u32,
    /// Delivery attempts so far.
    pub attempts: u32,
}

/// A message that failed too often, kept with its last error.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    /// The message.
    pub message: Message,
    /// `relay` or `consumer:<group>`: who gave up on it.
    pub origin: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub last_error: String,
    /// When it was dead-lettered.
    #[serde(with = "crate::message::micros_rfc3339")]
    pub failed_at: DateTime<Utc>,
}

/// Which dead letters an admin operation applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeadLetterFilter {
    /// Every dead letter.
    All,
    /// The dead letters of these message ids.
    Ids(Vec<Uuid>),
}

/// Which dead letters [`Store::search_dead_letters`] returns: those that
/// meet every condition that is set (the default matches every one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadLetterQuery {
    /// Exactly this topic.
    pub topic: Option<String>,
    /// Exactly this message key.
    pub key: Option<String>,
    /// Text the last error contains, ignoring case (ASCII letters only on SQLite).
    pub error_contains: Option<String>,
    /// Dead-lettered at or after this time.
    pub failed_after: Option<DateTime<Utc>>,
    /// Dead-lettered before this time.
    pub failed_before: Option<DateTime<Utc>>,
}

/// The stored position of one consumer group member on one source, with
/// how far behind the end of the log it is for sources of the database
/// transport's log.
#[derive(Clone, Debug, Serialize)]
pub struct ConsumerPosition {
    /// The consumer group.
    pub group: String,
    /// The source the position is for: `log:<topic>:<member>/<size>` for
    /// the database transport's log.
    pub source: String,
    /// The topic of a log source; `None` for other sources.
    pub topic: Option<String>,
    /// The position: the last log position the member has processed.
    pub position: i64,
    /// When the position was last stored.
    #[serde(with = "crate::message::micros_rfc3339")]
    pub updated_at: DateTime<Utc>,
    /// The topic's last log position (`None` when the topic has no entry
    /// left in the log, or for sources that are not the log).
    pub head: Option<i64>,
    /// Entries of the topic in the log after the position. A member of a
    /// group of several processes only the keys that hash to it, so this
    /// counts its peers' entries too.
    pub lag: Option<i64>,
}

impl ConsumerPosition {
    /// The topic of a position source `log:<topic>:<member>/<size>`.
    pub(crate) fn log_topic(source: &str) -> Option<&str> {
        let rest = source.strip_prefix("log:")?;
        let (topic, member) = rest.rsplit_once(':')?;
        let (m, n) = member.split_once('/')?;
        (!topic.is_empty() && m.parse::<u32>().is_ok() && n.parse::<u32>().is_ok()).then_some(topic)
    }
}

/// Backlog of one topic.
#[derive(Clone, Debug, Serialize)]
pub struct TopicBacklog {
    /// Topic name.
    pub topic: String,
    /// Undelivered messages.
    pub pending: i64,
    /// Age of the oldest undelivered message.
    pub oldest_age_seconds: f64,
    /// Undelivered messages that have failed at least once.
    pub retrying: i64,
    /// Whether a running relay serves the topic: one without routes, or one
    /// whose routes match it. Rows of a topic no running relay serves stay
    /// pending.
    pub served: bool,
}

/// Sets [`TopicBacklog::served`] from the topics of the live relays (`None`
/// for a relay that serves every topic).
pub(crate) fn mark_served(topics: &mut [TopicBacklog], relays: &[Option<String>]) {
    let every = relays.iter().any(Option::is_none);
    let lanes: Vec<crate::route::Topics> = relays
        .iter()
        .flatten()
        .filter_map(|t| crate::route::Topics::from_json(t))
        .collect();
    for backlog in topics {
        backlog.served = every || lanes.iter().any(|l| l.matches(&backlog.topic));
    }
}

/// Who holds how many partitions.
#[derive(Clone, Debug, Serialize)]
pub struct LeaseOwner {
    /// Relay instance id.
    pub owner: String,
    /// Partitions held.
    pub partitions: i64,
    /// When the soonest of its leases expires unless renewed.
    #[serde(with = "crate::message::micros_rfc3339")]
    pub expires_at: DateTime<Utc>,
}

/// A key the relay dead-lettered a message of: relays that park keys
/// (`RelayConfig::park_keys`, the default) claim none of its later messages
/// until that dead letter is retried or purged.
#[derive(Clone, Debug, Serialize)]
pub struct ParkedKey {
    /// The dead-lettered message's topic.
    pub topic: String,
    /// The message key.
    pub key: String,
    /// Its partition (a key is parked within its partition).
    pub partition: u32,
    /// When the message was dead-lettered (the earliest, if several were).
    #[serde(with = "crate::message::micros_rfc3339")]
    pub since: DateTime<Utc>,
    /// The id of that dead letter's message: what to retry or purge.
    pub dead_letter_id: Uuid,
}

/// How many parked keys [`Status::parked_keys`] lists at most.
pub const PARKED_KEYS_SHOWN: u32 = 100;

/// What `relaybox status` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Backlog per topic.
    pub topics: Vec<TopicBacklog>,
    /// Dead letters in total.
    pub dead_letters: i64,
    /// Keys parked behind a dead letter of the relay, longest parked first,
    /// at most [`PARKED_KEYS_SHOWN`] of them.
    pub parked_keys: Vec<ParkedKey>,
    /// Parked keys in total.
    pub parked_keys_total: i64,
    /// Partition count.
    pub partitions: u32,
    /// Current lease owners.
    pub lease_owners: Vec<LeaseOwner>,
    /// Live relay instances (heartbeat not expired).
    pub live_relays: i64,
}

/// A message read from the log table of the database transport.
#[derive(Clone, Debug)]
pub struct LogEntry {
    /// Position in the log (global, increasing in relay order).
    pub position: i64,
    /// The message.
    pub message: Message,
}

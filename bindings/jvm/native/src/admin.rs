//! What an operator asks an outbox: its status (backlog per topic, dead
//! letters, parked keys, partitions, lease owners, live relays) and its dead letters,
//! which can be listed, put back into the outbox or deleted. The records
//! mirror the core's `Status` and `DeadLetter`; counts are signed so that
//! Java can read them.

use std::time::SystemTime;

use relaybox::{DeadLetterFilter, Error};
use uuid::Uuid;

use crate::convert::Message;

/// Backlog of one topic.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct TopicBacklog {
    /// Topic name.
    pub topic: String,
    /// Undelivered messages.
    pub pending: i64,
    /// Age of the oldest undelivered message, in seconds.
    pub oldest_age_seconds: f64,
    /// Undelivered messages that have failed at least once.
    pub retrying: i64,
    /// Whether a running relay serves the topic (false: no relay's routes
    /// match it, and its rows stay pending).
    pub served: bool,
}

/// A relay instance holding partition leases.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct LeaseOwner {
    /// Relay instance id.
    pub owner: String,
    /// Partitions held.
    pub partitions: i64,
    /// When the soonest of its leases expires unless renewed.
    pub expires_at: SystemTime,
}

/// A key the relay holds back: a message of it was dead-lettered, and its
/// later messages wait until that dead letter is retried or purged.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct ParkedKey {
    /// The dead-lettered message's topic.
    pub topic: String,
    /// The message key.
    pub key: String,
    /// Its partition (a key is parked within its partition).
    pub partition: i64,
    /// When the message was dead-lettered (the earliest, if several were).
    pub since: SystemTime,
    /// The id of that dead letter's message: what to retry or purge.
    pub dead_letter_id: String,
}

/// What `relaybox status` shows: backlog per topic, dead letters, parked
/// keys, partitions and the relays holding them.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct OutboxStatus {
    /// Backlog per topic; topics with nothing undelivered are absent.
    pub topics: Vec<TopicBacklog>,
    /// Dead letters in total.
    pub dead_letters: i64,
    /// Partition count of the outbox.
    pub partitions: i32,
    /// Current lease owners.
    pub lease_owners: Vec<LeaseOwner>,
    /// Live relay instances (heartbeat not expired).
    pub live_relays: i64,
    /// Keys parked behind a dead letter of the relay, longest parked first,
    /// at most 100 of them.
    pub parked_keys: Vec<ParkedKey>,
    /// Keys parked in total (may exceed the length of `parked_keys`).
    pub parked_keys_total: i64,
}

impl From<relaybox::Status> for OutboxStatus {
    fn from(s: relaybox::Status) -> Self {
        OutboxStatus {
            topics: s
                .topics
                .into_iter()
                .map(|t| TopicBacklog {
                    topic: t.topic,
                    pending: t.pending,
                    oldest_age_seconds: t.oldest_age_seconds,
                    retrying: t.retrying,
                    served: t.served,
                })
                .collect(),
            dead_letters: s.dead_letters,
            partitions: i32::try_from(s.partitions).unwrap_or(i32::MAX),
            lease_owners: s
                .lease_owners
                .into_iter()
                .map(|o| LeaseOwner {
                    owner: o.owner,
                    partitions: o.partitions,
                    expires_at: o.expires_at.into(),
                })
                .collect(),
            live_relays: s.live_relays,
            parked_keys: s
                .parked_keys
                .into_iter()
                .map(|p| ParkedKey {
                    topic: p.topic,
                    key: p.key,
                    partition: i64::from(p.partition),
                    since: p.since.into(),
                    dead_letter_id: p.dead_letter_id.to_string(),
                })
                .collect(),
            parked_keys_total: s.parked_keys_total,
        }
    }
}

/// A message that failed too often (or was rejected), kept with its last error.
#[derive(Clone, Debug, uniffi::Record)]
pub struct DeadLetter {
    /// The message, as a handler receives it.
    pub message: Message,
    /// `relay` or `consumer:<group>`: who gave up on it.
    pub origin: String,
    /// Attempts made.
    pub attempts: i64,
    /// The last error.
    pub last_error: String,
    /// When it was dead-lettered.
    pub failed_at: SystemTime,
}

impl From<relaybox::DeadLetter> for DeadLetter {
    fn from(d: relaybox::DeadLetter) -> Self {
        DeadLetter {
            message: d.message.into(),
            origin: d.origin,
            attempts: i64::from(d.attempts),
            last_error: d.last_error,
            failed_at: d.failed_at.into(),
        }
    }
}

/// The dead letters an operation applies to: every one for `None`, those of
/// the given message ids otherwise (an empty list selects none).
pub fn filter(ids: Option<Vec<String>>) -> relaybox::Result<DeadLetterFilter> {
    match ids {
        None => Ok(DeadLetterFilter::All),
        Some(ids) => ids
            .iter()
            .map(|id| {
                Uuid::parse_str(id).map_err(|e| Error::InvalidValue {
                    reason: format!("{id:?} is not a message id: {e}"),
                })
            })
            .collect::<relaybox::Result<Vec<_>>>()
            .map(DeadLetterFilter::Ids),
    }
}

/// The row limit of a dead-letter listing; negative limits are refused.
pub fn limit(limit: i32) -> relaybox::Result<u32> {
    u32::try_from(limit).map_err(|_| Error::InvalidValue {
        reason: format!("limit must be zero or more, got {limit}"),
    })
}

/// A row count as Java reads it.
pub fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_select_all_or_the_ids_given() {
        assert_eq!(filter(None).unwrap(), DeadLetterFilter::All);
        let id = "0192f0c1-7a3b-7c4d-8e9f-0a1b2c3d4e5f";
        assert_eq!(
            filter(Some(vec![id.into()])).unwrap(),
            DeadLetterFilter::Ids(vec![Uuid::parse_str(id).unwrap()])
        );
        assert_eq!(filter(Some(vec![])).unwrap(), DeadLetterFilter::Ids(vec![]));
        let err = filter(Some(vec![id.into(), "nope".into()])).unwrap_err();
        assert_eq!(err.code(), "invalid_value");
        assert!(err.to_string().contains("\"nope\" is not a message id"));
    }

    #[test]
    fn limits_are_never_negative() {
        assert_eq!(limit(100).unwrap(), 100);
        assert_eq!(limit(0).unwrap(), 0);
        let err = limit(-1).unwrap_err();
        assert_eq!(err.code(), "invalid_value");
        assert!(err
            .to_string()
            .contains("limit must be zero or more, got -1"));
    }
}

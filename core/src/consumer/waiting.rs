//! The keys of a consumer lane that wait for a retry: the message whose
//! handler failed, when its next attempt is due, and the later deliveries of
//! its key, held back behind it so that each key keeps its order while the
//! lane's other keys go on.

use std::collections::{HashMap, VecDeque};

use tokio::time::Instant;
use uuid::Uuid;

use crate::source::Delivery;

/// What orders a delivery: its key, or for a message without one, nothing
/// but itself.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum OrderKey {
    /// Messages with this key are processed in order.
    Key(String),
    /// A message without a key: ordered with no other.
    Alone(Uuid),
}

impl OrderKey {
    /// The order key of `delivery`.
    pub(super) fn of(delivery: &Delivery) -> OrderKey {
        match &delivery.message.key {
            Some(key) => OrderKey::Key(key.clone()),
            None => OrderKey::Alone(delivery.message.id),
        }
    }
}

/// A key waiting for the retry of its first message.
pub(super) struct Parked {
    /// The message to try again.
    pub(super) head: Delivery,
    /// Failed attempts so far.
    pub(super) failures: u32,
    /// When the next attempt is due.
    pub(super) due: Instant,
    /// Later deliveries of the key, in arrival order.
    pub(super) behind: VecDeque<Delivery>,
}

/// The waiting keys of one lane.
#[derive(Default)]
pub(super) struct Waiting {
    keys: HashMap<OrderKey, Parked>,
}

impl Waiting {
    /// Parks `head`'s key until `due`.
    pub(super) fn park(&mut self, head: Delivery, failures: u32, due: Instant) {
        let key = OrderKey::of(&head);
        let parked = Parked {
            head,
            failures,
            due,
            behind: VecDeque::new(),
        };
        // A key is parked only by a message processed while it was not
        // waiting, and every later delivery of a waiting key goes behind.
        let previous = self.keys.insert(key, parked);
        debug_assert!(previous.is_none(), "a key parked twice");
    }

    /// Keeps `delivery` back when its key waits (returning None), else
    /// returns it.
    pub(super) fn hold(&mut self, delivery: Delivery) -> Option<Delivery> {
        match self.keys.get_mut(&OrderKey::of(&delivery)) {
            Some(parked) => {
                parked.behind.push_back(delivery);
                None
            }
            None => Some(delivery),
        }
    }

    /// When the soonest retry is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.keys.values().map(|p| p.due).min()
    }

    /// Takes the key whose retry is due soonest, when it is due at `now`.
    pub(super) fn take_due(&mut self, now: Instant) -> Option<Parked> {
        let key = self
            .keys
            .iter()
            .filter(|(_, p)| p.due <= now)
            .min_by_key(|(_, p)| p.due)
            .map(|(k, _)| k.clone())?;
        self.keys.remove(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use crate::source::AckToken;
    use std::time::Duration;

    fn delivery(key: Option<&str>, offset: i64) -> Delivery {
        let mut message = Message::new("t", offset.to_string());
        message.key = key.map(str::to_string);
        Delivery {
            message,
            lane: 0,
            ack: AckToken {
                partition: 0,
                offset,
            },
        }
    }

    #[tokio::test]
    async fn a_waiting_key_holds_back_only_its_own_later_deliveries() {
        let mut waiting = Waiting::default();
        let now = Instant::now();
        waiting.park(delivery(Some("a"), 1), 1, now + Duration::from_secs(1));
        assert!(waiting.hold(delivery(Some("a"), 2)).is_none());
        assert!(waiting.hold(delivery(Some("b"), 3)).is_some());
        assert!(waiting.hold(delivery(None, 4)).is_some());
        assert!(waiting.take_due(now).is_none());
        assert_eq!(waiting.next_due(), Some(now + Duration::from_secs(1)));
        let parked = waiting.take_due(now + Duration::from_secs(1)).expect("due");
        assert_eq!(parked.head.ack.offset, 1);
        assert_eq!(parked.failures, 1);
        let behind: Vec<i64> = parked.behind.iter().map(|d| d.ack.offset).collect();
        assert_eq!(behind, vec![2]);
        assert!(waiting.next_due().is_none());
    }

    #[tokio::test]
    async fn messages_without_a_key_wait_alone() {
        let mut waiting = Waiting::default();
        let now = Instant::now();
        waiting.park(delivery(None, 1), 1, now);
        assert!(waiting.hold(delivery(None, 2)).is_some());
        assert!(waiting.take_due(now).is_some());
    }
}

//! The process-wide registry of SQS sources that create their queues, and
//! of their set-ups in progress: what an SNS or SQS sink of the same process
//! consults when it finds its topic or queue missing (an endpoint restarted
//! and lost them), so that the sources' queues and subscriptions are set up
//! again before it publishes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use super::source::SqsSource;
use crate::error::Result;

/// Sources that create their queues, by the topic (SNS) or queue (SQS)
/// they hang on: when a sink of this process finds that topic or queue
/// missing and creates it again, it sets these sources up again before it
/// publishes, so that a restarted endpoint that lost its subscriptions loses
/// no message published after the restart.
static CREATING_SOURCES: Mutex<Vec<(String, Weak<SqsSource>)>> = Mutex::new(Vec::new());

/// Set-ups of sources (queues, subscription) by registry key: how many
/// began and how many ended. A source that sets itself up after finding its
/// queue missing creates the topic before it subscribes; an SNS sink of the
/// process whose publish overlapped a set-up cannot tell whether it landed
/// in between, so it publishes again ([`set_ups`]).
static SET_UPS: Mutex<BTreeMap<String, (u64, u64)>> = Mutex::new(BTreeMap::new());

/// (began, ended) set-ups of the sources registered under `key`.
pub(crate) fn set_ups(key: &str) -> (u64, u64) {
    SET_UPS
        .lock()
        .unwrap()
        .get(key)
        .copied()
        .unwrap_or_default()
}

/// Counts a set-up as begun, and as ended when dropped (also on error).
pub(super) struct SettingUp<'a>(&'a str);

impl<'a> SettingUp<'a> {
    pub(super) fn begin(key: &'a str) -> Self {
        SET_UPS
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_default()
            .0 += 1;
        SettingUp(key)
    }
}

impl Drop for SettingUp<'_> {
    fn drop(&mut self) {
        if let Some(n) = SET_UPS.lock().unwrap().get_mut(self.0) {
            n.1 += 1;
        }
    }
}

/// The registry key of an SNS topic or SQS queue at an endpoint.
pub(crate) fn registry_key(transport: &str, endpoint: Option<&str>, name: &str) -> String {
    format!("{transport}|{}|{name}", endpoint.unwrap_or_default())
}

/// Sets up again (queues, subscription) every live source of this process
/// registered under `key`. Every source is tried; the first failure is
/// returned (and each source's next fetch tries again by itself).
pub(crate) async fn set_up_sources_again(key: &str) -> Result<()> {
    set_up_sources(key, true).await
}

/// Makes sure every live source of this process registered under `key` is
/// set up, waiting for one that is setting itself up right now. A source
/// that found its queue missing creates the topic before it subscribes to
/// it: a message published in between would reach nobody, so an SNS sink
/// publishes only once this returns. Costs a lock per source once they are
/// set up.
pub(crate) async fn sources_set_up(key: &str) -> Result<()> {
    set_up_sources(key, false).await
}

async fn set_up_sources(key: &str, again: bool) -> Result<()> {
    let sources: Vec<Arc<SqsSource>> = {
        let mut all = CREATING_SOURCES.lock().unwrap();
        all.retain(|(_, w)| w.strong_count() > 0);
        all.iter()
            .filter(|(k, _)| k == key)
            .filter_map(|(_, w)| w.upgrade())
            .collect()
    };
    let mut first_error = None;
    for source in sources {
        if again {
            source.forget_queues().await;
        }
        if let Err(e) = source.queues().await {
            tracing::debug!(target: "relaybox::transport::aws::source", queue = %source.queue_name(), error = %e, "relaybox could not set up an SQS queue yet");
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Registers `source` under `key` (see [`registry_key`]); it stays
/// registered while it lives.
pub(super) fn register(key: String, source: &Arc<SqsSource>) {
    CREATING_SOURCES
        .lock()
        .unwrap()
        .push((key, Arc::downgrade(source)));
}

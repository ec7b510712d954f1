//! The SNS and SQS sinks ([`SnsSink`] in `sns`, [`SqsSink`] in `sqs`):
//! relay batches go out 10 messages a call (PublishBatch /
//! SendMessageBatch), and each message's result is reported. This module
//! holds what both share: spreading a batch over concurrent calls in order
//! per key, and reading the per-entry results of a call.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use super::codec::{encode, Encoded};
use super::transport_error;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::transport::cloudevents::CloudEvents;

/// Entries of one PublishBatch / SendMessageBatch call.
pub(super) const BATCH: usize = 10;

/// Calls in flight at once for one batch.
const LANES: usize = 10;

/// Publishes `batch` and returns a result per message. Messages are spread
/// over [`LANES`] lanes by key (keyless ones by position); the lanes send
/// concurrently, each in batch order, up to 10 consecutive messages for the
/// same destination per `send` call, so a key's messages go out in order. A
/// message whose key already failed in this batch is not sent. With `ce` on
/// each message carries its CloudEvents attributes.
pub(super) async fn publish_chunks<F, Fut>(
    transport: &str,
    ce: &CloudEvents,
    batch: &[Message],
    dest_of: impl Fn(&Message) -> String,
    send: F,
) -> Vec<Result<()>>
where
    F: Fn(String, Vec<(usize, Encoded)>) -> Fut,
    Fut: Future<Output = Vec<(usize, Result<()>)>>,
{
    let mut results: Vec<Option<Result<()>>> = (0..batch.len()).map(|_| None).collect();
    let mut lanes: Vec<Vec<usize>> = vec![Vec::new(); LANES];
    for (i, m) in batch.iter().enumerate() {
        let lane = match &m.key {
            Some(k) => crate::partition::routing_hash(Some(k), &m.id) as usize % LANES,
            None => i % LANES,
        };
        lanes[lane].push(i);
    }
    let run_lane = |indices: Vec<usize>| {
        let dest_of = &dest_of;
        let send = &send;
        async move {
            let mut out: Vec<(usize, Result<()>)> = Vec::new();
            let mut failed_keys: HashSet<String> = HashSet::new();
            let mut pos = 0;
            while pos < indices.len() {
                let dest = dest_of(&batch[indices[pos]]);
                let mut items: Vec<(usize, Encoded)> = Vec::new();
                while pos < indices.len() && items.len() < BATCH {
                    let i = indices[pos];
                    let m = &batch[i];
                    if dest_of(m) != dest {
                        break;
                    }
                    pos += 1;
                    if let Some(k) = m.key.as_ref().filter(|k| failed_keys.contains(*k)) {
                        out.push((
                            i,
                            Err(transport_error(
                                transport,
                                format!("not sent: an earlier message with key {k:?} failed"),
                                true,
                                Some(m.id),
                            )),
                        ));
                        continue;
                    }
                    match encode(m, transport, ce) {
                        Ok(e) => items.push((i, e)),
                        Err(e) => {
                            if let Some(k) = &m.key {
                                failed_keys.insert(k.clone());
                            }
                            out.push((i, Err(e)));
                        }
                    }
                }
                if items.is_empty() {
                    continue;
                }
                for (i, r) in send(dest, items).await {
                    if r.is_err() {
                        if let Some(k) = &batch[i].key {
                            failed_keys.insert(k.clone());
                        }
                    }
                    out.push((i, r));
                }
            }
            out
        }
    };
    let lane_results =
        futures::future::join_all(lanes.into_iter().filter(|l| !l.is_empty()).map(run_lane)).await;
    for (i, r) in lane_results.into_iter().flatten() {
        results[i] = Some(r);
    }
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or_else(|| {
                Err(transport_error(
                    transport,
                    "no result reported for the message",
                    true,
                    Some(batch[i].id),
                ))
            })
        })
        .collect()
}

/// Per-entry results of a batch call: `failed` maps entry ids (the batch
/// index) to the error text; entries neither failed nor listed as successful
/// are failures too.
pub(super) fn entry_results(
    transport: &str,
    batch_ids: &[(usize, uuid::Uuid)],
    ok: &HashSet<String>,
    failed: &HashMap<String, (String, bool)>,
) -> Vec<(usize, Result<()>)> {
    batch_ids
        .iter()
        .map(|(idx, id)| {
            let key = idx.to_string();
            let r = if let Some((msg, sender_fault)) = failed.get(&key) {
                Err(transport_error(
                    transport,
                    msg.clone(),
                    !sender_fault,
                    Some(*id),
                ))
            } else if ok.contains(&key) {
                Ok(())
            } else {
                Err(transport_error(
                    transport,
                    "the batch response did not mention the message",
                    true,
                    Some(*id),
                ))
            };
            (*idx, r)
        })
        .collect()
}

/// The same error for every entry of a chunk.
pub(super) fn all_failed(items: &[(usize, uuid::Uuid)], e: &Error) -> Vec<(usize, Result<()>)> {
    items
        .iter()
        .map(|(idx, id)| {
            let err = match e {
                Error::Transport {
                    transport,
                    message,
                    retryable,
                    ..
                } => Error::Transport {
                    transport: transport.clone(),
                    message: message.clone(),
                    retryable: *retryable,
                    message_id: Some(*id),
                },
                other => Error::internal(other.to_string()),
            };
            (*idx, Err(err))
        })
        .collect()
}

mod sns;
mod sqs;

pub use sns::SnsSink;
pub(crate) use sqs::sqs_attribute;
pub use sqs::SqsSink;

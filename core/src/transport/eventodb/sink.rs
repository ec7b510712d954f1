//! [`EventoDbSink`]: writes each message with `stream.write`.

use std::collections::HashSet;

use serde_json::{json, Value as Json};
use uuid::Uuid;

use super::client::{CallError, Client, NAME};
use super::config::EventoDbConfig;
use crate::error::{Error, Result};
use crate::message::Message;
use crate::sink::Sink;
use crate::transport::message_db::mapping::{check_category, outgoing, permanent};

/// Rows read per `stream.get` while looking for a message already stored.
const LOOKUP_PAGE: i64 = 500;

/// Checks that EventoDB can store `message`: a topic usable as a category
/// (no `-` or `+`), a non-empty type, and a payload that is a JSON object
/// (the server refuses any other message, so retrying cannot help).
///
/// The store does not know which transport its relay publishes to, so
/// enqueueing does not run this check; an application or binding that
/// writes for EventoDB calls it before enqueueing to refuse such a message
/// at once. The sink runs it too: a message that fails it is a permanent
/// error, dead-lettered at its first attempt.
pub fn check_message(message: &Message) -> Result<()> {
    check_category(&message.topic)?;
    if message.event_type.trim().is_empty() {
        return Err(Error::InvalidMessage {
            field: "type",
            reason: "EventoDB stores every message with a type; give the message a type \
                     (such as \"OrderPlaced\")"
                .into(),
        });
    }
    match serde_json::from_slice::<Json>(&message.payload) {
        Ok(Json::Object(_)) => Ok(()),
        Ok(other) => Err(Error::InvalidMessage {
            field: "payload",
            reason: format!(
                "EventoDB stores message data as a JSON object, and this payload is a JSON {}",
                json_kind(&other)
            ),
        }),
        Err(e) => Err(Error::InvalidMessage {
            field: "payload",
            reason: format!(
                "EventoDB stores message data as a JSON object, and this payload is not JSON ({e})"
            ),
        }),
    }
}

fn json_kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

/// Whether a `BACKEND_ERROR` says the message id is already stored (the
/// unique index on ids, in the words of PostgreSQL and SQLite).
fn says_duplicate_id(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("duplicate key") || t.contains("unique constraint")
}

/// A [`Sink`] writing to an EventoDB server.
///
/// Each message becomes `["stream.write", "<topic>-<key>", {type, data,
/// metadata}, {id, expectedVersion}]` (the stream mapping and metadata of
/// the Message DB transport); `Ok` means the server answered with its
/// position, or that the stream already holds a message with this id (a
/// relay delivering again what it wrote before a crash: the server refuses
/// the second write, and the sink finds the first one in the stream).
/// A message [`check_message`] refuses, `STREAM_VERSION_CONFLICT` and the
/// server's `INVALID_REQUEST` are permanent errors; an authentication
/// failure is [`Error::InvalidConfig`] of `eventodb.token`; connection
/// failures, timeouts and server errors are retryable.
#[derive(Debug)]
pub struct EventoDbSink {
    config: EventoDbConfig,
    client: Client,
}

impl EventoDbSink {
    /// Writes to the server of `config`.
    pub fn new(config: EventoDbConfig) -> Result<Self> {
        config.validate()?;
        let client = Client::new(&config)?;
        Ok(EventoDbSink { config, client })
    }

    async fn write(&self, m: &Message) -> Result<()> {
        check_message(m).map_err(|e| permanent(NAME, m, e.to_string()))?;
        let out = outgoing(NAME, m, &self.config.expected_version_header)?;
        let mut options = json!({ "id": m.id.to_string() });
        if let Some(v) = out.expected_version {
            options["expectedVersion"] = json!(v);
        }
        let answer = self
            .client
            .try_call(
                "stream.write",
                vec![
                    json!(out.stream_name),
                    json!({"type": out.message_type, "data": out.data, "metadata": out.metadata}),
                    options,
                ],
                Some(m.id),
            )
            .await;
        let result = match answer {
            Ok(result) => result,
            Err(CallError::Server(e))
                if e.code == "STREAM_VERSION_CONFLICT" || e.code == "BACKEND_ERROR" =>
            {
                // Refused, perhaps because this very message is stored already.
                if self
                    .stored(&out.stream_name, m.id, out.expected_version)
                    .await?
                {
                    return Ok(());
                }
                if e.code == "BACKEND_ERROR" && says_duplicate_id(&e.message) {
                    return Err(permanent(
                        NAME,
                        m,
                        format!(
                            "stream.write: the server already stores a message with id {} in \
                             another stream than {}",
                            m.id, out.stream_name
                        ),
                    ));
                }
                return Err(e.into_error("stream.write", Some(m.id)));
            }
            Err(e) => return Err(e.into_error("stream.write", Some(m.id))),
        };
        if result.get("globalPosition").is_none() {
            return Err(Error::Transport {
                transport: NAME.into(),
                message: format!("stream.write: unexpected answer {result}"),
                retryable: true,
                message_id: Some(m.id),
            });
        }
        Ok(())
    }

    /// Whether `stream` holds message `id`. With an expected version `v`
    /// the message can only be at position `v + 1`; otherwise the stream is
    /// read from its end backwards.
    async fn stored(&self, stream: &str, id: Uuid, expected_version: Option<i64>) -> Result<bool> {
        if let Some(v) = expected_version {
            return Ok(self.read_ids(stream, v + 1, 1, id).await?.contains(&id));
        }
        let version = self
            .client
            .call("stream.version", vec![json!(stream)], Some(id))
            .await?;
        let Some(mut last) = version.as_i64() else {
            return Ok(false);
        };
        while last >= 0 {
            let from = (last - LOOKUP_PAGE + 1).max(0);
            if self
                .read_ids(stream, from, LOOKUP_PAGE, id)
                .await?
                .contains(&id)
            {
                return Ok(true);
            }
            last = from - 1;
        }
        Ok(false)
    }

    /// The ids of up to `count` messages of `stream` from `position` on.
    async fn read_ids(
        &self,
        stream: &str,
        position: i64,
        count: i64,
        id: Uuid,
    ) -> Result<HashSet<Uuid>> {
        let rows = self
            .client
            .call(
                "stream.get",
                vec![
                    json!(stream),
                    json!({"position": position, "batchSize": count}),
                ],
                Some(id),
            )
            .await?;
        let Json::Array(rows) = rows else {
            return Err(Error::Transport {
                transport: NAME.into(),
                message: format!("stream.get: unexpected answer {rows}"),
                retryable: true,
                message_id: Some(id),
            });
        };
        Ok(rows
            .iter()
            .filter_map(|row| row.get(0)?.as_str()?.parse().ok())
            .collect())
    }
}

#[async_trait::async_trait]
impl Sink for EventoDbSink {
    fn name(&self) -> &str {
        NAME
    }

    async fn publish(&self, batch: &[Message]) -> Vec<Result<()>> {
        let mut results = Vec::with_capacity(batch.len());
        let mut failed_keys: HashSet<&str> = HashSet::new();
        for m in batch {
            if let Some(k) = m.key.as_deref().filter(|k| failed_keys.contains(k)) {
                results.push(Err(Error::Transport {
                    transport: NAME.into(),
                    message: format!("held behind an earlier failed message of key {k:?}"),
                    retryable: true,
                    message_id: Some(m.id),
                }));
                continue;
            }
            let result = self.write(m).await;
            if result.is_err() {
                if let Some(k) = m.key.as_deref() {
                    failed_keys.insert(k);
                }
            }
            results.push(result);
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_message_names_what_eventodb_refuses() {
        let typed = |payload: &[u8]| Message::new("orders", payload.to_vec()).with_type("Placed");
        assert!(check_message(&typed(br#"{"a": 1}"#)).is_ok());
        let e = check_message(&Message::new("orders", br#"{"a": 1}"#.to_vec())).unwrap_err();
        assert!(
            matches!(e, Error::InvalidMessage { field: "type", .. }),
            "{e}"
        );
        let e = check_message(&typed(b"[1, 2]")).unwrap_err();
        assert!(e.to_string().contains("JSON array"), "{e}");
        let e = check_message(&typed(b"\x01raw")).unwrap_err();
        assert!(e.to_string().contains("not JSON"), "{e}");
        let mut dashed = typed(b"{}");
        dashed.topic = "a-b".into();
        assert!(matches!(
            check_message(&dashed),
            Err(Error::InvalidTopic { .. })
        ));
        assert!(says_duplicate_id(
            "ERROR: duplicate key value violates unique constraint \"messages_id\" (SQLSTATE 23505)"
        ));
        assert!(says_duplicate_id("UNIQUE constraint failed: messages.id"));
        assert!(!says_duplicate_id("connection refused"));
    }
}

//! Conversions between the JSON text the JavaScript layer sends and core
//! types: message specs ([`relaybox::MessageSpec`]), configuration objects,
//! SQL parameters and result values.
//!
//! SQL values cross as tagged pairs `[tag, value]` so that no type is lost
//! in JSON: `["n"]` null, `["b", true]`, `["i", 42]` or `["i", "9007199254740993"]`
//! (an integer beyond 2^53 as text), `["f", 1.5]`, `["s", "text"]`,
//! `["x", "<base64>"]` bytes, `["j", <any JSON>]`, `["u", "<uuid>"]` and
//! `["t", "<RFC 3339>"]` timestamps.

use base64::Engine;
use chrono::{DateTime, Utc};
use relaybox::{Error, Message, MessageSpec, Result, Value};
use serde_json::{json, Value as Json};
use uuid::Uuid;

/// Parses JSON text handed over as `what` (a configuration object).
pub fn parse_config(what: &str, text: &str) -> Result<Json> {
    serde_json::from_str(text).map_err(|e| Error::InvalidConfig {
        field: what.to_string(),
        reason: e.to_string(),
    })
}

/// A message from its spec as JSON text.
pub fn message(spec_json: &str) -> Result<Message> {
    MessageSpec::from_json_str(spec_json)?.into_message()
}

/// Messages from a JSON array of specs.
pub fn messages(specs_json: &str) -> Result<Vec<Message>> {
    MessageSpec::batch_from_json_str(specs_json)?
        .into_iter()
        .map(MessageSpec::into_message)
        .collect()
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidValue {
        reason: reason.into(),
    }
}

/// SQL parameters from a JSON array of tagged values.
pub fn params(params_json: &str) -> Result<Vec<Value>> {
    let items: Vec<Json> = serde_json::from_str(params_json)
        .map_err(|e| invalid(format!("params must be an array: {e}")))?;
    items.iter().map(param).collect()
}

fn param(item: &Json) -> Result<Value> {
    let pair = item
        .as_array()
        .filter(|pair| !pair.is_empty() && pair.len() <= 2)
        .ok_or_else(|| invalid(format!("not a tagged SQL value: {item}")))?;
    let tag = pair[0].as_str().unwrap_or_default();
    let value = pair.get(1).unwrap_or(&Json::Null);
    let wrong = || invalid(format!("SQL value {value} does not fit tag {tag:?}"));
    Ok(match tag {
        "n" => Value::Null,
        "b" => Value::Bool(value.as_bool().ok_or_else(wrong)?),
        "i" => match value {
            Json::String(text) => Value::Int(
                text.parse()
                    .map_err(|_| invalid(format!("integer {text} does not fit in 64 bits")))?,
            ),
            other => Value::Int(other.as_i64().ok_or_else(wrong)?),
        },
        "f" => Value::Float(value.as_f64().ok_or_else(wrong)?),
        "s" => Value::Text(value.as_str().ok_or_else(wrong)?.to_string()),
        "x" => Value::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(value.as_str().ok_or_else(wrong)?)
                .map_err(|e| invalid(format!("bytes are not base64: {e}")))?,
        ),
        "j" => Value::Json(value.clone()),
        "u" => Value::Uuid(
            Uuid::parse_str(value.as_str().ok_or_else(wrong)?)
                .map_err(|e| invalid(format!("not a UUID: {e}")))?,
        ),
        "t" => Value::Timestamp(
            DateTime::parse_from_rfc3339(value.as_str().ok_or_else(wrong)?)
                .map_err(|e| invalid(format!("not an RFC 3339 timestamp: {e}")))?
                .with_timezone(&Utc),
        ),
        other => return Err(invalid(format!("unknown SQL value tag {other:?}"))),
    })
}

/// A value as a tagged pair (the inverse of the parameter form).
pub fn tagged(value: &Value) -> Json {
    const SAFE: i64 = (1 << 53) - 1;
    match value {
        Value::Null => json!(["n"]),
        Value::Bool(b) => json!(["b", b]),
        Value::Int(i) if (-SAFE..=SAFE).contains(i) => json!(["i", i]),
        Value::Int(i) => json!(["i", i.to_string()]),
        Value::Float(f) => json!(["f", f]),
        Value::Text(s) => json!(["s", s]),
        Value::Bytes(b) => json!(["x", base64::engine::general_purpose::STANDARD.encode(b)]),
        Value::Json(j) => json!(["j", j]),
        Value::Uuid(u) => json!(["u", u.to_string()]),
        Value::Timestamp(t) => json!(["t", t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)]),
    }
}

/// Rows as JSON text: an array of rows, each an array of `[column, tagged
/// value]` pairs in select order.
pub fn rows(rows: Vec<relaybox::Row>) -> String {
    let rows: Vec<Json> = rows
        .into_iter()
        .map(|row| {
            let pairs: Vec<Json> = row
                .columns
                .into_iter()
                .zip(row.values.iter().map(tagged))
                .map(|(column, value)| json!([column, value]))
                .collect();
            Json::Array(pairs)
        })
        .collect();
    Json::Array(rows).to_string()
}

/// Any serialisable report (status, dead letters) as JSON text.
pub fn report<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Internal {
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_values_round_trip() {
        let values = vec![
            Value::Null,
            Value::Bool(true),
            Value::Int(42),
            Value::Int(i64::MAX),
            Value::Float(1.5),
            Value::Text("héllo".into()),
            Value::Bytes(vec![0, 1, 255]),
            Value::Json(json!({"a": [1, "b"]})),
            Value::Uuid(Uuid::nil()),
            Value::Timestamp(
                DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z")
                    .unwrap()
                    .with_timezone(&Utc),
            ),
        ];
        let text = Json::Array(values.iter().map(tagged).collect()).to_string();
        assert_eq!(params(&text).unwrap(), values);
        assert_eq!(
            tagged(&Value::Int(i64::MAX)),
            json!(["i", "9223372036854775807"])
        );
    }

    #[test]
    fn bad_parameters_are_invalid_values() {
        for text in [
            "{}",
            r#"[["q", 1]]"#,
            r#"[["i", "12x"]]"#,
            r#"[["i", 1.5]]"#,
            r#"[["x", "***"]]"#,
            r#"[["t", "yesterday"]]"#,
            "[[]]",
        ] {
            assert_eq!(params(text).unwrap_err().code(), "invalid_value", "{text}");
        }
    }

    #[test]
    fn specs_use_the_core_parser() {
        let message = message(r#"{"topic": "t", "payload_base64": "AAE=", "key": "k"}"#).unwrap();
        assert_eq!(message.payload, vec![0, 1]);
        assert_eq!(message.key.as_deref(), Some("k"));
        let err = messages(r#"[{"topic": "t", "payload": 1, "kee": 2}]"#).unwrap_err();
        assert_eq!(err.code(), "invalid_message");
        assert_eq!(
            parse_config("relay config", "{").unwrap_err().code(),
            "invalid_config"
        );
    }
}

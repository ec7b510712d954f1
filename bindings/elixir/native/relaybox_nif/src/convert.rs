//! Conversions between Elixir terms and the core's values: JSON-like terms
//! (maps, lists, strings, numbers, booleans, `nil`), message specs, SQL
//! parameters and result rows, and the message map a handler receives.

use chrono::{DateTime, Datelike, Timelike, Utc};
use relaybox::{Error, Message, MessageSpec, Row, Value};
use rustler::types::tuple::get_tuple;
use rustler::{Atom, Binary, Encoder, Env, MapIterator, OwnedBinary, Term, TermType};

use crate::error::invalid_value;

rustler::atoms! {
    bytes,
    json,
    uuid,
    timestamp,
    __struct__,
}

/// A UTF-8 string as an Elixir binary.
pub fn string<'a>(env: Env<'a>, s: &str) -> Term<'a> {
    s.encode(env)
}

/// Raw bytes as an Elixir binary.
pub fn bytes_term<'a>(env: Env<'a>, data: &[u8]) -> Term<'a> {
    let mut owned = OwnedBinary::new(data.len());
    owned.as_mut_slice().copy_from_slice(data);
    Binary::from_owned(owned, env).to_term(env)
}

fn atom_text(term: Term<'_>) -> Result<String, Error> {
    Atom::from_term(term)
        .and_then(|a| a.to_term(term.get_env()).atom_to_string())
        .map_err(|_| invalid_value("an atom could not be read"))
}

fn binary_text(term: Term<'_>, what: &str) -> Result<String, Error> {
    let bin =
        Binary::from_term(term).map_err(|_| invalid_value(format!("{what}: not a binary")))?;
    std::str::from_utf8(bin.as_slice())
        .map(str::to_owned)
        .map_err(|_| invalid_value(format!("{what}: the binary is not valid UTF-8 text")))
}

/// Converts a JSON-like term: maps (atom, string or integer keys), lists,
/// strings, numbers, booleans and `nil`. Other atoms become strings; tuples,
/// pids and structs are rejected.
pub fn term_to_json(term: Term<'_>) -> Result<serde_json::Value, Error> {
    Ok(match term.get_type() {
        TermType::Atom => match atom_text(term)?.as_str() {
            "nil" => serde_json::Value::Null,
            "true" => serde_json::Value::Bool(true),
            "false" => serde_json::Value::Bool(false),
            other => serde_json::Value::String(other.to_string()),
        },
        TermType::Binary => serde_json::Value::String(binary_text(term, "a JSON string")?),
        TermType::Integer => match term.decode::<i64>() {
            Ok(i) => i.into(),
            Err(_) => term
                .decode::<u64>()
                .map(Into::into)
                .map_err(|_| invalid_value("an integer does not fit 64 bits"))?,
        },
        TermType::Float => {
            let f: f64 = term.decode().map_err(|_| invalid_value("bad float"))?;
            serde_json::Number::from_f64(f)
                .map(serde_json::Value::Number)
                .ok_or_else(|| invalid_value("a float is not finite"))?
        }
        TermType::List => {
            let items = term
                .into_list_iterator()
                .map_err(|_| invalid_value("an improper list cannot become JSON"))?;
            serde_json::Value::Array(items.map(term_to_json).collect::<Result<_, _>>()?)
        }
        TermType::Map => {
            if term.map_get(__struct__()).is_ok() {
                return Err(invalid_value(
                    "a struct cannot become JSON; convert it to a map first",
                ));
            }
            let mut object = serde_json::Map::new();
            for (key, value) in MapIterator::new(term).ok_or_else(|| invalid_value("bad map"))? {
                let key = match key.get_type() {
                    TermType::Atom => atom_text(key)?,
                    TermType::Binary => binary_text(key, "a map key")?,
                    TermType::Integer => key
                        .decode::<i64>()
                        .map(|i| i.to_string())
                        .map_err(|_| invalid_value("an integer key does not fit 64 bits"))?,
                    _ => {
                        return Err(invalid_value(
                            "map keys must be atoms, strings or integers to become JSON",
                        ))
                    }
                };
                object.insert(key, term_to_json(value)?);
            }
            serde_json::Value::Object(object)
        }
        other => {
            return Err(invalid_value(format!(
            "a {other:?} cannot become JSON (use maps, lists, strings, numbers, booleans and nil)"
        )))
        }
    })
}

/// A JSON value as a term: objects become maps with string keys.
pub fn json_to_term<'a>(env: Env<'a>, value: &serde_json::Value) -> Term<'a> {
    match value {
        serde_json::Value::Null => crate::nil().encode(env),
        serde_json::Value::Bool(b) => b.encode(env),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.encode(env)
            } else if let Some(u) = n.as_u64() {
                u.encode(env)
            } else {
                n.as_f64().unwrap_or(0.0).encode(env)
            }
        }
        serde_json::Value::String(s) => s.encode(env),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|v| json_to_term(env, v))
            .collect::<Vec<_>>()
            .encode(env),
        serde_json::Value::Object(map) => {
            let keys: Vec<Term<'a>> = map.keys().map(|k| k.encode(env)).collect();
            let values: Vec<Term<'a>> = map.values().map(|v| json_to_term(env, v)).collect();
            Term::map_from_term_arrays(env, &keys, &values).expect("distinct keys")
        }
    }
}

/// A message from a spec: a map (converted as JSON, same fields as
/// [`MessageSpec`]) or a binary holding the spec as JSON text.
pub fn message_from_spec(term: Term<'_>) -> Result<Message, Error> {
    let spec = if term.get_type() == TermType::Binary {
        MessageSpec::from_json_str(&binary_text(term, "a message spec")?)?
    } else if term.get_type() == TermType::Map {
        MessageSpec::from_json(term_to_json(term).map_err(|e| Error::InvalidMessage {
            field: "spec",
            reason: e.to_string(),
        })?)?
    } else {
        return Err(Error::InvalidMessage {
            field: "spec",
            reason: "a message is a map (or its JSON text)".into(),
        });
    };
    spec.into_message()
}

/// A list of specs.
pub fn messages_from_specs(term: Term<'_>) -> Result<Vec<Message>, Error> {
    let items = term
        .into_list_iterator()
        .map_err(|_| Error::InvalidMessage {
            field: "spec",
            reason: "a batch is a list of messages".into(),
        })?;
    items.map(message_from_spec).collect()
}

/// A JSON-like term given as options (a map) as a JSON value.
pub fn options_json(term: Term<'_>, what: &str) -> Result<serde_json::Value, Error> {
    term_to_json(term).map_err(|e| crate::error::invalid_config(what, e.to_string()))
}

fn timestamp_from_text(text: &str) -> Result<DateTime<Utc>, Error> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| invalid_value(format!("{text:?} is not an RFC 3339 timestamp: {e}")))
}

/// SQL parameters: `nil`, booleans, integers, floats, UTF-8 binaries (text),
/// other binaries (bytes), maps and lists (JSON), and the tagged forms
/// `{:bytes, bin}`, `{:json, term}`, `{:uuid, text}`, `{:timestamp, rfc3339}`.
pub fn params_from_term(term: Term<'_>) -> Result<Vec<Value>, Error> {
    let items = term
        .into_list_iterator()
        .map_err(|_| invalid_value("parameters must be a list"))?;
    items
        .enumerate()
        .map(|(i, t)| {
            param(t).map_err(|e| match e {
                Error::InvalidValue { reason } => {
                    invalid_value(format!("parameter ${}: {reason}", i + 1))
                }
                other => other,
            })
        })
        .collect()
}

fn param(term: Term<'_>) -> Result<Value, Error> {
    Ok(match term.get_type() {
        TermType::Atom => match atom_text(term)?.as_str() {
            "nil" => Value::Null,
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            other => Value::Text(other.to_string()),
        },
        TermType::Integer => Value::Int(
            term.decode()
                .map_err(|_| invalid_value("an integer does not fit 64 bits"))?,
        ),
        TermType::Float => Value::Float(term.decode().map_err(|_| invalid_value("bad float"))?),
        TermType::Binary => {
            let bin = Binary::from_term(term).map_err(|_| invalid_value("bad binary"))?;
            match std::str::from_utf8(bin.as_slice()) {
                Ok(text) => Value::Text(text.to_string()),
                Err(_) => Value::Bytes(bin.as_slice().to_vec()),
            }
        }
        TermType::Map | TermType::List => Value::Json(term_to_json(term)?),
        TermType::Tuple => {
            let parts = get_tuple(term).map_err(|_| invalid_value("bad tuple"))?;
            let [tag, inner] = parts.as_slice() else {
                return Err(invalid_value("tagged parameters are 2-tuples"));
            };
            let tag: Atom = tag
                .decode()
                .map_err(|_| invalid_value("a tagged parameter starts with an atom"))?;
            if tag == bytes() {
                let bin = Binary::from_term(*inner)
                    .map_err(|_| invalid_value("{:bytes, _} takes a binary"))?;
                Value::Bytes(bin.as_slice().to_vec())
            } else if tag == json() {
                Value::Json(term_to_json(*inner)?)
            } else if tag == uuid() {
                let text = binary_text(*inner, "{:uuid, _}")?;
                Value::Uuid(
                    uuid::Uuid::parse_str(&text)
                        .map_err(|e| invalid_value(format!("{text:?} is not a UUID: {e}")))?,
                )
            } else if tag == timestamp() {
                Value::Timestamp(timestamp_from_text(&binary_text(
                    *inner,
                    "{:timestamp, _}",
                )?)?)
            } else {
                return Err(invalid_value(
                    "unknown tag; use :bytes, :json, :uuid or :timestamp",
                ));
            }
        }
        other => {
            return Err(invalid_value(format!(
                "a {other:?} cannot be a SQL parameter"
            )))
        }
    })
}

/// A UTC timestamp as a `%DateTime{}` struct.
pub fn datetime_term<'a>(env: Env<'a>, t: &DateTime<Utc>) -> Term<'a> {
    let atom = |name: &str| Atom::from_str(env, name).expect("atom").encode(env);
    let micros = t.timestamp_subsec_micros();
    let keys = [
        atom("__struct__"),
        atom("calendar"),
        atom("year"),
        atom("month"),
        atom("day"),
        atom("hour"),
        atom("minute"),
        atom("second"),
        atom("microsecond"),
        atom("std_offset"),
        atom("utc_offset"),
        atom("time_zone"),
        atom("zone_abbr"),
    ];
    let values = [
        atom("Elixir.DateTime"),
        atom("Elixir.Calendar.ISO"),
        t.year().encode(env),
        t.month().encode(env),
        t.day().encode(env),
        t.hour().encode(env),
        t.minute().encode(env),
        t.second().min(59).encode(env),
        (micros, 6).encode(env),
        0.encode(env),
        0.encode(env),
        "Etc/UTC".encode(env),
        "UTC".encode(env),
    ];
    Term::map_from_term_arrays(env, &keys, &values).expect("distinct keys")
}

/// A column value as a term.
pub fn value_to_term<'a>(env: Env<'a>, value: &Value) -> Term<'a> {
    match value {
        Value::Null => crate::nil().encode(env),
        Value::Bool(b) => b.encode(env),
        Value::Int(i) => i.encode(env),
        Value::Float(f) => f.encode(env),
        Value::Text(s) => s.encode(env),
        Value::Bytes(b) => bytes_term(env, b),
        Value::Json(j) => json_to_term(env, j),
        Value::Uuid(u) => u.to_string().encode(env),
        Value::Timestamp(t) => datetime_term(env, t),
    }
}

/// Result rows as a list of maps from column name to value.
pub fn rows_to_term<'a>(env: Env<'a>, rows: Vec<Row>) -> Term<'a> {
    rows.iter()
        .map(|row| {
            let keys: Vec<Term<'a>> = row.columns.iter().map(|c| c.encode(env)).collect();
            let values: Vec<Term<'a>> = row.values.iter().map(|v| value_to_term(env, v)).collect();
            Term::map_from_term_arrays(env, &keys, &values)
                .unwrap_or_else(|_| crate::nil().encode(env))
        })
        .collect::<Vec<_>>()
        .encode(env)
}

/// The message a handler receives: the canonical envelope's fields with
/// string keys, the payload as raw bytes, and `"data"`: the decoded payload
/// when it is JSON (else `nil`).
pub fn message_to_term<'a>(env: Env<'a>, m: &Message) -> Term<'a> {
    let nil = crate::nil().encode(env);
    let data = if m.content_type.starts_with("application/json") {
        serde_json::from_slice::<serde_json::Value>(&m.payload)
            .map(|v| json_to_term(env, &v))
            .unwrap_or(nil)
    } else {
        nil
    };
    let header_keys: Vec<Term<'a>> = m.headers.keys().map(|k| k.encode(env)).collect();
    let header_values: Vec<Term<'a>> = m.headers.values().map(|v| v.encode(env)).collect();
    let headers = Term::map_from_term_arrays(env, &header_keys, &header_values)
        .expect("distinct header names");
    let keys = [
        "id",
        "topic",
        "key",
        "type",
        "payload",
        "content_type",
        "headers",
        "created_at",
        "available_at",
        "data",
    ]
    .map(|k| k.encode(env));
    let values = [
        m.id.to_string().encode(env),
        m.topic.encode(env),
        m.key.as_deref().map_or(nil, |k| k.encode(env)),
        m.event_type.encode(env),
        bytes_term(env, &m.payload),
        m.content_type.encode(env),
        headers,
        datetime_term(env, &m.created_at),
        datetime_term(env, &m.available_at),
        data,
    ];
    Term::map_from_term_arrays(env, &keys, &values).expect("distinct keys")
}

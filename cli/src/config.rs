//! Configuration: the TOML file (`database_url`, `[store]`, `[relay]`,
//! `[transport]`, `[[route]]`) and the environment variables that override it.
//!
//! Each table is turned into JSON and handed to [`StoreOptions::from_json`] or
//! [`RelayConfig::from_json`], so the CLI accepts exactly what the language
//! bindings accept and reports the same typed [`relaybox::Error::InvalidConfig`]
//! errors. Before that, every key is checked on its own so that a wrong type
//! or an unknown key is reported with the key's name and where it came from.

use std::path::Path;

use anyhow::Context as _;
use relaybox::transport::RouteConfig;
use relaybox::{Error, RelayConfig, Result, StoreOptions, TransportConfig};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Environment variables that override `[relay]` settings, and the key each one sets.
pub const RELAY_ENV: [(&str, &str); 4] = [
    ("RELAYBOX_RELAY_BATCH_SIZE", "batch_size"),
    ("RELAYBOX_RELAY_POLL_INTERVAL", "poll_interval"),
    ("RELAYBOX_RELAY_LEASE_TTL", "lease_ttl"),
    ("RELAYBOX_RELAY_MAX_ATTEMPTS", "max_attempts"),
];

/// The contents of a configuration file, with its tables as JSON objects.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileConfig {
    /// Where the configuration came from (the file name), for error messages.
    pub origin: String,
    /// `database_url`, used when neither `--database-url` nor RELAYBOX_DATABASE_URL is set.
    pub database_url: Option<String>,
    /// The `[store]` table: [`StoreOptions`] fields.
    pub store: Map<String, Value>,
    /// The `[relay]` table: [`RelayConfig`] fields.
    pub relay: Map<String, Value>,
    /// `transport`: the transport as the bindings take it (`"database"`, or
    /// a table naming one transport: `[transport.kafka]`).
    pub transport: Option<Value>,
    /// The `[[route]]` tables: `topics`, optionally `transport` (default:
    /// the file's `transport`) and `destination`.
    pub routes: Vec<Map<String, Value>>,
}

/// The file as written; unknown top-level keys are an error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    database_url: Option<String>,
    #[serde(default)]
    store: toml::Table,
    #[serde(default)]
    relay: toml::Table,
    transport: Option<toml::Value>,
    #[serde(default)]
    route: Vec<toml::Table>,
}

impl FileConfig {
    /// Reads and parses the TOML file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read configuration file {}", path.display()))?;
        Ok(FileConfig::parse(&text, &path.display().to_string())?)
    }

    /// Parses TOML text; `origin` names it in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<FileConfig> {
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|span| {
                    let (line, column) = line_column(text, span.start);
                    format!("line {line}, column {column}: ")
                })
                .unwrap_or_default();
            invalid(origin, format!("{at}{}", e.message().trim()))
        })?;
        Ok(FileConfig {
            origin: origin.to_string(),
            database_url: raw.database_url.filter(|u| !u.is_empty()),
            store: to_json_object(raw.store, origin, "store")?,
            relay: to_json_object(raw.relay, origin, "relay")?,
            transport: raw
                .transport
                .map(|t| serde_json::to_value(t).map_err(|e| invalid(origin, e.to_string())))
                .transpose()?,
            routes: raw
                .route
                .into_iter()
                .map(|r| to_json_object(r, origin, "[route]"))
                .collect::<Result<_>>()?,
        })
    }
}

/// One configuration value and where it came from.
struct Setting {
    key: String,
    value: Value,
    origin: String,
}

/// Store options from the `[store]` table, with `table_prefix` (from
/// `--table-prefix` / RELAYBOX_TABLE_PREFIX) taking precedence over the file.
pub fn store_options(file: &FileConfig, table_prefix: Option<&str>) -> Result<StoreOptions> {
    let mut settings = file_settings(&file.store, &file.origin, "store");
    if let Some(prefix) = table_prefix {
        set(
            &mut settings,
            "table_prefix",
            Value::String(prefix.to_string()),
            "--table-prefix or RELAYBOX_TABLE_PREFIX",
        );
    }
    build(settings, StoreOptions::from_json)
}

/// Relay settings from the `[relay]` table, overridden by the variables of
/// [`RELAY_ENV`] as looked up by `env` (empty values count as unset).
pub fn relay_config(
    file: &FileConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<RelayConfig> {
    let mut settings = file_settings(&file.relay, &file.origin, "relay");
    for (var, key) in RELAY_ENV {
        if let Some(text) = env(var).filter(|t| !t.trim().is_empty()) {
            set(&mut settings, key, env_value(&text), var);
        }
    }
    build(settings, RelayConfig::from_json)
}

/// The transport the relay publishes to: the `[[route]]` tables when there
/// are any, each without a `transport` of its own taking the default; else
/// the default: the transport `RELAYBOX_TRANSPORT` and its variables name
/// when it is set, else the file's `transport`, else the database transport.
pub fn transport_config(
    file: &FileConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<TransportConfig> {
    let from_env = env("RELAYBOX_TRANSPORT").is_some_and(|t| !t.trim().is_empty());
    let default = || -> Result<TransportConfig> {
        match &file.transport {
            _ if from_env => TransportConfig::from_env(),
            Some(t) => TransportConfig::from_json(t.clone())
                .map_err(|e| from_origin(e, &format!("transport in {}", file.origin))),
            None => Ok(TransportConfig::Database),
        }
    };
    if file.routes.is_empty() {
        return default();
    }
    let mut routes = Vec::with_capacity(file.routes.len());
    for (n, route) in file.routes.iter().enumerate() {
        let at = format!("[[route]] #{} in {}", n + 1, file.origin);
        let raw: RawRoute = serde_json::from_value(Value::Object(route.clone()))
            .map_err(|e| invalid("route", format!("{e} (in {at})")))?;
        let transport = match raw.transport {
            Some(t) => TransportConfig::from_json(t).map_err(|e| from_origin(e, &at))?,
            None => default()?,
        };
        let route = RouteConfig {
            topics: raw.topics,
            transport,
            destination: raw.destination,
        };
        // Each route alone first, so that an error names the route it is in.
        TransportConfig::routes(vec![route.clone()]).map_err(|e| from_origin(e, &at))?;
        routes.push(route);
    }
    TransportConfig::routes(routes)
}

/// A `[[route]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    topics: Vec<String>,
    transport: Option<Value>,
    destination: Option<String>,
}

/// Adds where a setting came from to a configuration error.
fn from_origin(e: Error, origin: &str) -> Error {
    match e {
        Error::InvalidConfig { field, reason } => Error::InvalidConfig {
            field,
            reason: format!("{reason} (in {origin})"),
        },
        other => other,
    }
}

/// An environment variable's text as a JSON value: a number, boolean or
/// quoted string when it parses as one (`500`, `true`, `"x"`), else the text
/// itself as a string (`250ms`, `2s`). So `RELAYBOX_RELAY_POLL_INTERVAL=250`
/// means 250 ms, as `poll_interval = 250` does in the file.
pub fn env_value(text: &str) -> Value {
    let text = text.trim();
    match serde_json::from_str::<Value>(text) {
        Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::String(_))) => v,
        _ => Value::String(text.to_string()),
    }
}

fn file_settings(table: &Map<String, Value>, file: &str, section: &str) -> Vec<Setting> {
    table
        .iter()
        .map(|(key, value)| Setting {
            key: key.clone(),
            value: value.clone(),
            origin: format!("[{section}] in {file}"),
        })
        .collect()
}

fn set(settings: &mut Vec<Setting>, key: &str, value: Value, origin: &str) {
    settings.retain(|s| s.key != key);
    settings.push(Setting {
        key: key.to_string(),
        value,
        origin: origin.to_string(),
    });
}

/// Checks each setting alone (type, unknown key), then builds and validates the whole.
fn build<T: DeserializeOwned>(
    settings: Vec<Setting>,
    from_json: fn(Value) -> Result<T>,
) -> Result<T> {
    let mut object = Map::new();
    for Setting { key, value, origin } in settings {
        let mut single = Map::new();
        single.insert(key.clone(), value.clone());
        if let Err(e) = serde_json::from_value::<T>(Value::Object(single)) {
            return Err(invalid(&key, format!("{e} (from {origin})")));
        }
        object.insert(key, value);
    }
    from_json(Value::Object(object))
}

fn to_json_object(table: toml::Table, origin: &str, section: &str) -> Result<Map<String, Value>> {
    match serde_json::to_value(table) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid(origin, format!("[{section}] must be a table"))),
        Err(e) => Err(invalid(origin, format!("[{section}]: {e}"))),
    }
}

fn invalid(field: &str, reason: String) -> Error {
    Error::InvalidConfig {
        field: field.to_string(),
        reason,
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    fn field_of(err: &Error) -> &str {
        match err {
            Error::InvalidConfig { field, .. } => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    const FULL: &str = r#"
database_url = "sqlite://relaybox.db"

[store]
table_prefix = "app_"
partitions = 8
connect_timeout = "2s"

[relay]
batch_size = 100
poll_interval = "250ms"
lease_ttl = 5000
max_attempts = 3
instance_id = "relay-1"
"#;

    #[test]
    fn parses_a_full_file() {
        let file = FileConfig::parse(FULL, "relaybox.toml").unwrap();
        assert_eq!(file.database_url.as_deref(), Some("sqlite://relaybox.db"));

        let store = store_options(&file, None).unwrap();
        assert_eq!(store.table_prefix, "app_");
        assert_eq!(store.partitions, 8);
        assert_eq!(store.connect_timeout, Duration::from_secs(2));

        let relay = relay_config(&file, no_env).unwrap();
        assert_eq!(relay.batch_size, 100);
        assert_eq!(relay.poll_interval, Duration::from_millis(250));
        assert_eq!(relay.lease_ttl, Duration::from_secs(5));
        assert_eq!(relay.max_attempts, 3);
        assert_eq!(relay.instance_id.as_deref(), Some("relay-1"));
    }

    #[test]
    fn empty_file_gives_defaults() {
        let file = FileConfig::parse("", "empty.toml").unwrap();
        assert_eq!(file.database_url, None);
        assert_eq!(store_options(&file, None).unwrap(), StoreOptions::default());
        let relay = relay_config(&file, no_env).unwrap();
        assert_eq!(relay.batch_size, RelayConfig::default().batch_size);
        assert_eq!(relay.poll_interval, RelayConfig::default().poll_interval);
    }

    #[test]
    fn environment_overrides_the_file() {
        let file = FileConfig::parse(FULL, "relaybox.toml").unwrap();
        let env = env_of(&[
            ("RELAYBOX_RELAY_BATCH_SIZE", "42"),
            ("RELAYBOX_RELAY_POLL_INTERVAL", "2s"),
            ("RELAYBOX_RELAY_LEASE_TTL", "1500"),
            ("RELAYBOX_RELAY_MAX_ATTEMPTS", " 7 "),
        ]);
        let relay = relay_config(&file, env).unwrap();
        assert_eq!(relay.batch_size, 42);
        assert_eq!(relay.poll_interval, Duration::from_secs(2));
        assert_eq!(relay.lease_ttl, Duration::from_millis(1500));
        assert_eq!(relay.max_attempts, 7);
        // Untouched keys keep the file's value.
        assert_eq!(relay.instance_id.as_deref(), Some("relay-1"));
    }

    #[test]
    fn empty_environment_values_are_ignored() {
        let file = FileConfig::parse(FULL, "relaybox.toml").unwrap();
        let relay = relay_config(&file, env_of(&[("RELAYBOX_RELAY_BATCH_SIZE", "")])).unwrap();
        assert_eq!(relay.batch_size, 100);
    }

    #[test]
    fn table_prefix_option_overrides_the_file() {
        let file = FileConfig::parse(FULL, "relaybox.toml").unwrap();
        let store = store_options(&file, Some("other_")).unwrap();
        assert_eq!(store.table_prefix, "other_");
        assert_eq!(store.partitions, 8);
    }

    #[test]
    fn out_of_range_values_give_the_validation_error() {
        let file = FileConfig::parse("[relay]\nbatch_size = 0\n", "bad.toml").unwrap();
        let err = relay_config(&file, no_env).unwrap_err();
        assert_eq!(err.code(), "invalid_config");
        assert_eq!(field_of(&err), "batch_size");
        assert_eq!(
            err.to_string(),
            "invalid configuration `batch_size`: must be between 1 and 10000"
        );

        let err = relay_config(
            &FileConfig::default(),
            env_of(&[("RELAYBOX_RELAY_MAX_ATTEMPTS", "0")]),
        )
        .unwrap_err();
        assert_eq!(field_of(&err), "max_attempts");

        let file = FileConfig::parse("[store]\npartitions = 0\n", "bad.toml").unwrap();
        assert_eq!(
            field_of(&store_options(&file, None).unwrap_err()),
            "partitions"
        );
        let err = store_options(&FileConfig::default(), Some("Bad-Prefix")).unwrap_err();
        assert_eq!(field_of(&err), "table_prefix");
    }

    #[test]
    fn wrong_types_name_the_key_and_its_origin() {
        let err = relay_config(
            &FileConfig::default(),
            env_of(&[("RELAYBOX_RELAY_BATCH_SIZE", "lots")]),
        )
        .unwrap_err();
        assert_eq!(field_of(&err), "batch_size");
        assert!(
            err.to_string().contains("RELAYBOX_RELAY_BATCH_SIZE"),
            "{err}"
        );

        let err = relay_config(
            &FileConfig::default(),
            env_of(&[("RELAYBOX_RELAY_POLL_INTERVAL", "soon")]),
        )
        .unwrap_err();
        assert_eq!(field_of(&err), "poll_interval");
        assert!(err.to_string().contains("invalid duration"), "{err}");

        let file = FileConfig::parse("[relay]\nlease_ttl = true\n", "bad.toml").unwrap();
        let err = relay_config(&file, no_env).unwrap_err();
        assert_eq!(field_of(&err), "lease_ttl");
        assert!(err.to_string().contains("[relay] in bad.toml"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let file = FileConfig::parse("[relay]\nbatch = 5\n", "bad.toml").unwrap();
        let err = relay_config(&file, no_env).unwrap_err();
        assert_eq!(field_of(&err), "batch");
        assert!(err.to_string().contains("unknown field"), "{err}");

        let file = FileConfig::parse("[store]\nprefix = \"x_\"\n", "bad.toml").unwrap();
        assert_eq!(field_of(&store_options(&file, None).unwrap_err()), "prefix");

        let err = FileConfig::parse("[relays]\nbatch_size = 5\n", "bad.toml").unwrap_err();
        assert_eq!(field_of(&err), "bad.toml");
        assert!(err.to_string().contains("relays"), "{err}");
    }

    #[test]
    fn syntax_errors_give_line_and_column_on_one_line() {
        let err = FileConfig::parse("[relay]\nbatch_size = = 1\n", "bad.toml").unwrap_err();
        assert_eq!(err.code(), "invalid_config");
        let text = err.to_string();
        assert!(text.contains("line 2"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn environment_text_becomes_json() {
        assert_eq!(env_value("500"), Value::from(500));
        assert_eq!(env_value("1.5"), Value::from(1.5));
        assert_eq!(env_value("true"), Value::Bool(true));
        assert_eq!(env_value("250ms"), Value::from("250ms"));
        assert_eq!(env_value("\"2s\""), Value::from("2s"));
        assert_eq!(env_value("null"), Value::from("null"));
    }

    /// The first ```toml block of a Markdown text.
    fn toml_block(markdown: &str) -> &str {
        let start = markdown.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let len = markdown[start..].find("```").expect("its end");
        &markdown[start..start + len]
    }

    #[test]
    fn the_operations_guide_file_is_valid() {
        let text = toml_block(include_str!("../../docs/operations.md"));
        let file = FileConfig::parse(text, "docs/operations.md").unwrap();
        store_options(&file, None).unwrap();
        let relay = relay_config(&file, no_env).unwrap();
        assert_eq!(relay.instance_id.as_deref(), Some("relay-orders-1"));
        match transport_config(&file, no_env).unwrap() {
            TransportConfig::Routes(routes) => {
                let names: Vec<&str> = routes.iter().map(|r| r.transport.name()).collect();
                assert_eq!(names, ["kafka", "rabbitmq", "sns"]);
                assert_eq!(routes[0].destination.as_deref(), Some("prod.{topic}"));
            }
            other => panic!("expected routes, got {other:?}"),
        }
    }

    #[test]
    fn routes_take_the_file_transport_or_their_own() {
        let file = FileConfig::parse(
            "transport = \"database\"\n[[route]]\ntopics = [\"a.*\"]\n\
             [[route]]\ntopics = [\"b\"]\ntransport = { redis = { url = \"redis://r:6379\" } }\n",
            "routes.toml",
        )
        .unwrap();
        match transport_config(&file, no_env).unwrap() {
            TransportConfig::Routes(routes) => {
                assert_eq!(routes[0].transport.name(), "database");
                assert_eq!(routes[1].transport.name(), "redis");
            }
            other => panic!("expected routes, got {other:?}"),
        }
        // Without routes: the file's transport, else the database.
        let plain =
            FileConfig::parse("[transport.redis]\nurl = \"redis://r\"\n", "t.toml").unwrap();
        assert_eq!(transport_config(&plain, no_env).unwrap().name(), "redis");
        let none = FileConfig::default();
        assert_eq!(transport_config(&none, no_env).unwrap().name(), "database");
    }

    #[test]
    fn bad_routes_name_the_route() {
        for (text, field) in [
            ("[[route]]\ntopics = [\"a b\"]\n", "topics"),
            ("[[route]]\ntransport = \"database\"\n", "route"),
            ("[[route]]\ntopics = [\"a\"]\nnope = 1\n", "route"),
            ("[[route]]\ntopics = [\"a\"]\ndestination = \"a/b\"\n", "destination"),
            ("[[route]]\ntopics = [\"a\"]\n[[route]]\ntopics = [\"b\"]\ntransport = { carrier = {} }\n", "transport"),
        ] {
            let file = FileConfig::parse(text, "bad.toml").unwrap();
            let err = transport_config(&file, no_env).unwrap_err();
            assert_eq!(field_of(&err), field, "{text}: {err}");
            assert!(err.to_string().contains("[[route]] #"), "{text}: {err}");
        }
    }

    #[test]
    fn line_and_column() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}

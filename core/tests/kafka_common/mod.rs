//! Helpers of the Kafka integration tests (`kafka.rs`, `kafka_outage.rs`,
//! `kafka_conformance.rs`):
//! the real PostgreSQL and Kafka broker from the environment (the tests fail
//! loudly when either is missing), unique names, and kcat as the
//! third-party reader of what relaybox wrote to Kafka. The database of each
//! test is `common::TestDb` on PostgreSQL.
#![allow(dead_code, unused_imports)]

pub use crate::common::{
    drop_prefixed_tables, init_tracing, pg_url, wait_for, wait_pending, wait_until_drained,
    Backend, TestDb,
};

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use relaybox::sqlx::{self, AssertSqlSafe};
use relaybox::transport::kafka::KafkaConfig;
use relaybox::{Store, StoreOptions};
use uuid::Uuid;

/// PostgreSQL test database URL.
/// Kafka bootstrap servers.
pub const KAFKA_ENV: &str = "RELAYBOX_KAFKA_BOOTSTRAP";
/// The third-party reader.
pub const KCAT: &str = "kcat";

const START_HINT: &str = "start them with `dev/services start postgres kafka && \
     eval \"$(dev/services env)\"`";

/// The Kafka bootstrap servers; fails the test when the variable is not set
/// or no broker answers there.
pub fn bootstrap() -> String {
    let servers = match std::env::var(KAFKA_ENV) {
        Ok(s) if !s.trim().is_empty() => s,
        _ => panic!(
            "{KAFKA_ENV} is not set: the Kafka integration tests run against a real Apache \
             Kafka broker and are never skipped; {START_HINT}"
        ),
    };
    let out = run(
        &["-b", &servers, "-L", "-J", "-m", "10"],
        Duration::from_secs(30),
    );
    assert!(
        out.ok && out.stdout.windows(9).any(|w| w == b"\"brokers\""),
        "no Kafka broker answers at {KAFKA_ENV}={servers} ({}); {START_HINT}",
        out.describe()
    );
    servers
}

/// Ten random hex digits.
pub fn suffix() -> String {
    let r: u64 = rand::random();
    format!("{:010x}", r & 0xff_ffff_ffff)
}

/// A topic name no other test uses: `t-<name>-<random>`.
pub fn topic(name: &str) -> String {
    format!("t-{name}-{}", suffix())
}

/// A consumer group no other test uses.
pub fn group(name: &str) -> String {
    format!("g-{name}-{}", suffix())
}

/// Settings for the test broker that create missing topics (3 partitions).
pub fn kafka_config(bootstrap: &str) -> KafkaConfig {
    KafkaConfig {
        create_topics: true,
        ..KafkaConfig::new(bootstrap)
    }
}

// ---- kcat, the third-party reader ------------------------------------------

/// What a command printed and how it ended.
pub struct Output {
    pub ok: bool,
    pub status: String,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    pub fn describe(&self) -> String {
        format!(
            "{}, stderr: {}",
            self.status,
            self.stderr.trim().chars().take(2000).collect::<String>()
        )
    }
}

/// Runs kcat with `args`, killing it after `timeout`.
pub fn run(args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(KCAT)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {KCAT} (apt-get install kcat): {e}"));
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for kcat") {
            break status.to_string();
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break format!("killed after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let ok = status == "exit status: 0";
    Output {
        ok,
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

/// One record as kcat's JSON envelope (`-J`) shows it.
#[derive(Clone, Debug)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    /// Timestamp in milliseconds.
    pub ts: i64,
    pub key: Option<String>,
    /// The payload as kcat printed it (invalid UTF-8 replaced by U+FFFD).
    pub payload: Option<String>,
    /// Headers in record order.
    pub headers: Vec<(String, String)>,
}

impl Record {
    /// The value of the only header called `name`; fails when there are several.
    pub fn header(&self, name: &str) -> Option<&str> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect();
        assert!(
            values.len() <= 1,
            "header {name} appears {} times in {self:?}",
            values.len()
        );
        values.first().copied()
    }

    /// The relaybox message id (`relaybox-id` header).
    pub fn id(&self) -> Uuid {
        let v = self
            .header("relaybox-id")
            .unwrap_or_else(|| panic!("record without relaybox-id header: {self:?}"));
        Uuid::parse_str(v).unwrap_or_else(|e| panic!("relaybox-id {v:?} is not a UUID: {e}"))
    }
}

/// Every record of `topic` (all partitions, from the beginning), read by
/// kcat's JSON output (`kcat -C -t <topic> -o beginning -e -J`), sorted by
/// partition and offset.
pub fn kcat_records(bootstrap: &str, topic: &str) -> Vec<Record> {
    let out = run(
        &[
            "-b",
            bootstrap,
            "-C",
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-J",
            "-m",
            "15",
        ],
        Duration::from_secs(60),
    );
    assert!(
        out.ok,
        "kcat could not read topic {topic}: {}",
        out.describe()
    );
    let mut records = Vec::new();
    for line in out.stdout.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        // kcat writes payload bytes that are not UTF-8 into the JSON string
        // as they are, which makes the line invalid JSON text: read it lossily.
        let text = String::from_utf8_lossy(line);
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("kcat printed a line that is not JSON ({e}): {text}"));
        let headers = match &v["headers"] {
            serde_json::Value::Null => Vec::new(),
            serde_json::Value::Array(items) => {
                assert!(items.len() % 2 == 0, "odd header array: {v}");
                items
                    .chunks(2)
                    .map(|kv| {
                        (
                            kv[0].as_str().expect("header name").to_string(),
                            kv[1].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            }
            other => panic!("unexpected kcat headers {other}"),
        };
        records.push(Record {
            partition: v["partition"].as_i64().expect("partition") as i32,
            offset: v["offset"].as_i64().expect("offset"),
            ts: v["ts"].as_i64().unwrap_or(-1),
            key: v["key"].as_str().map(str::to_string),
            payload: v["payload"].as_str().map(str::to_string),
            headers,
        });
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// Exact key and payload bytes of one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// Every record of `topic` with exact key and payload bytes, read by kcat
/// with a length-prefixed format (`-f '%p %o %K %S\n%k%s\n'`), keyed by
/// (partition, offset).
pub fn kcat_raw(bootstrap: &str, topic: &str) -> HashMap<(i32, i64), RawRecord> {
    let out = run(
        &[
            "-b",
            bootstrap,
            "-C",
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-m",
            "15",
            "-f",
            "%p %o %K %S\n%k%s\n",
        ],
        Duration::from_secs(60),
    );
    assert!(
        out.ok,
        "kcat could not read topic {topic}: {}",
        out.describe()
    );
    let data = out.stdout;
    let mut at = 0;
    let mut records = HashMap::new();
    while at < data.len() {
        let eol = at
            + data[at..]
                .iter()
                .position(|b| *b == b'\n')
                .expect("kcat record header line");
        let head = std::str::from_utf8(&data[at..eol]).expect("kcat header line is text");
        let fields: Vec<i64> = head
            .split(' ')
            .map(|f| {
                f.parse()
                    .unwrap_or_else(|_| panic!("bad kcat line {head:?}"))
            })
            .collect();
        let [partition, offset, key_len, payload_len] = fields[..] else {
            panic!("bad kcat line {head:?}")
        };
        at = eol + 1;
        let mut take = |len: i64| {
            if len < 0 {
                return None;
            }
            let bytes = data[at..at + len as usize].to_vec();
            at += len as usize;
            Some(bytes)
        };
        let key = take(key_len);
        let payload = take(payload_len);
        assert_eq!(data[at], b'\n', "kcat record not terminated after {head:?}");
        at += 1;
        records.insert(
            (partition as i32, offset),
            RawRecord {
                partition: partition as i32,
                offset,
                key,
                payload,
            },
        );
    }
    records
}

/// Topics on the broker with their partition counts (`kcat -L -J`, which
/// asks for all topics and so never auto-creates one).
pub fn kcat_topics(bootstrap: &str) -> HashMap<String, usize> {
    let out = run(
        &["-b", bootstrap, "-L", "-J", "-m", "15"],
        Duration::from_secs(30),
    );
    assert!(out.ok, "kcat -L failed: {}", out.describe());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("kcat -L -J output");
    v["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .map(|t| {
            (
                t["topic"].as_str().expect("topic").to_string(),
                t["partitions"].as_array().map_or(0, Vec::len),
            )
        })
        .collect()
}

/// [`kcat_records`] off the async runtime's worker threads.
pub async fn read_records(bootstrap: &str, topic: &str) -> Vec<Record> {
    let (b, t) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || kcat_records(&b, &t))
        .await
        .expect("kcat task")
}

/// [`kcat_raw`] off the async runtime's worker threads.
pub async fn read_raw(bootstrap: &str, topic: &str) -> HashMap<(i32, i64), RawRecord> {
    let (b, t) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || kcat_raw(&b, &t))
        .await
        .expect("kcat task")
}

/// [`kcat_topics`] off the async runtime's worker threads.
pub async fn topics(bootstrap: &str) -> HashMap<String, usize> {
    let b = bootstrap.to_string();
    tokio::task::spawn_blocking(move || kcat_topics(&b))
        .await
        .expect("kcat task")
}

/// Deletes test topics (best effort, for tidiness on success).
pub async fn delete_topics(bootstrap: &str, names: &[&str]) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::ClientConfig;
    let Ok(admin) = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    if let Err(e) = admin.delete_topics(names, &options).await {
        eprintln!("deleting topics {names:?} failed (ignored): {e}");
    }
}

/// Per key, the relaybox ids of the records in offset order, after checking
/// that each key lives in one partition.
pub fn ids_per_key(records: &[Record]) -> HashMap<String, Vec<Uuid>> {
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    let mut out: HashMap<String, Vec<Uuid>> = HashMap::new();
    // `records` is sorted by (partition, offset).
    for r in records {
        let key = r
            .key
            .clone()
            .unwrap_or_else(|| panic!("record without key: {r:?}"));
        let p = *partition_of.entry(key.clone()).or_insert(r.partition);
        assert_eq!(
            p, r.partition,
            "records of key {key:?} are in partitions {p} and {}",
            r.partition
        );
        out.entry(key).or_default().push(r.id());
    }
    out
}

/// Asserts that, per key, the first occurrences of the ids in Kafka come in
/// `expected` order and that no id is missing (duplicates are allowed only
/// as redeliveries, which at-least-once permits); returns the duplicate count.
pub fn assert_order_per_key(
    in_kafka: &HashMap<String, Vec<Uuid>>,
    expected: &HashMap<String, Vec<Uuid>>,
) -> usize {
    let mut duplicates = 0;
    for (key, want) in expected {
        let got = in_kafka.get(key).cloned().unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<Uuid> = got.iter().copied().filter(|id| seen.insert(*id)).collect();
        duplicates += got.len() - firsts.len();
        let missing: Vec<&Uuid> = want.iter().filter(|id| !seen.contains(id)).collect();
        assert!(
            missing.is_empty(),
            "key {key:?}: {} of {} messages missing in Kafka, e.g. {:?}",
            missing.len(),
            want.len(),
            &missing[..missing.len().min(3)]
        );
        if firsts != *want {
            let at = firsts
                .iter()
                .zip(want)
                .position(|(a, b)| a != b)
                .unwrap_or(want.len().min(firsts.len()));
            panic!(
                "key {key:?}: order in Kafka differs from enqueue order at index {at}: \
                 Kafka has {:?}, enqueued {:?} ({} in Kafka, {} enqueued)",
                firsts.get(at),
                want.get(at),
                firsts.len(),
                want.len()
            );
        }
    }
    let unexpected: Vec<&String> = in_kafka
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    assert!(
        unexpected.is_empty(),
        "records of unexpected keys {unexpected:?}"
    );
    duplicates
}

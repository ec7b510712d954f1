//! The Python programs section 8 runs (bench/*.py): the third-party reader
//! that checks a topic, and the hand-tuned relay.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::context::{Bench, DRAIN_TIMEOUT};
use crate::cpu::MachineCpu;
use crate::kafka::client::{extra_producer_properties, kafka_message, Broker};
use crate::kafka::drains::Measured;
use crate::kafka::{KAFKA_KEYS, PARTITIONS};
use crate::report::thousands;

/// The repository's root (this program's crate is `<root>/bench`).
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The Python of the repository's virtualenv, which has confluent-kafka
/// and psycopg (bindings/python/requirements-dev.txt).
pub(crate) fn python() -> Result<PathBuf> {
    let python = repo_root().join(".venv/bin/python");
    ensure!(
        python.exists(),
        "{} is missing: run this section with `dev/bench kafka`, which creates the \
         virtualenv and installs bindings/python/requirements-dev.txt",
        python.display()
    );
    Ok(python)
}

pub(crate) fn bench_script(name: &str) -> PathBuf {
    repo_root().join("bench").join(name)
}

/// What the third-party reader found in a topic.
pub(crate) struct Reading {
    pub(crate) ok: bool,
    pub(crate) duplicates: u64,
    pub(crate) summary: String,
}

/// Reads the whole of `topic` with a confluent-kafka consumer
/// (bench/check_topic.py) and checks it holds exactly the messages
/// 0..n-1, none twice (unless `allow_duplicates`), in enqueue order per key.
pub(crate) async fn read_topic(
    broker: &Broker,
    topic: &str,
    n: usize,
    allow_duplicates: bool,
) -> Result<Reading> {
    let mut cmd = tokio::process::Command::new(python()?);
    cmd.arg(bench_script("check_topic.py"))
        .args(["--bootstrap", broker.bootstrap.as_str(), "--topic", topic])
        .args(["--expected", n.to_string().as_str()])
        .args(["--keys", KAFKA_KEYS.to_string().as_str()])
        .kill_on_drop(true);
    if allow_duplicates {
        cmd.arg("--allow-duplicates");
    }
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .with_context(|| format!("the reader of {topic} took over 300 s"))??;
    ensure!(
        out.status.success(),
        "the reader of {topic} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line)
        .with_context(|| format!("the reader of {topic} printed {stdout:?}"))?;
    let get = |k: &str| v[k].as_u64().unwrap_or(u64::MAX);
    let ok = v["ok"].as_bool() == Some(true);
    let mut summary = format!(
        "{} records, {} distinct ids of {}, {} missing, {} twice, {} out of order per key ({} keys)",
        thousands(get("records")),
        thousands(get("distinct")),
        thousands(n as u64),
        get("missing"),
        get("duplicates"),
        get("order_violations"),
        get("keys"),
    );
    for (field, what) in [
        ("unknown", "unknown ids"),
        ("key_errors", "wrong keys"),
        ("header_errors", "without relaybox headers"),
        ("split_keys", "keys in two partitions"),
    ] {
        if get(field) != 0 {
            let _ = write!(summary, ", {} {what}", get(field));
        }
    }
    summary.push_str(if ok { ": OK" } else { ": FAILED" });
    Ok(Reading {
        ok,
        duplicates: get("duplicates"),
        summary,
    })
}

/// The reader's check of a topic that must hold each message exactly once.
pub(crate) async fn check_exactly(broker: &Broker, topic: &str, n: usize) -> Result<String> {
    let reading = read_topic(broker, topic, n, false).await?;
    ensure!(reading.ok, "topic {topic}: {}", reading.summary);
    Ok(reading.summary)
}

/// The hand-tuned relay (bench/handtuned_relay.py) on a pre-filled
/// backlog of `n` messages for `topic`, clocked from spawn to exit.
/// Returns the run and the program's own clock.
pub(crate) async fn hand_tuned(
    b: &Bench,
    broker: &Broker,
    topic: &str,
    n: usize,
) -> Result<(Measured, Duration)> {
    b.backlog_in_order(n, topic, kafka_message).await?;
    broker.create_topic(topic, PARTITIONS).await?;
    broker.wait_ready(topic, PARTITIONS).await?;
    let cpu = MachineCpu::start();
    let started = Instant::now();
    let child = spawn_hand_tuned(b, broker, None)?;
    let exit = finish_hand_tuned(child).await?;
    let elapsed = started.elapsed();
    let busy = cpu.stop();
    check_hand_tuned_drain(b, broker, topic, n, exit.delivered).await?;
    Ok((Measured { n, elapsed, busy }, exit.own))
}

/// Starts the hand-tuned relay on this run's outbox table; with
/// `stop_file`, it finishes at the first empty batch once that file exists.
pub(crate) fn spawn_hand_tuned(
    b: &Bench,
    broker: &Broker,
    stop_file: Option<&Path>,
) -> Result<tokio::process::Child> {
    let url = std::env::var("RELAYBOX_DATABASE_URL")?;
    let mut cmd = tokio::process::Command::new(python()?);
    cmd.arg(bench_script("handtuned_relay.py"))
        .args(["--dsn", url.as_str(), "--table", b.table("outbox").as_str()])
        .args(["--bootstrap", broker.bootstrap.as_str()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in extra_producer_properties() {
        cmd.arg("--prop").arg(format!("{k}={v}"));
    }
    if let Some(file) = stop_file {
        cmd.arg("--stop-file").arg(file);
    }
    cmd.spawn().context("starting the hand-tuned relay")
}

/// What the hand-tuned relay reported when it exited.
pub(crate) struct HandTunedExit {
    /// Rows it delivered.
    pub(crate) delivered: u64,
    /// Its own clock: first statement to last commit.
    pub(crate) own: Duration,
}

/// Waits (at most `DRAIN_TIMEOUT`) for the hand-tuned relay to exit and
/// reads its report; fails if it failed.
pub(crate) async fn finish_hand_tuned(child: tokio::process::Child) -> Result<HandTunedExit> {
    let out = tokio::time::timeout(DRAIN_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("the hand-tuned relay took over {DRAIN_TIMEOUT:?}"))??;
    ensure!(
        out.status.success(),
        "the hand-tuned relay failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .with_context(|| format!("the hand-tuned relay printed {stdout:?}"))?;
    Ok(HandTunedExit {
        delivered: v["delivered"].as_u64().unwrap_or(0),
        own: Duration::from_secs_f64(v["elapsed_s"].as_f64().unwrap_or(0.0)),
    })
}

/// Checks a finished hand-tuned drain of `n` messages: it reported `n`
/// delivered, nothing is pending, and `topic` holds `n` records.
pub(crate) async fn check_hand_tuned_drain(
    b: &Bench,
    broker: &Broker,
    topic: &str,
    n: usize,
    delivered: u64,
) -> Result<()> {
    ensure!(
        delivered == n as u64,
        "the hand-tuned relay delivered {delivered} of {n}"
    );
    let pending = b.store.pending_count().await?;
    ensure!(
        pending == 0,
        "{pending} messages pending after the hand-tuned relay"
    );
    let records = broker.records(topic, PARTITIONS).await?;
    ensure!(
        records == n as i64,
        "topic {topic} holds {records} records, expected {n}"
    );
    Ok(())
}

//! Section 8's takeover: two relay processes (this program re-executed
//! with the hidden first argument `__relay-process`), one killed mid-drain.

use std::fmt::Write as _;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use relaybox::transport::kafka::KafkaSink;
use relaybox::{Relay, RelayConfig, Store, StoreOptions};
use sqlx::AssertSqlSafe;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::context::{Bench, DRAIN_TIMEOUT};
use crate::kafka::client::{kafka_config, kafka_message, Broker};
use crate::kafka::programs::read_topic;
use crate::kafka::{new_topic, BOOTSTRAP_ENV, PARTITIONS, TAKEOVER_TARGET};
use crate::report::{thousands, verdict};

/// The hidden first argument that makes this program a relay process of the
/// takeover measurement (see [`relay_child`]).
pub(crate) const RELAY_CHILD: &str = "__relay-process";

/// Two relay processes (this program re-executed, `relay_child`) drain
/// a backlog into Kafka, half the partitions each; relay A is killed
/// with SIGKILL mid-drain. Prints the time from the kill until relay B
/// holds A's leases, and until one of A's partitions is delivered again
/// (the oldest pending row of one of them delivered and gone from the
/// outbox), then the reader's check (at-least-once: a killed relay's
/// unfinished batches may be produced twice).
pub(crate) async fn takeover(b: &mut Bench, broker: &Broker) -> Result<()> {
    let n = b.sizes.takeover_backlog;
    let topic = new_topic(b, "takeover");
    println!(
        "\n  Takeover: 2 relay processes (this program re-executed: Relay::start, RelayConfig::default(),"
    );
    println!(
        "  KafkaSink) drain a {}-message backlog, half the partitions each (lease rows written up front);",
        thousands(n as u64)
    );
    println!("  relay A is SIGKILLed once both hold partitions and 10% is delivered:");
    b.backlog_in_order(n, &topic, kafka_message).await?;
    broker.create_topic(&topic, PARTITIONS).await?;
    broker.wait_ready(&topic, PARTITIONS).await?;
    let owners = [
        format!("{}takeover-a", b.prefix),
        format!("{}takeover-b", b.prefix),
    ];
    let (leases, instances, outbox) = (
        b.table("leases"),
        b.table("relay_instances"),
        b.table("outbox"),
    );
    let mut seed = String::new();
    for (r, owner) in owners.iter().enumerate() {
        let _ = write!(
            seed,
            "INSERT INTO {instances} (owner, started_at, heartbeat_at, expires_at) \
             VALUES ('{owner}', now(), now(), now() + interval '15 seconds'); \
             UPDATE {leases} SET owner = '{owner}', epoch = epoch + 1, \
             expires_at = now() + interval '15 seconds' WHERE partition % 2 = {r}; "
        );
    }
    b.exec(seed).await?;
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for owner in &owners {
        let mut child = tokio::process::Command::new(&exe)
            .arg(RELAY_CHILD)
            .arg(&b.prefix)
            .arg(owner)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a relay process")?;
        let stdout = child.stdout.take().expect("piped stdout");
        children.push((child, BufReader::new(stdout).lines()));
    }
    for (_, lines) in &mut children {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("a relay process did not start within 30 s")??;
        ensure!(
            line.as_deref() == Some("ready"),
            "a relay process printed {line:?}"
        );
    }
    let held_sql = format!(
        "SELECT coalesce(array_agg(partition ORDER BY partition), '{{}}') FROM {leases} \
         WHERE owner = $1 AND expires_at > now()"
    );
    let started = Instant::now();
    let killed_parts = loop {
        let mut held = Vec::new();
        for owner in &owners {
            let parts: Vec<i32> = sqlx::query_scalar(AssertSqlSafe(held_sql.as_str()))
                .bind(owner)
                .fetch_one(&b.pool)
                .await?;
            held.push(parts);
        }
        let other = held.pop().expect("two relays");
        let a = held.pop().expect("two relays");
        let pending = b.store.pending_count().await?;
        if !a.is_empty() && !other.is_empty() && pending <= n as i64 * 9 / 10 {
            break Some(a);
        }
        if pending == 0 || started.elapsed() > DRAIN_TIMEOUT {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let Some(killed_parts) = killed_parts else {
        println!("    not measured: the backlog was drained before both relays held partitions");
        b.figure(
            "kafka: takeover after SIGKILL",
            "not measured".into(),
            "<= 2 s",
            None,
        );
        return Ok(());
    };
    let (mut a, _) = children.remove(0);
    let a_pid = a.id().unwrap_or(0);
    let all_parts = b.store.partitions().await?;
    let killed = Instant::now();
    a.start_kill()?;
    a.wait().await?;
    // Its sessions end once the kernel has closed its sockets; the rows of
    // its unfinished batches are unlocked then.
    let sessions = loop {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(&owners[0])
                .fetch_one(&b.pool)
                .await?;
        if left == 0 {
            break killed.elapsed();
        }
        ensure!(
            killed.elapsed() < Duration::from_secs(30),
            "the killed relay's sessions are still open after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let heads: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT min(seq) FROM {outbox} WHERE sent_at IS NULL AND partition = ANY($1) GROUP BY partition"
    )))
    .bind(&killed_parts)
    .fetch_all(&b.pool)
    .await?;
    let left_behind: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {outbox} WHERE sent_at IS NULL AND partition = ANY($1)"
    )))
    .bind(&killed_parts)
    .fetch_one(&b.pool)
    .await?;
    let probe = format!(
        "SELECT (SELECT count(*) FROM {outbox} WHERE seq = ANY($1) AND sent_at IS NULL), \
         (SELECT count(*) FROM {leases} WHERE partition = ANY($2) AND owner = $3 AND expires_at > now())"
    );
    let (mut moved, mut resumed) = (None, None);
    while !heads.is_empty() && killed.elapsed() < Duration::from_secs(60) {
        let (left, taken): (i64, i64) = sqlx::query_as(AssertSqlSafe(probe.as_str()))
            .bind(&heads)
            .bind(&killed_parts)
            .bind(&owners[1])
            .fetch_one(&b.pool)
            .await?;
        if taken > 0 && moved.is_none() {
            moved = Some(killed.elapsed());
        }
        if left < heads.len() as i64 {
            resumed = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Relay B finishes the backlog, then stops when its standard input closes.
    let drained = Instant::now();
    while b.store.pending_count().await? > 0 {
        ensure!(
            drained.elapsed() < DRAIN_TIMEOUT,
            "relay B left {} messages pending after {DRAIN_TIMEOUT:?}",
            b.store.pending_count().await?
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut other, _) = children.remove(0);
    drop(other.stdin.take());
    match tokio::time::timeout(Duration::from_secs(30), other.wait()).await {
        Ok(status) => ensure!(status?.success(), "relay B exited with a failure"),
        Err(_) => bail!("relay B did not stop within 30 s of its input closing"),
    }
    let reading = read_topic(broker, &topic, n, true).await?;
    println!(
        "    relay A (pid {a_pid}) held {} of {all_parts} partitions, {} of their rows pending when killed;",
        killed_parts.len(),
        thousands(left_behind.max(0) as u64)
    );
    println!(
        "    its database sessions were gone {:.3} s after the kill",
        sessions.as_secs_f64()
    );
    let secs = |d: Option<Duration>| {
        d.map_or_else(
            || "not seen".to_string(),
            |d| format!("{:.2} s", d.as_secs_f64()),
        )
    };
    println!("    relay B held A's leases after {}", secs(moved));
    let met = resumed.map(|d| d <= TAKEOVER_TARGET);
    println!(
        "    A's partitions delivered again after {}{}   target <= {} s  {}",
        secs(resumed),
        if heads.is_empty() {
            " (its partitions were already drained)"
        } else {
            ""
        },
        TAKEOVER_TARGET.as_secs(),
        verdict(met)
    );
    println!(
        "    reader (duplicates allowed: the killed relay's unfinished batches): {}",
        reading.summary
    );
    ensure!(reading.ok, "topic {topic}: {}", reading.summary);
    b.figure(
        "kafka: takeover after SIGKILL",
        format!(
            "{} (leases {}; {} records twice)",
            secs(resumed),
            secs(moved),
            reading.duplicates
        ),
        "<= 2 s",
        met,
    );
    Ok(())
}

/// A relay process of the takeover measurement: `Relay::start` on the
/// tables of prefix `args[0]` with instance id `args[1]` (also its
/// sessions' `application_name`), a `KafkaSink` and `RelayConfig::default()`.
/// Prints `ready` once started and runs until its standard input closes.
pub(crate) async fn relay_child(args: &[String]) -> Result<()> {
    let [prefix, owner] = args else {
        bail!("usage: relaybox-bench {RELAY_CHILD} TABLE_PREFIX INSTANCE_ID");
    };
    let url = std::env::var("RELAYBOX_DATABASE_URL")?;
    let bootstrap = std::env::var(BOOTSTRAP_ENV)?;
    let sep = if url.contains('?') { '&' } else { '?' };
    let store = Store::connect_with(
        &format!("{url}{sep}application_name={owner}"),
        StoreOptions {
            table_prefix: prefix.clone(),
            ..StoreOptions::default()
        },
    )
    .await?;
    let sink = KafkaSink::new(kafka_config(&bootstrap))?;
    let config = RelayConfig {
        instance_id: Some(owner.clone()),
        ..RelayConfig::default()
    };
    let relay = Relay::start(store.clone(), Arc::new(sink), config)?;
    println!("ready");
    tokio::task::spawn_blocking(|| {
        let mut input = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut input)
    })
    .await??;
    relay.shutdown().await?;
    store.close().await;
    Ok(())
}

//! relaybox benchmark: prints throughput, latency and idle-CPU figures of the
//! outbox, the relay, the database transport and (on request) the Kafka
//! transport on PostgreSQL, each with its target and MET/MISSED. It is not a
//! test: nothing fails but the run itself.
//!
//! Run it with `dev/bench` (starts PostgreSQL, and Kafka for the `kafka`
//! section, exports RELAYBOX_DATABASE_URL / RELAYBOX_KAFKA_BOOTSTRAP and runs
//! `cargo run --release -p relaybox --features full --example bench -- ARGS`):
//!
//! ```text
//! dev/bench                    # the PostgreSQL sections, full sizes (about a minute once built)
//! dev/bench --quick            # smaller sizes, a smoke run
//! dev/bench --only drain,ceiling
//! dev/bench kafka              # the Kafka section only, a few minutes (starts the local broker too)
//! dev/bench kafka --runs 5     # five interleaved runs of its drains
//! dev/bench --explain          # also EXPLAIN ANALYZE the relay's queries on a full backlog
//! ```
//!
//! Sections (names for `--only`, comma-separated or repeated, or as plain
//! arguments; `explain` and `kafka` run only when named, so the default run
//! needs no broker):
//!
//! 1. `enqueue`: producer throughput, one message per transaction
//!    (`Store::begin` + `enqueue` + `commit`, 5,000 messages over 8 tasks) and
//!    100 messages per transaction (`Store::enqueue_batch` in an sqlx
//!    transaction, 100,000 messages over 8 tasks).
//! 2. `drain`: a relay (`Relay::start` with a `DatabaseSink` on the relay's
//!    own store, which takes the fused path: each claimed batch is moved into
//!    the log by ONE statement inside the claim transaction) drains a
//!    100,000-message backlog (pre-filled with `enqueue_batch`, then ANALYZE
//!    and CHECKPOINT) for several batch sizes; the clock runs from
//!    `Relay::start` until the relay reports every message delivered, after
//!    which `pending_count() == 0` and 100,000 log entries are checked.
//!    Target: >= 50,000 messages/s. Diagnostic rows (full runs, batch 1000,
//!    not judged): the generic path (the same `DatabaseSink` behind a thin
//!    forwarding `Sink`, so `log_store()` is `None`: claim, `publish` =
//!    `append_log`, complete), the generic path with a no-op sink (the cost
//!    of claiming and completing alone), and PostgreSQL moving each claimed
//!    batch into the log server-side from a hand-written loop.
//! 3. `ceiling`: what PostgreSQL alone does on this machine: one connection
//!    looping `BEGIN; SELECT <the relay's columns> ... ORDER BY seq LIMIT B FOR
//!    UPDATE SKIP LOCKED; DELETE ... WHERE ctid = ANY($1); COMMIT` over the same
//!    backlog, for the same batch sizes. The relay's rate is printed as % of
//!    this ceiling (target >= 70%).
//! 4. `naive`: a hand-rolled outbox poller: take ONE row (`ORDER BY seq LIMIT
//!    1`), "publish" it by inserting it into the log table, mark it sent
//!    (`UPDATE ... SET sent_at = now()`), each statement in its own
//!    transaction; it continues at once after a row and sleeps 1 s only when
//!    the table is empty. Run on a 2,000-row backlog (at most 10 s); printed
//!    with the relay/naive ratio.
//! 5. `latency`: commit-to-handler latency at a steady 1,000 messages/s for
//!    10 s: a relay (`DatabaseSink`, default settings) and a `Consumer`
//!    (`DatabaseSource`) whose handler records when it starts, per message;
//!    the latency is that moment minus the moment the producer's `commit`
//!    returned, in an HDR histogram. A producer ticks every 1 ms
//!    (`MissedTickBehavior::Burst`) and issues one transaction per tick (at
//!    most 32 in flight). Before the window the machine is settled: `VACUUM`
//!    (the catalogs' dead rows from the runs' own tables), `CHECKPOINT`, then
//!    `sync`, so that the window shares neither an autovacuum worker nor the
//!    disk with the sections before it (`RELAYBOX_BENCH_NO_SETTLE=1` skips
//!    this). Target: p99 < 25 ms. Also printed: the producer's
//!    commit time, what PostgreSQL's checkpointer and the whole machine wrote
//!    during the window, how busy the machine's cores were and its CPU time
//!    per message (split as in section 8), and where the time
//!    goes (log `appended_at`, `DatabaseSource::fetch` handing the message out
//!    (a forwarding `Source` clocks it) and inbox `processed_at`, each against
//!    `created_at`). Full runs also measure the consumer's capacity: 20,000
//!    messages waiting in the log, a handler that does nothing.
//! 6. `idle`: with a relay and a consumer running and no traffic, the CPU
//!    time of this process (`/proc/self/stat`) and of PostgreSQL (all
//!    processes named `postgres`, and this run's backends alone, found by
//!    `application_name`) over 5 s. Target: ~0% (< 1% of one core).
//! 7. `explain` (opt-in): EXPLAIN (ANALYZE, BUFFERS) of the relay's claim
//!    query (custom and generic plan), of the fused path's move-to-log
//!    statement (batch 1000 and 2000) and of the log append, on a full
//!    backlog, in rolled-back transactions. The SQL is copied from
//!    core/src/store/postgres.rs and must be kept in step with it.
//! 8. `kafka` (opt-in; needs RELAYBOX_KAFKA_BOOTSTRAP, a broker and the
//!    repository's `.venv` with confluent-kafka and psycopg, which `dev/bench
//!    kafka` creates): first the produce round trip of one record
//!    (KafkaSink's settings, linger.ms 5 and 0). Then `--runs N` (default 3,
//!    `--quick` 1) interleaved runs (each run starts one row later in the
//!    order) of four rows on a 200,000-message backlog (`--quick`: 20,000)
//!    of 256-byte payloads over 100 keys, each on a fresh 6-partition topic:
//!    (a) the PostgreSQL ceiling of section 3 at batch 5000 (no broker);
//!    (b) librdkafka alone producing the same records (same keys, payloads,
//!    headers and timestamps as `KafkaSink` sends; a `FutureProducer` with
//!    `KafkaSink`'s settings: idempotence, acks=all, linger.ms=0,
//!    batch.num.messages=10000, message.timeout.ms=0), all sent, then all
//!    awaited, no database; (c) relaybox: `Relay::start` with a `KafkaSink`
//!    (`create_topics = true`, the topic created and its leaders known before
//!    the clock starts) and `RelayConfig::default()` until everything is
//!    delivered (then `pending_count() == 0` and the topic's watermarks are
//!    checked); (d) the hand-tuned relay, bench/handtuned_relay.py (SKIP
//!    LOCKED batches of 1000, asynchronous produce with relaybox's headers and
//!    producer settings, all reports awaited, one DELETE per batch), clocked
//!    from spawn to exit. Each row's machine CPU per message comes from
//!    `/proc/stat` (every process), split into this process, the relay
//!    program it ran, PostgreSQL's processes and the broker's JVM
//!    (`/proc/<pid>/stat`). Every topic is then read whole by a third-party
//!    reader, bench/check_topic.py (confluent-kafka): every message once, each
//!    key in enqueue order. Each run prints the ratios relaybox / hand-tuned
//!    drain rate (target >= 2), relaybox / librdkafka alone (>= 0.80) and
//!    relaybox / hand-tuned machine CPU per message (<= 0.5); the medians
//!    of the runs and the ratios of the medians close the table. Then the
//!    takeover: two relay processes (this program re-executed with a hidden
//!    first argument) drain a backlog (200,000; `--quick` 50,000), half the
//!    partitions each; one is killed with SIGKILL mid-drain; printed: the
//!    time until the other holds its leases and until its partitions are
//!    delivered again (target <= 2 s), and the reader's check (redeliveries
//!    allowed). Then a naive poller (SELECT one row, produce it and await its
//!    delivery, UPDATE ... SET sent_at; sleeps 1 s only when the table is
//!    empty; 2,000 rows or 10 s) with the relaybox/naive ratio, and
//!    commit-to-handler latency at 1,000 msg/s for 10 s through Kafka (relay
//!    with `KafkaSink`, `Consumer` with `KafkaSource`; settled as in section
//!    5; target p99 < 25 ms) with where the time goes (send called / reports
//!    in, `KafkaSource::fetch` handing the record out), then the same
//!    pipeline idle: this process's CPU over 5 s with no traffic (target < 1%
//!    of a core). Full runs also measure the consumer's capacity on 20,000
//!    waiting records (6 and 12 partitions, and `DatabaseSource` for
//!    comparison). The topics and consumer groups it created are deleted at
//!    the end (best effort).
//!    `kafka-latency` runs this section's latency window alone.
//!
//! Settings for experiments (environment; the defaults when unset):
//! `RELAYBOX_BENCH_NO_SETTLE=1` skips settling the machine before latency
//! windows; `RELAYBOX_BENCH_LATENCY_DUMP=<file>` writes each window
//! message's commit time and latency to `<file>`; `RELAYBOX_BENCH_LATENCY_RELAY` is a `RelayConfig` JSON object
//! for the latency runs' relays (e.g. `{"concurrency": 1}`);
//! `RELAYBOX_BENCH_KAFKA_PROPS` (`key=value,key=value`) adds librdkafka
//! producer properties to ceiling b's producer and every relay's `KafkaSink`
//! in section 8 alike.
//!
//! Every run uses its own tables (prefix `bench_<pid>_`) and drops them at
//! the end, also after an error or Ctrl-C. Other work on the machine (builds,
//! tests on the same PostgreSQL) skews the figures: the load average is
//! printed before and after.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use chrono::Utc;
use hdrhistogram::Histogram;
use relaybox::{
    handler_fn, BoxError, Consumer, ConsumerConfig, DatabaseSink, DatabaseSource,
    DatabaseSourceConfig, Message, Relay, RelayConfig, RelayStats, Sink, Store, StoreOptions,
};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection, PgPool, Row};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use uuid::Uuid;

/// Distinct partition keys of the generated messages.
const KEYS: usize = 1_000;
/// Topic of the throughput sections.
const TOPIC: &str = "bench.orders";
/// Topic of the latency and idle sections.
const LATENCY_TOPIC: &str = "bench.latency";
/// Relay drain target, messages per second.
const DRAIN_TARGET: f64 = 50_000.0;
/// Relay rate as a share of the ceiling, percent.
const CEILING_TARGET: f64 = 70.0;
/// Commit-to-handler p99 target, milliseconds.
const P99_TARGET_MS: f64 = 25.0;
/// Idle CPU target, percent of one core.
const IDLE_TARGET: f64 = 1.0;
/// Concurrent producer tasks of the enqueue section.
const ENQUEUE_TASKS: usize = 8;
/// Producer transactions in flight at most in the latency section.
const LATENCY_IN_FLIGHT: usize = 32;
/// Messages waiting for the consumer capacity runs.
const CAPACITY_MESSAGES: usize = 20_000;
/// Longest a relay drain may take before the run is abandoned.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Section {
    Enqueue,
    Drain,
    Ceiling,
    Naive,
    Latency,
    Idle,
    Explain,
    Kafka,
    /// Section 8's latency window alone, for experiments.
    KafkaLatency,
}

impl Section {
    const DEFAULT: [Section; 6] = [
        Section::Enqueue,
        Section::Drain,
        Section::Ceiling,
        Section::Naive,
        Section::Latency,
        Section::Idle,
    ];

    fn parse(s: &str) -> Result<Section> {
        Ok(match s {
            "enqueue" => Section::Enqueue,
            "drain" | "relay" => Section::Drain,
            "ceiling" => Section::Ceiling,
            "naive" => Section::Naive,
            "latency" => Section::Latency,
            "idle" => Section::Idle,
            "explain" => Section::Explain,
            "kafka" => Section::Kafka,
            "kafka-latency" => Section::KafkaLatency,
            other => bail!(
                "unknown section {other:?}; use enqueue, drain, ceiling, naive, latency, idle, explain, kafka, kafka-latency"
            ),
        })
    }
}

/// Sizes of one run (full or `--quick`).
struct Sizes {
    single_n: usize,
    batch_total: usize,
    batch_size: usize,
    backlog: usize,
    drain_batches: Vec<u32>,
    diagnostics_batch: Option<u32>,
    naive_rows: usize,
    naive_max: Duration,
    latency_for: Duration,
    idle_for: Duration,
    /// Backlog of the Kafka drains (256-byte payloads).
    kafka_backlog: usize,
    /// Interleaved runs of the Kafka drains (`--runs` overrides it).
    kafka_runs: usize,
    /// Backlog of the Kafka takeover measurement.
    takeover_backlog: usize,
}

impl Sizes {
    fn full() -> Sizes {
        Sizes {
            single_n: 5_000,
            batch_total: 100_000,
            batch_size: 100,
            backlog: 100_000,
            drain_batches: vec![500, 1000, 2000],
            diagnostics_batch: Some(1000),
            naive_rows: 2_000,
            naive_max: Duration::from_secs(10),
            latency_for: Duration::from_secs(10),
            idle_for: Duration::from_secs(5),
            kafka_backlog: 200_000,
            kafka_runs: 3,
            takeover_backlog: 200_000,
        }
    }

    fn quick() -> Sizes {
        Sizes {
            single_n: 800,
            batch_total: 10_000,
            batch_size: 100,
            backlog: 10_000,
            drain_batches: vec![1000],
            diagnostics_batch: None,
            naive_rows: 300,
            naive_max: Duration::from_secs(3),
            latency_for: Duration::from_secs(3),
            idle_for: Duration::from_secs(2),
            kafka_backlog: 20_000,
            kafka_runs: 1,
            takeover_backlog: 50_000,
        }
    }
}

struct Args {
    quick: bool,
    /// `--runs N`: interleaved runs of the Kafka drains.
    runs: Option<usize>,
    sections: BTreeSet<Section>,
}

const USAGE: &str =
    "usage: bench [--quick] [--runs N] [--only SECTION[,SECTION..]]... [--explain] [SECTION...]
sections: enqueue, drain, ceiling, naive, latency, idle (the default run),
          explain, kafka (opt-in: only when named; kafka needs RELAYBOX_KAFKA_BOOTSTRAP),
          kafka-latency (the kafka section's latency window alone)
--runs N: interleaved runs of the kafka section's drains (default 3, --quick 1)";

fn parse_args() -> Result<Args> {
    let mut quick = false;
    let mut runs = None;
    let mut only: BTreeSet<Section> = BTreeSet::new();
    let mut explain = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--explain" => explain = true,
            "--runs" => {
                let n = args.next().ok_or_else(|| anyhow!("--runs needs a value"))?;
                runs = Some(parse_runs(&n)?);
            }
            s if s.starts_with("--runs=") => runs = Some(parse_runs(&s["--runs=".len()..])?),
            "--only" => {
                let list = args.next().ok_or_else(|| anyhow!("--only needs a value"))?;
                for s in list.split(',').filter(|s| !s.is_empty()) {
                    only.insert(Section::parse(s)?);
                }
            }
            s if s.starts_with("--only=") => {
                for s in s["--only=".len()..].split(',').filter(|s| !s.is_empty()) {
                    only.insert(Section::parse(s)?);
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other if other.starts_with('-') => bail!("unknown argument {other:?}\n{USAGE}"),
            // A plain argument names sections too: `bench kafka`, `bench drain,naive`.
            list => {
                for s in list.split(',').filter(|s| !s.is_empty()) {
                    only.insert(Section::parse(s)?);
                }
            }
        }
    }
    let mut sections = if only.is_empty() {
        Section::DEFAULT.into_iter().collect()
    } else {
        only
    };
    if explain {
        sections.insert(Section::Explain);
    }
    Ok(Args {
        quick,
        runs,
        sections,
    })
}

fn parse_runs(n: &str) -> Result<usize> {
    match n.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("--runs needs a positive number, not {n:?}"),
    }
}

/// One line of the final summary.
struct Figure {
    name: String,
    value: String,
    target: String,
    met: Option<bool>,
}

/// What the run shares between sections.
struct Bench {
    store: Store,
    pool: PgPool,
    prefix: String,
    app_name: String,
    sizes: Sizes,
    summary: Vec<Figure>,
    /// Relay drain rates (DatabaseSink) by batch size.
    relay_rates: Vec<(u32, f64)>,
    /// Ceiling rates by batch size.
    ceiling_rates: Vec<(u32, f64)>,
    /// Kafka topics and consumer groups this run created (deleted at the end).
    kafka_topics: Vec<String>,
    kafka_groups: Vec<String>,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // The Kafka section's takeover measurement runs relays in processes of
    // their own: this program, re-executed with a hidden first argument.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(RELAY_CHILD) {
        return relay_child(&argv[2..]).await;
    }
    let args = parse_args()?;
    let url = std::env::var("RELAYBOX_DATABASE_URL").map_err(|_| {
        anyhow!(
            "RELAYBOX_DATABASE_URL is not set: run the benchmark with dev/bench, \
             or export it (eval \"$(dev/services env)\")"
        )
    })?;
    ensure!(
        url.starts_with("postgres://") || url.starts_with("postgresql://"),
        "RELAYBOX_DATABASE_URL must be a PostgreSQL URL (the benchmark is PostgreSQL only)"
    );
    let pid = std::process::id();
    let prefix = format!("bench_{pid}_");
    let app_name = format!("relaybox-bench-{pid}");
    let sep = if url.contains('?') { '&' } else { '?' };
    let app_url = format!("{url}{sep}application_name={app_name}");

    let store = Store::connect_with(
        &app_url,
        StoreOptions {
            table_prefix: prefix.clone(),
            max_connections: Some(48),
            ..StoreOptions::default()
        },
    )
    .await
    .context("connecting to RELAYBOX_DATABASE_URL")?;
    let pool = store.pg_pool().expect("a PostgreSQL store").clone();
    let started = Instant::now();

    let mut bench = Bench {
        store: store.clone(),
        pool,
        prefix: prefix.clone(),
        app_name,
        sizes: {
            let mut sizes = if args.quick {
                Sizes::quick()
            } else {
                Sizes::full()
            };
            if let Some(runs) = args.runs {
                sizes.kafka_runs = runs;
            }
            sizes
        },
        summary: Vec::new(),
        relay_rates: Vec::new(),
        ceiling_rates: Vec::new(),
        kafka_topics: Vec::new(),
        kafka_groups: Vec::new(),
    };
    let outcome = tokio::select! {
        r = run(&mut bench, &args) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    // Closing the pool ends every backend (and any transaction an aborted relay left open).
    store.close().await;
    delete_kafka_leftovers(&bench).await;
    let cleanup = drop_tables(&url, &prefix).await;
    match &cleanup {
        Ok(()) => println!("\ntables {prefix}* dropped"),
        Err(e) => eprintln!("\ncould not drop the tables {prefix}*: {e:#}"),
    }
    outcome?;
    print_summary(&bench.summary);
    println!(
        "\nload average after: {}   total run time: {:.1} s",
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    cleanup
}

async fn run(b: &mut Bench, args: &Args) -> Result<()> {
    print_environment(b, args).await?;
    b.store.migrate().await.context("migrating")?;
    let s = &args.sections;
    if s.contains(&Section::Enqueue) {
        section_enqueue(b).await?;
    }
    if s.contains(&Section::Drain) || s.contains(&Section::Ceiling) {
        section_drain(
            b,
            s.contains(&Section::Drain),
            s.contains(&Section::Ceiling),
        )
        .await?;
    }
    if s.contains(&Section::Naive) {
        section_naive(b).await?;
    }
    if s.contains(&Section::Latency) {
        section_latency(b).await?;
    }
    if s.contains(&Section::Idle) {
        section_idle(b).await?;
    }
    if s.contains(&Section::Explain) {
        section_explain(b).await?;
    }
    if s.contains(&Section::Kafka) {
        section_kafka(b, false).await?;
    } else if s.contains(&Section::KafkaLatency) {
        section_kafka(b, true).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Environment

async fn print_environment(b: &Bench, args: &Args) -> Result<()> {
    let cpus = cores();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&b.pool)
        .await?;
    let mut settings = String::new();
    for name in [
        "synchronous_commit",
        "fsync",
        "shared_buffers",
        "jit",
        "max_connections",
    ] {
        let v: String = sqlx::query_scalar("SELECT current_setting($1)")
            .bind(name)
            .fetch_one(&b.pool)
            .await?;
        let _ = write!(settings, "{name}={v} ");
    }
    println!(
        "relaybox benchmark{}",
        if args.quick { " (--quick)" } else { "" }
    );
    println!("  machine:     {cpus} CPUs (nproc), {model}");
    println!("  postgresql:  {version}");
    println!("  settings:    {}", settings.trim_end());
    println!("  database:    {}", b.store.url());
    println!("  tables:      {}*", b.prefix);
    println!("  load avg:    {}", loadavg());
    let mut conn = b.pool.acquire().await?;
    let mut rtt = histogram();
    for _ in 0..200 {
        let begun = Instant::now();
        sqlx::query("SELECT 1").execute(&mut *conn).await?;
        rtt.saturating_record(begun.elapsed().as_micros() as u64);
    }
    drop(conn);
    println!(
        "  round trip:  SELECT 1 p50 {} p99 {} (one statement on an open connection)",
        ms(rtt.value_at_quantile(0.5)),
        ms(rtt.value_at_quantile(0.99))
    );
    let payload = message(TOPIC, 12_345).payload.len();
    println!("  messages:    ~{payload}-byte JSON payloads, {KEYS} distinct keys, topic {TOPIC}");
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------------------
// Helpers

/// Makes the `i`th message of a topic.
type MakeMessage = fn(&str, usize) -> Message;

/// The `i`th benchmark message: ~200 bytes of JSON, one of `KEYS` keys.
fn message(topic: &str, i: usize) -> Message {
    let key = format!("customer-{:04}", i % KEYS);
    let payload = serde_json::json!({
        "order_id": i,
        "customer": key,
        "amount_cents": (i * 7919) % 100_000,
        "currency": "EUR",
        "items": [{"sku": format!("SKU-{:05}", i % 50_000), "qty": 1 + i % 5}],
        "note": "deliver to the back door; ring twice, then wait at the gate please",
    });
    Message::json(topic, &payload)
        .expect("a JSON payload")
        .with_key(key)
        .with_type("OrderPlaced")
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn ms(micros: u64) -> String {
    format!("{:.2} ms", micros as f64 / 1000.0)
}

/// 1234567 -> "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "MET",
        Some(false) => "MISSED",
        None => "-",
    }
}

fn header(title: &str) {
    println!("\n== {title} ==");
}

impl Bench {
    fn figure(&mut self, name: impl Into<String>, value: String, target: &str, met: Option<bool>) {
        self.summary.push(Figure {
            name: name.into(),
            value,
            target: target.into(),
            met,
        });
    }

    fn table(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    async fn exec(&self, sql: String) -> Result<()> {
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(Into::into)
    }

    async fn count(&self, table: &str, filter: &str) -> Result<i64> {
        let sql = format!("SELECT count(*) FROM {}{table} {filter}", self.prefix);
        Ok(sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&self.pool)
            .await?)
    }

    /// Cleans up after earlier sections and runs before a latency window:
    /// `VACUUM` (the system catalogs' dead rows, left by every run creating
    /// and dropping its tables, which an autovacuum worker would otherwise
    /// clean during the window), then writes out what they left dirty:
    /// PostgreSQL's buffers (`CHECKPOINT`), then the machine's page cache
    /// (`sync`: the broker's log segments too), so that a latency window does
    /// not share the disk with their writeback. `RELAYBOX_BENCH_NO_SETTLE`
    /// (any value) skips it.
    async fn settle(&self) -> Result<()> {
        if std::env::var("RELAYBOX_BENCH_NO_SETTLE").is_ok() {
            return Ok(());
        }
        self.exec("VACUUM".into()).await?;
        self.exec("CHECKPOINT".into()).await?;
        let synced = tokio::process::Command::new("sync").status().await?;
        ensure!(synced.success(), "sync failed: {synced}");
        Ok(())
    }

    /// Empties every table a section writes to.
    async fn reset(&self) -> Result<()> {
        let p = &self.prefix;
        self.exec(format!(
            "TRUNCATE {p}outbox, {p}log, {p}inbox, {p}positions, {p}dead_letters RESTART IDENTITY"
        ))
        .await
    }

    /// Resets, then writes an `n`-message backlog with `enqueue_batch` (1,000
    /// per transaction, 2 writers), then ANALYZE and CHECKPOINT so that every
    /// timed drain starts from the same state.
    async fn backlog(&self, n: usize, topic: &str) -> Result<()> {
        self.backlog_of(n, topic, message).await
    }

    /// [`backlog`](Bench::backlog) of the messages `make(topic, i)`.
    async fn backlog_of(&self, n: usize, topic: &str, make: MakeMessage) -> Result<()> {
        self.backlog_with(n, topic, make, 2).await
    }

    /// [`backlog_of`](Bench::backlog_of) written by one writer, so that the
    /// messages are enqueued in the order of `i` (the Kafka section's reader
    /// checks each key's records against it).
    async fn backlog_in_order(&self, n: usize, topic: &str, make: MakeMessage) -> Result<()> {
        self.backlog_with(n, topic, make, 1).await
    }

    async fn backlog_with(
        &self,
        n: usize,
        topic: &str,
        make: MakeMessage,
        writers: usize,
    ) -> Result<()> {
        self.reset().await?;
        let mut set = JoinSet::new();
        for w in 0..writers {
            let store = self.store.clone();
            let pool = self.pool.clone();
            let topic = topic.to_string();
            set.spawn(async move {
                let mut i = w * 1000;
                while i < n {
                    let batch: Vec<Message> =
                        (i..(i + 1000).min(n)).map(|j| make(&topic, j)).collect();
                    let mut tx = pool.begin().await?;
                    store.enqueue_batch(&mut *tx, &batch).await?;
                    tx.commit().await?;
                    i += writers * 1000;
                }
                Ok::<(), anyhow::Error>(())
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        let pending = self.store.pending_count().await?;
        ensure!(pending == n as i64, "backlog has {pending} rows, not {n}");
        self.exec(format!("ANALYZE {}", self.table("outbox")))
            .await?;
        self.exec("CHECKPOINT".into()).await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// 1. Enqueue throughput

struct EnqueueRun {
    messages: usize,
    transactions: usize,
    elapsed: Duration,
    tx_latency: Histogram<u64>,
}

async fn section_enqueue(b: &mut Bench) -> Result<()> {
    header("1. Enqueue throughput (PostgreSQL, committed transactions)");
    b.reset().await?;
    let single = enqueue_run(b, b.sizes.single_n, 1).await?;
    let batched = enqueue_run(b, b.sizes.batch_total, b.sizes.batch_size).await?;
    let total = b.count("outbox", "").await?;
    ensure!(
        total == (single.messages + batched.messages) as i64,
        "the outbox holds {total} rows, expected {}",
        single.messages + batched.messages
    );
    b.reset().await?;

    println!(
        "  {:<34} {:>9} {:>7} {:>6} {:>9} {:>10} {:>10} {:>10}",
        "mode", "messages", "tx", "tasks", "elapsed", "msg/s", "tx p50", "tx p99"
    );
    let rows = [
        ("1 msg/tx   (begin+enqueue+commit)", &single),
        ("100 msg/tx (enqueue_batch)", &batched),
    ];
    for (name, r) in rows {
        println!(
            "  {:<34} {:>9} {:>7} {:>6} {:>7.2} s {:>10} {:>10} {:>10}",
            name,
            thousands(r.messages as u64),
            thousands(r.transactions as u64),
            ENQUEUE_TASKS,
            r.elapsed.as_secs_f64(),
            thousands(rate(r.messages, r.elapsed) as u64),
            ms(r.tx_latency.value_at_quantile(0.5)),
            ms(r.tx_latency.value_at_quantile(0.99)),
        );
    }
    println!(
        "  tx = one transaction from pool acquire to commit (relays of other processes are woken"
    );
    println!(
        "  after the commit by the store's coalescing NOTIFY announcer, outside the transaction)."
    );
    let value = |r: &EnqueueRun| {
        format!(
            "{} msg/s ({} tx/s)",
            thousands(rate(r.messages, r.elapsed) as u64),
            thousands(rate(r.transactions, r.elapsed) as u64)
        )
    };
    b.figure("enqueue, 1 msg/tx, 8 tasks", value(&single), "(info)", None);
    b.figure(
        "enqueue, 100 msg/tx, 8 tasks",
        value(&batched),
        "(info)",
        None,
    );
    Ok(())
}

/// Enqueues `total` messages, `per_tx` per transaction, from `ENQUEUE_TASKS` tasks.
async fn enqueue_run(b: &Bench, total: usize, per_tx: usize) -> Result<EnqueueRun> {
    let transactions = total.div_ceil(per_tx);
    let started = Instant::now();
    let mut set = JoinSet::new();
    for t in 0..ENQUEUE_TASKS {
        let store = b.store.clone();
        let pool = b.pool.clone();
        set.spawn(async move {
            let mut hist = histogram();
            // Transactions t, t + TASKS, t + 2 * TASKS, ...
            for n in (t..transactions).step_by(ENQUEUE_TASKS) {
                let first = n * per_tx;
                let last = (first + per_tx).min(total);
                let begun = Instant::now();
                if per_tx == 1 {
                    let tx = store.begin().await?;
                    tx.enqueue(message(TOPIC, first)).await?;
                    tx.commit().await?;
                } else {
                    let batch: Vec<Message> = (first..last).map(|i| message(TOPIC, i)).collect();
                    let mut tx = pool.begin().await?;
                    store.enqueue_batch(&mut *tx, &batch).await?;
                    tx.commit().await?;
                }
                hist.saturating_record(begun.elapsed().as_micros() as u64);
            }
            Ok::<_, anyhow::Error>(hist)
        });
    }
    let mut tx_latency = histogram();
    while let Some(r) = set.join_next().await {
        tx_latency.add(r??)?;
    }
    Ok(EnqueueRun {
        messages: total,
        transactions,
        elapsed: started.elapsed(),
        tx_latency,
    })
}

// ---------------------------------------------------------------------------
// 2 + 3. Relay drain and the PostgreSQL ceiling

/// A sink that acknowledges everything at once: the relay's own cost alone.
struct NullSink;

#[async_trait::async_trait]
impl Sink for NullSink {
    fn name(&self) -> &str {
        "null"
    }

    async fn publish(&self, batch: &[Message]) -> Vec<relaybox::Result<()>> {
        batch.iter().map(|_| Ok(())).collect()
    }
}

/// A thin forwarding sink: it publishes through the wrapped sink but does not
/// report a `log_store()`, so the relay takes its generic path (claim,
/// `publish`, complete) even when the wrapped sink is a `DatabaseSink`.
struct Forward(Arc<dyn Sink>);

#[async_trait::async_trait]
impl Sink for Forward {
    fn name(&self) -> &str {
        self.0.name()
    }

    async fn publish(&self, batch: &[Message]) -> Vec<relaybox::Result<()>> {
        self.0.publish(batch).await
    }
}

/// The sink of a drain run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DrainSink {
    /// `DatabaseSink` on the relay's own store: the fused claim-and-move statement.
    Fused,
    /// The same `DatabaseSink` behind [`Forward`]: claim, `append_log`, complete.
    Generic,
    /// [`NullSink`] (generic path): claiming and completing alone.
    Null,
}

struct DrainRun {
    elapsed: Duration,
    batches: u64,
    /// The machine's busy CPU over `elapsed`.
    busy: Busy,
}

async fn section_drain(b: &mut Bench, relay: bool, ceiling: bool) -> Result<()> {
    let n = b.sizes.backlog;
    header(&format!(
        "2+3. Drain of a {}-message backlog: relay (DatabaseSink) vs PostgreSQL ceiling",
        thousands(n as u64)
    ));
    println!("  ceiling = one connection looping BEGIN; SELECT <relay's columns> ... ORDER BY seq LIMIT B");
    println!(
        "            FOR UPDATE SKIP LOCKED; DELETE ... WHERE ctid = ANY($1); COMMIT  (no transport)"
    );
    print_drain_header();
    let batches = b.sizes.drain_batches.clone();
    for &batch in &batches {
        let mut ceiling_rate = None;
        if ceiling {
            b.backlog(n, TOPIC).await?;
            let run = ceiling_drain(b, n, batch, false).await?;
            let r = rate(n, run.elapsed);
            ceiling_rate = Some(r);
            b.ceiling_rates.push((batch, r));
            print_drain_row("PostgreSQL ceiling", batch, &run, n, None, "");
        }
        if relay {
            b.backlog(n, TOPIC).await?;
            let run = relay_drain(b, batch, DrainSink::Fused).await?;
            let r = rate(n, run.elapsed);
            b.relay_rates.push((batch, r));
            let share = ceiling_rate.map(|c| 100.0 * r / c);
            let met = r >= DRAIN_TARGET && share.is_none_or(|s| s >= CEILING_TARGET);
            print_drain_row(
                "relay, DatabaseSink (fused path)",
                batch,
                &run,
                n,
                share,
                verdict(Some(met)),
            );
            b.figure(
                format!("relay drain (DatabaseSink, fused), batch {batch}"),
                format!("{} msg/s", thousands(r as u64)),
                ">= 50,000 msg/s",
                Some(r >= DRAIN_TARGET),
            );
            if let Some(s) = share {
                b.figure(
                    format!("relay / PG ceiling, batch {batch}"),
                    format!(
                        "{s:.0}% (ceiling {} msg/s)",
                        thousands(ceiling_rate.unwrap_or(0.0) as u64)
                    ),
                    ">= 70%",
                    Some(s >= CEILING_TARGET),
                );
            }
        }
        if b.sizes.diagnostics_batch == Some(batch) {
            if relay {
                for (name, sink) in [
                    (
                        "diag: relay, generic path (wrapped DatabaseSink)",
                        DrainSink::Generic,
                    ),
                    ("diag: relay, no-op sink (generic path)", DrainSink::Null),
                ] {
                    b.backlog(n, TOPIC).await?;
                    let run = relay_drain(b, batch, sink).await?;
                    let share = ceiling_rate.map(|c| 100.0 * rate(n, run.elapsed) / c);
                    print_drain_row(name, batch, &run, n, share, "");
                }
            }
            if ceiling {
                b.backlog(n, TOPIC).await?;
                let run = ceiling_drain(b, n, batch, true).await?;
                let share = ceiling_rate.map(|c| 100.0 * rate(n, run.elapsed) / c);
                print_drain_row(
                    "diag: PG loop, claim + move to log",
                    batch,
                    &run,
                    n,
                    share,
                    "",
                );
            }
        }
    }
    println!("  Each run starts from a fresh, ANALYZEd, checkpointed backlog. Relay clock: Relay::start until");
    println!("  the relay reports all delivered; then pending_count()==0 and the log's row count are checked.");
    println!("  fused = DatabaseSink on the relay's own Store: each claimed batch is moved into the log by ONE");
    println!("  statement in the claim transaction (payloads never leave the server), so it can beat the");
    println!("  ceiling loop, which fetches every row to the client.");
    if b.sizes.diagnostics_batch.is_some() {
        println!("  diag rows (not judged): generic path = the same DatabaseSink behind a forwarding Sink");
        println!("  (log_store() is None: claim, publish = append_log, complete, as for any broker); no-op sink =");
        println!("  generic path whose publish does nothing (claim + complete cost of the relay alone); PG loop =");
        println!("  a hand-written loop moving each claimed batch into the log server-side (advisory lock;");
        println!("  DELETE ... RETURNING -> INSERT INTO log), roughly what the fused path does.");
    }
    b.reset().await?;
    Ok(())
}

fn print_drain_header() {
    println!(
        "  {:<48} {:>6} {:>9} {:>11} {:>8} {:>11} {:>9} {:>8}",
        "run", "batch", "elapsed", "msg/s", "batches", "ms/batch", "%ceiling", "target"
    );
}

fn print_drain_row(
    name: &str,
    batch: u32,
    run: &DrainRun,
    n: usize,
    share: Option<f64>,
    result: &str,
) {
    println!(
        "  {:<48} {:>6} {:>7.2} s {:>11} {:>8} {:>11} {:>9} {:>8}",
        name,
        batch,
        run.elapsed.as_secs_f64(),
        thousands(rate(n, run.elapsed) as u64),
        run.batches,
        format!(
            "{:.2}",
            run.elapsed.as_secs_f64() * 1000.0 / run.batches.max(1) as f64
        ),
        share.map_or_else(|| "-".into(), |s| format!("{s:.0}%")),
        result,
    );
}

/// Starts one relay on the pre-filled backlog and times it until everything is delivered.
async fn relay_drain(b: &Bench, batch: u32, kind: DrainSink) -> Result<DrainRun> {
    let n = b.sizes.backlog;
    let database: Arc<dyn Sink> = Arc::new(DatabaseSink::new(b.store.clone()));
    let sink: Arc<dyn Sink> = match kind {
        DrainSink::Fused => database,
        DrainSink::Generic => Arc::new(Forward(database)),
        DrainSink::Null => Arc::new(NullSink),
    };
    let config = RelayConfig {
        batch_size: batch,
        instance_id: Some(format!("{}drain-{batch}-{kind:?}", b.prefix)),
        ..RelayConfig::default()
    };
    let (elapsed, stats, busy) = timed_drain(b, sink, config, n).await?;
    if kind != DrainSink::Null {
        let logged = b.count("log", "").await?;
        ensure!(
            logged == n as i64,
            "the log has {logged} entries, expected {n}"
        );
    }
    Ok(DrainRun {
        elapsed,
        batches: stats.batches,
        busy,
    })
}

/// Starts a relay on the pre-filled `n`-message backlog, waits until it
/// reports every message delivered (its counter moves after the completing
/// commit), shuts it down and checks `pending_count() == 0` and no failures.
async fn timed_drain(
    b: &Bench,
    sink: Arc<dyn Sink>,
    config: RelayConfig,
    n: usize,
) -> Result<(Duration, RelayStats, Busy)> {
    let cpu = MachineCpu::start();
    let started = Instant::now();
    let relay = Relay::start(b.store.clone(), sink, config)?;
    while relay.stats().delivered < n as u64 {
        if started.elapsed() > DRAIN_TIMEOUT {
            let stats = relay.stats();
            relay.shutdown().await?;
            bail!(
                "the relay delivered {} of {n} messages in {DRAIN_TIMEOUT:?}: {stats:?}",
                stats.delivered
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    let busy = cpu.stop();
    let stats = relay.stats();
    relay.shutdown().await?;
    let pending = b.store.pending_count().await?;
    ensure!(
        pending == 0,
        "{pending} messages still pending after the drain"
    );
    ensure!(
        stats.retried == 0 && stats.dead_lettered == 0 && stats.delivered == n as u64,
        "unexpected failures while draining: {stats:?}"
    );
    Ok((elapsed, stats, busy))
}

/// PostgreSQL alone: claim (the relay's columns) and delete, batch after batch,
/// over the pre-filled `n`-row backlog.
/// With `copy_to_log`, the rows are moved into the log table by the server in
/// the same transaction (advisory lock, then `DELETE ... RETURNING` feeding an
/// `INSERT INTO log`).
async fn ceiling_drain(b: &Bench, n: usize, batch: u32, copy_to_log: bool) -> Result<DrainRun> {
    let outbox = b.table("outbox");
    let log = b.table("log");
    let move_to_log = format!(
        "WITH moved AS (DELETE FROM {outbox} WHERE ctid = ANY($1::text[]::tid[]) \
             RETURNING seq, id, topic, key, partition, type, payload, content_type, headers, created_at, available_at) \
         INSERT INTO {log} (id, topic, key, partition, type, payload, content_type, headers, created_at, available_at, appended_at) \
         SELECT id, topic, key, partition, type, payload, content_type, headers, created_at, available_at, now() \
         FROM moved ORDER BY seq"
    );
    let select = format!(
        "SELECT ctid::text AS row_address, seq, partition, attempts, id, topic, key, type, payload, content_type, \
         headers::text AS headers, created_at, available_at FROM {outbox} WHERE sent_at IS NULL ORDER BY seq LIMIT $1 \
         FOR UPDATE SKIP LOCKED"
    );
    let delete = format!("DELETE FROM {outbox} WHERE ctid = ANY($1::text[]::tid[])");
    let mut conn = b.pool.acquire().await?;
    let cpu = MachineCpu::start();
    let started = Instant::now();
    let (mut done, mut batches, mut bytes) = (0usize, 0u64, 0usize);
    loop {
        let mut tx = conn.begin().await?;
        let rows = sqlx::query(AssertSqlSafe(select.as_str()))
            .bind(i64::from(batch))
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            tx.commit().await?;
            break;
        }
        let mut addresses = Vec::with_capacity(rows.len());
        for row in &rows {
            addresses.push(row.try_get::<String, _>("row_address")?);
            // Decoded as the relay decodes it, though the loop deletes by address.
            row.try_get::<Uuid, _>("id")?;
            bytes += row.try_get::<&[u8], _>("payload")?.len();
        }
        if copy_to_log {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(i64::from(u32::MAX) + 7)
                .execute(&mut *tx)
                .await?;
            sqlx::query(AssertSqlSafe(move_to_log.as_str()))
                .bind(&addresses)
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query(AssertSqlSafe(delete.as_str()))
                .bind(&addresses)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        done += rows.len();
        batches += 1;
    }
    let elapsed = started.elapsed();
    let busy = cpu.stop();
    ensure!(
        done == n,
        "the ceiling loop drained {done} rows, expected {n}"
    );
    ensure!(bytes > 0, "no payload read");
    if copy_to_log {
        let logged = b.count("log", "").await?;
        ensure!(
            logged == n as i64,
            "the log has {logged} entries, expected {n}"
        );
    }
    Ok(DrainRun {
        elapsed,
        batches,
        busy,
    })
}

// ---------------------------------------------------------------------------
// 4. Naive baseline

async fn section_naive(b: &mut Bench) -> Result<()> {
    let n = b.sizes.naive_rows;
    let limit = b.sizes.naive_max;
    header(&format!(
        "4. Naive baseline: one row at a time ({}-row backlog, at most {} s)",
        thousands(n as u64),
        limit.as_secs()
    ));
    b.backlog(n, TOPIC).await?;
    let (outbox, log) = (b.table("outbox"), b.table("log"));
    let select = format!(
        "SELECT id, topic, key, partition, type, payload, content_type, headers::text AS headers, created_at, available_at \
         FROM {outbox} WHERE sent_at IS NULL ORDER BY seq LIMIT 1"
    );
    let insert = format!(
        "INSERT INTO {log} (id, topic, key, partition, type, payload, content_type, headers, created_at, available_at, appended_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, now())"
    );
    let mark = format!("UPDATE {outbox} SET sent_at = now() WHERE id = $1");
    let mut conn = b.pool.acquire().await?;
    let started = Instant::now();
    let mut done = 0usize;
    while done < n && started.elapsed() < limit {
        let row = sqlx::query(AssertSqlSafe(select.as_str()))
            .fetch_optional(&mut *conn)
            .await?;
        let Some(row) = row else {
            // The hand-rolled poller's idle wait; never reached while the backlog lasts.
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let id: Uuid = row.try_get("id")?;
        sqlx::query(AssertSqlSafe(insert.as_str()))
            .bind(id)
            .bind(row.try_get::<String, _>("topic")?)
            .bind(row.try_get::<Option<String>, _>("key")?)
            .bind(row.try_get::<i32, _>("partition")?)
            .bind(row.try_get::<String, _>("type")?)
            .bind(row.try_get::<Vec<u8>, _>("payload")?)
            .bind(row.try_get::<String, _>("content_type")?)
            .bind(row.try_get::<String, _>("headers")?)
            .bind(row.try_get::<chrono::DateTime<Utc>, _>("created_at")?)
            .bind(row.try_get::<chrono::DateTime<Utc>, _>("available_at")?)
            .execute(&mut *conn)
            .await?;
        sqlx::query(AssertSqlSafe(mark.as_str()))
            .bind(id)
            .execute(&mut *conn)
            .await?;
        done += 1;
    }
    let elapsed = started.elapsed();
    drop(conn);
    let naive = rate(done, elapsed);
    println!("  loop: SELECT ... ORDER BY seq LIMIT 1; INSERT INTO log ...; UPDATE ... SET sent_at = now()");
    println!("        (autocommit each; continues at once after a row, sleeps 1 s only when the table is empty)");
    println!(
        "  delivered {} rows in {:.2} s: {} msg/s",
        thousands(done as u64),
        elapsed.as_secs_f64(),
        thousands(naive as u64)
    );
    let best = b
        .relay_rates
        .iter()
        .copied()
        .max_by(|x, y| x.1.total_cmp(&y.1));
    match best {
        Some((batch, relay)) => {
            println!(
                "  relay (batch {batch}, {} msg/s) / naive = {:.0}x",
                thousands(relay as u64),
                relay / naive
            );
            b.figure(
                "naive 1-row poller",
                format!(
                    "{} msg/s; relay/naive = {:.0}x",
                    thousands(naive as u64),
                    relay / naive
                ),
                "(info)",
                None,
            );
        }
        None => {
            println!("  relay/naive: n/a (run the drain section too)");
            b.figure(
                "naive 1-row poller",
                format!("{} msg/s", thousands(naive as u64)),
                "(info)",
                None,
            );
        }
    }
    b.reset().await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. Commit-to-handler latency

type SharedHistogram = Arc<Mutex<Histogram<u64>>>;

/// A handler that records `now - created_at` (µs) in `latencies`, and when
/// `starts` is given, its start time per message id.
fn recording_handler(
    latencies: SharedHistogram,
    starts: Option<StartTimes>,
) -> Arc<dyn relaybox::Handler> {
    Arc::new(handler_fn(move |m: Message, _tx| {
        let latencies = latencies.clone();
        let starts = starts.clone();
        async move {
            let now = Utc::now();
            latencies
                .lock()
                .expect("histogram lock")
                .saturating_record(age(now, &m));
            if let Some(starts) = starts {
                starts
                    .lock()
                    .expect("start times lock")
                    .entry(m.id)
                    .or_insert(now);
            }
            Ok::<(), BoxError>(())
        }
    }))
}

/// `now - created_at` of `m`, in µs.
fn age(now: chrono::DateTime<Utc>, m: &Message) -> u64 {
    (now - m.created_at).num_microseconds().unwrap_or(0).max(0) as u64
}

/// Forwards to a `Source` and records, per delivery, `now - created_at` when
/// `fetch` hands it to the consumer.
struct HandOut {
    inner: Arc<dyn relaybox::Source>,
    ages: SharedHistogram,
}

#[async_trait::async_trait]
impl relaybox::Source for HandOut {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn fetch(&self, max: usize, wait: Duration) -> relaybox::Result<Vec<relaybox::Delivery>> {
        let batch = self.inner.fetch(max, wait).await?;
        let now = Utc::now();
        let mut ages = self.ages.lock().expect("histogram lock");
        for d in &batch {
            ages.saturating_record(age(now, &d.message));
        }
        Ok(batch)
    }

    async fn ack(&self, acks: &[relaybox::AckToken]) -> relaybox::Result<()> {
        self.inner.ack(acks).await
    }

    async fn dead_letter(
        &self,
        delivery: &relaybox::Delivery,
        error: &str,
    ) -> relaybox::Result<bool> {
        self.inner.dead_letter(delivery, error).await
    }

    async fn close(&self) -> relaybox::Result<()> {
        self.inner.close().await
    }
}

/// When each message's handler started (wall clock), by message id.
type StartTimes = Arc<Mutex<HashMap<Uuid, chrono::DateTime<Utc>>>>;

/// Where the latency runs record: the handler's start and the source handing
/// each message out (both `now - created_at`, µs), and the handler's start
/// time per message (set against the producer's commit afterwards).
#[derive(Clone)]
struct Clocks {
    handler: SharedHistogram,
    handed: SharedHistogram,
    started: StartTimes,
}

impl Clocks {
    fn new() -> Clocks {
        Clocks {
            handler: Arc::new(Mutex::new(histogram())),
            handed: Arc::new(Mutex::new(histogram())),
            started: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Commit-to-handler latency (µs) of every message `steady` committed:
    /// handler start minus the moment the producer's `commit` returned.
    ///
    /// With `RELAYBOX_BENCH_LATENCY_DUMP=<file>`, also writes one line per
    /// message, in commit order, to `<file>` (a window's later file replaces
    /// an earlier one's): the commit's wall-clock time (UTC, as in the
    /// broker's GC log) and the latency in µs.
    fn since_commit(&self, steady: &Steady) -> Result<Histogram<u64>> {
        let started = self.started.lock().expect("start times lock");
        let mut h = histogram();
        let mut lines = Vec::new();
        for (id, committed) in &steady.committed {
            let start = started
                .get(id)
                .with_context(|| format!("no handler start recorded for message {id}"))?;
            let micros = (*start - *committed).num_microseconds().unwrap_or(0);
            h.saturating_record(micros.max(0) as u64);
            lines.push((*committed, micros));
        }
        if let Ok(path) = std::env::var("RELAYBOX_BENCH_LATENCY_DUMP") {
            lines.sort_unstable();
            let text: String = lines
                .iter()
                .map(|(at, micros)| format!("{} {micros}\n", at.format("%H:%M:%S%.6f")))
                .collect();
            std::fs::write(&path, text).with_context(|| format!("writing {path}"))?;
        }
        Ok(h)
    }

    fn reset(&self) {
        self.handler.lock().expect("histogram lock").reset();
        self.handed.lock().expect("histogram lock").reset();
        self.started.lock().expect("start times lock").clear();
    }
}

/// A relay (DatabaseSink) and a consumer (DatabaseSource) whose handler
/// records `now - created_at` in `clocks`; waits until the relay holds every partition.
async fn start_pipeline(b: &Bench, name: &str, clocks: &Clocks) -> Result<(Relay, Consumer)> {
    let store = b.store.clone();
    let group = format!("bench-{name}");
    let source = DatabaseSource::new(
        store.clone(),
        DatabaseSourceConfig::new(LATENCY_TOPIC, group.clone()),
    )?;
    start_pipeline_with(
        b,
        name,
        Arc::new(DatabaseSink::new(store)),
        source,
        &group,
        clocks,
    )
    .await
}

/// A relay (default settings) on `sink` and a consumer of group `group` on
/// `source` whose handler records `now - created_at` in `clocks` (and the
/// source's hand-out too); waits until the relay holds every partition.
/// The latency runs' relay settings: the defaults, or the JSON object in
/// `RELAYBOX_BENCH_LATENCY_RELAY` (e.g. `{"batches_in_flight": 1}`; keys as
/// in `RelayConfig::from_json`, the rest default).
fn latency_relay_config() -> Result<RelayConfig> {
    match std::env::var("RELAYBOX_BENCH_LATENCY_RELAY") {
        Ok(text) => Ok(RelayConfig::from_json(serde_json::from_str(&text)?)?),
        Err(_) => Ok(RelayConfig::default()),
    }
}

async fn start_pipeline_with(
    b: &Bench,
    name: &str,
    sink: Arc<dyn Sink>,
    source: Arc<dyn relaybox::Source>,
    group: &str,
    clocks: &Clocks,
) -> Result<(Relay, Consumer)> {
    let store = b.store.clone();
    let relay = Relay::start(
        store.clone(),
        sink,
        RelayConfig {
            instance_id: Some(format!("{}{name}", b.prefix)),
            ..latency_relay_config()?
        },
    )?;
    let source = Arc::new(HandOut {
        inner: source,
        ages: clocks.handed.clone(),
    });
    let consumer = Consumer::start(
        store.clone(),
        source,
        recording_handler(clocks.handler.clone(), Some(clocks.started.clone())),
        ConsumerConfig::new(group),
    )?;
    let partitions = u64::from(store.partitions().await?);
    let since = Instant::now();
    while relay.stats().partitions_held < partitions {
        ensure!(
            since.elapsed() < Duration::from_secs(10),
            "the relay did not take its partitions"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((relay, consumer))
}

async fn wait_processed(consumer: &Consumer, n: u64, within: Duration) -> Result<()> {
    let since = Instant::now();
    while consumer.stats().processed < n {
        ensure!(
            since.elapsed() < within,
            "the consumer processed {} of {n} messages in {within:?}",
            consumer.stats().processed
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// What the steady producer of the latency runs did.
struct Steady {
    produced: usize,
    achieved: f64,
    /// begin + enqueue + commit, µs.
    commits: Histogram<u64>,
    /// When each message's `commit` returned (wall clock), by message id.
    committed: HashMap<Uuid, chrono::DateTime<Utc>>,
    /// What was written to disk while the producer ran.
    disk: DiskWrites,
    /// The machine's busy CPU while the producer ran, and how long it ran.
    cpu: (Busy, Duration),
}

/// Writes to disk besides the benchmark's own: checkpoints begun and buffers
/// written by PostgreSQL's checkpointer, and the machine's dirty page cache
/// and disk writes (every process: the broker's log segments too). Read
/// before a window and differenced after it.
#[derive(Clone, Copy, Debug, Default)]
struct DiskWrites {
    checkpoints: i64,
    buffers: i64,
    /// Page cache waiting to be written back (`Dirty` + `Writeback` of
    /// /proc/meminfo), kB; at the window's start.
    dirty_kb: u64,
    /// Written to disk by the whole machine (`pgpgout` of /proc/vmstat), kB.
    written_kb: u64,
}

impl DiskWrites {
    /// The counters now: `pg_stat_checkpointer` on PostgreSQL 17 and later,
    /// `pg_stat_bgwriter` before; /proc for the machine's figures (0 if absent).
    async fn read(b: &Bench) -> Result<DiskWrites> {
        // PostgreSQL 17 moved the checkpointer's counters to their own view.
        let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
            .fetch_one(&b.pool)
            .await?;
        let counters = if version >= 170_000 {
            "SELECT num_timed + num_requested, buffers_written FROM pg_stat_checkpointer"
        } else {
            "SELECT checkpoints_timed + checkpoints_req, buffers_checkpoint FROM pg_stat_bgwriter"
        };
        let (checkpoints, buffers): (i64, i64) =
            sqlx::query_as(counters).fetch_one(&b.pool).await?;
        let field = |file: &str, names: &[&str]| -> u64 {
            std::fs::read_to_string(file)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    let mut parts = l.split_whitespace();
                    let name = parts.next()?.trim_end_matches(':');
                    names
                        .contains(&name)
                        .then(|| parts.next()?.parse::<u64>().ok())?
                })
                .sum()
        };
        Ok(DiskWrites {
            checkpoints,
            buffers,
            dirty_kb: field("/proc/meminfo", &["Dirty", "Writeback"]),
            written_kb: field("/proc/vmstat", &["pgpgout"]),
        })
    }

    /// What happened since `before`; the dirty page cache as it was then.
    fn since(self, before: DiskWrites) -> DiskWrites {
        DiskWrites {
            checkpoints: self.checkpoints - before.checkpoints,
            buffers: self.buffers - before.buffers,
            dirty_kb: before.dirty_kb,
            written_kb: self.written_kb.saturating_sub(before.written_kb),
        }
    }
}

/// One message per transaction, one transaction per 1 ms tick
/// (`MissedTickBehavior::Burst`), at most `LATENCY_IN_FLIGHT` in flight, for
/// `run_for`; message `i` is `make(i)` (its `created_at` is set just before
/// the transaction begins).
async fn produce_steady(
    b: &Bench,
    run_for: Duration,
    make: Arc<dyn Fn(usize) -> Message + Send + Sync>,
) -> Result<Steady> {
    let in_flight = Arc::new(Semaphore::new(LATENCY_IN_FLIGHT));
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut commits = histogram();
    let mut committed = HashMap::new();
    let mut set = JoinSet::new();
    let mut produced = 0usize;
    let disk = DiskWrites::read(b).await?;
    let cpu = MachineCpu::start();
    let started = Instant::now();
    while started.elapsed() < run_for {
        ticker.tick().await;
        let permit = in_flight.clone().acquire_owned().await?;
        let store = b.store.clone();
        let make = make.clone();
        let i = produced;
        produced += 1;
        set.spawn(async move {
            let _permit = permit;
            let m = make(i);
            let id = m.id;
            let begun = Instant::now();
            let tx = store.begin().await?;
            tx.enqueue(m).await?;
            tx.commit().await?;
            let took = begun.elapsed().as_micros() as u64;
            Ok::<_, anyhow::Error>((took, id, Utc::now()))
        });
        while let Some(r) = set.try_join_next() {
            let (took, id, at) = r??;
            commits.saturating_record(took);
            committed.insert(id, at);
        }
    }
    let producing = started.elapsed();
    while let Some(r) = set.join_next().await {
        let (took, id, at) = r??;
        commits.saturating_record(took);
        committed.insert(id, at);
    }
    let cpu = (cpu.stop(), started.elapsed());
    let disk = DiskWrites::read(b).await?.since(disk);
    Ok(Steady {
        produced,
        achieved: rate(produced, producing),
        commits,
        committed,
        disk,
        cpu,
    })
}

struct LatencyRun {
    steady: Steady,
    latency: Histogram<u64>,
    /// (leg, p50 ms, p99 ms), cumulative since `created_at`.
    legs: Vec<(&'static str, f64, f64)>,
    relay_batches: u64,
}

/// Prints the table of latency runs (one row each).
fn print_latency_rows(runs: &[(&str, &Steady, &Histogram<u64>, u64)]) {
    println!(
        "  {:<30} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7}",
        "run",
        "msgs",
        "msg/s",
        "commit50",
        "commit99",
        "p50",
        "p90",
        "p99",
        "max",
        "batches",
        "p99<25"
    );
    for (name, s, h, batches) in runs {
        println!(
            "  {:<30} {:>7} {:>7.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7}",
            name,
            thousands(s.produced as u64),
            s.achieved,
            ms(s.commits.value_at_quantile(0.5)),
            ms(s.commits.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
            thousands(*batches),
            verdict(Some(p99_met(h))),
        );
    }
    println!("  latency (p50..max) = handler start - the producer's commit returning;");
    println!("  commit50/99 = the producer's begin+enqueue+commit; batches = relay batches");
    for (name, s, _, _) in runs {
        println!(
            "  {name}: while producing, PostgreSQL's checkpointer began {} checkpoint(s) and wrote {} buffers;",
            s.disk.checkpoints,
            thousands(s.disk.buffers.max(0) as u64)
        );
        println!(
            "    the machine had {} MB of page cache to write back at the start and wrote {} MB to disk",
            s.disk.dirty_kb / 1024,
            s.disk.written_kb / 1024
        );
        let (busy, wall) = s.cpu;
        let per = |seconds: f64| seconds * 1e6 / s.produced.max(1) as f64;
        println!(
            "    its {} cores were {:.0}% busy: {:.0} us of CPU per message (this process {:.0}, PostgreSQL {:.0}, broker {:.0})",
            cores(),
            100.0 * busy.machine / (wall.as_secs_f64() * cores() as f64).max(f64::MIN_POSITIVE),
            per(busy.machine),
            per(busy.own),
            per(busy.postgres),
            per(busy.java)
        );
    }
}

async fn section_latency(b: &mut Bench) -> Result<()> {
    let run_for = b.sizes.latency_for;
    header(&format!(
        "5. Commit-to-handler latency at 1,000 msg/s for {} s (relay + DatabaseSink + consumer)",
        run_for.as_secs()
    ));
    let main = latency_run(b, "latency").await?;
    println!(
        "  producer: ticks every 1 ms (MissedTickBehavior::Burst), 1 msg per tx, <= {LATENCY_IN_FLIGHT} tx in flight"
    );
    print_latency_rows(&[(
        "relay + consumer",
        &main.steady,
        &main.latency,
        main.relay_batches,
    )]);
    println!(
        "  where the time goes (per message, since created_at; cumulative; the log's appended_at"
    );
    println!("  and the inbox's processed_at are now() = the start of the relay's and consumer's transactions):");
    for (leg, p50, p99) in &main.legs {
        println!("  {leg:<50} p50 {p50:>8.2} ms  p99 {p99:>8.2} ms");
    }
    let h = &main.latency;
    b.figure(
        "latency p50 / p99 / max @1k msg/s",
        format!(
            "{} / {} / {} ({:.0} msg/s achieved)",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
            main.steady.achieved
        ),
        "p99 < 25 ms",
        Some(p99_met(h)),
    );
    if b.sizes.diagnostics_batch.is_some() {
        let n = CAPACITY_MESSAGES;
        let r = database_consumer_capacity(b, n, message).await?;
        println!(
            "  consumer capacity: Consumer + DatabaseSource (default ConsumerConfig), {} messages waiting",
            thousands(n as u64)
        );
        println!(
            "  in the log, a handler that does nothing: {} msg/s from the first handled to the last",
            thousands(r as u64)
        );
        b.figure(
            "consumer capacity (DatabaseSource)",
            format!("{} msg/s", thousands(r as u64)),
            "(info)",
            None,
        );
    }
    Ok(())
}

/// How long the latency runs load the pipeline at their rate before the
/// window, not counted.
const WARM_UP_FOR: Duration = Duration::from_secs(1);

/// Loads the pipeline at the window's rate for [`WARM_UP_FOR`], not counted,
/// so that the window starts in the steady state (connection pools grown,
/// every lane busy before), then lets it go idle for 500 ms. Returns how many
/// messages `consumer` has processed then, `before` of them earlier.
async fn warm_up(
    b: &Bench,
    consumer: &Consumer,
    make: Arc<dyn Fn(usize) -> Message + Send + Sync>,
    before: u64,
) -> Result<u64> {
    let warm = produce_steady(b, WARM_UP_FOR, make).await?;
    let processed = before + warm.produced as u64;
    wait_processed(consumer, processed, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(processed)
}

fn p99_met(h: &Histogram<u64>) -> bool {
    (h.value_at_quantile(0.99) as f64 / 1000.0) < P99_TARGET_MS
}

async fn latency_run(b: &Bench, name: &str) -> Result<LatencyRun> {
    let run_for = b.sizes.latency_for;
    b.reset().await?;
    b.settle().await?;
    let clocks = Clocks::new();
    let (relay, consumer) = start_pipeline(b, name, &clocks).await?;
    let make: Arc<dyn Fn(usize) -> Message + Send + Sync> = Arc::new(|i| message(LATENCY_TOPIC, i));
    let outcome = async {
        let warmed = warm_up(b, &consumer, make.clone(), 0).await?;
        clocks.reset();
        let from = Utc::now();
        let batches_before = relay.stats().batches;
        let steady = produce_steady(b, run_for, make).await?;
        let processed = warmed + steady.produced as u64;
        wait_processed(&consumer, processed, Duration::from_secs(30)).await?;
        Ok::<_, anyhow::Error>((steady, from, relay.stats().batches - batches_before))
    }
    .await;
    consumer.shutdown().await?;
    relay.shutdown().await?;
    let (steady, from, relay_batches) = outcome?;
    let since_created = clocks.handler.lock().expect("histogram lock").clone();
    ensure!(
        since_created.len() == steady.produced as u64,
        "recorded {} latencies for {} messages",
        since_created.len(),
        steady.produced
    );
    let latency = clocks.since_commit(&steady)?;
    let [relay_leg, inbox_leg] = latency_legs(b, &format!("bench-{name}"), from).await?;
    let handed = clocks.handed.lock().expect("histogram lock").clone();
    let quantiles = |h: &Histogram<u64>| {
        (
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
        )
    };
    let (handed50, handed99) = quantiles(&handed);
    let (handler50, handler99) = quantiles(&since_created);
    let legs = vec![
        ("-> relay's log append tx starts", relay_leg.0, relay_leg.1),
        ("-> DatabaseSource::fetch returns it", handed50, handed99),
        ("-> consumer's inbox tx starts", inbox_leg.0, inbox_leg.1),
        ("-> handler starts", handler50, handler99),
    ];
    b.reset().await?;
    Ok(LatencyRun {
        steady,
        latency,
        legs,
        relay_batches,
    })
}

/// (p50, p99) in ms since `created_at` of the log's `appended_at` and of the
/// inbox's `processed_at`.
/// The legs of the messages created from `from` on (the window, not its warm-up).
async fn latency_legs(
    b: &Bench,
    group: &str,
    from: chrono::DateTime<Utc>,
) -> Result<[(f64, f64); 2]> {
    let (log, inbox) = (b.table("log"), b.table("inbox"));
    let sql = format!(
        "WITH t AS (SELECT extract(epoch FROM l.appended_at - l.created_at) * 1000 AS relay, \
                           extract(epoch FROM i.processed_at - l.created_at) * 1000 AS consumer \
                    FROM {log} l JOIN {inbox} i ON i.message_id = l.id AND i.consumer_group = $1 \
                    WHERE l.created_at >= $2) \
         SELECT percentile_disc(ARRAY[0.5, 0.99]::float8[]) WITHIN GROUP (ORDER BY relay)::float8[], \
                percentile_disc(ARRAY[0.5, 0.99]::float8[]) WITHIN GROUP (ORDER BY consumer)::float8[] FROM t"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(group)
        .bind(from)
        .fetch_one(&b.pool)
        .await?;
    let relay: Vec<f64> = row.try_get(0)?;
    let consumer: Vec<f64> = row.try_get(1)?;
    ensure!(relay.len() == 2 && consumer.len() == 2, "no latency legs");
    Ok([(relay[0], relay[1]), (consumer[0], consumer[1])])
}

/// How fast a `Consumer` (default `ConsumerConfig`) with a `DatabaseSource`
/// handles `n` messages `make(topic, i)` already in the log.
async fn database_consumer_capacity(b: &Bench, n: usize, make: MakeMessage) -> Result<f64> {
    b.reset().await?;
    let topic = "bench.capacity";
    let messages: Vec<Message> = (0..n).map(|i| make(topic, i)).collect();
    for chunk in messages.chunks(1000) {
        b.store.append_log(chunk).await?;
    }
    let group = "bench-capacity";
    let source = DatabaseSource::new(b.store.clone(), DatabaseSourceConfig::new(topic, group))?;
    let r = measure_consumer(b, source, group, n).await?;
    b.reset().await?;
    Ok(r)
}

/// Starts a consumer (default `ConsumerConfig`) on `source` with `n`
/// messages waiting and a handler that does nothing; its rate from the first
/// handled message to the last.
async fn measure_consumer(
    b: &Bench,
    source: Arc<dyn relaybox::Source>,
    group: &str,
    n: usize,
) -> Result<f64> {
    let consumer = Consumer::start(
        b.store.clone(),
        source,
        recording_handler(Arc::new(Mutex::new(histogram())), None),
        ConsumerConfig::new(group),
    )?;
    let outcome = async {
        let since = Instant::now();
        while consumer.stats().processed == 0 {
            ensure!(
                since.elapsed() < Duration::from_secs(60),
                "the consumer handled nothing in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (t0, p0) = (Instant::now(), consumer.stats().processed);
        wait_processed(&consumer, n as u64, Duration::from_secs(180)).await?;
        Ok(rate((n as u64 - p0) as usize, t0.elapsed()))
    }
    .await;
    consumer.shutdown().await?;
    outcome
}

// ---------------------------------------------------------------------------
// 6. Idle CPU

/// (comm, utime + stime in clock ticks) of /proc/<pid>/stat.
fn proc_stat(path: &str) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    // Fields after the command: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// (comm, CPU ticks) of every process, by pid.
fn process_ticks() -> HashMap<i32, (String, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(stat) = proc_stat(&format!("/proc/{pid}/stat")) {
            out.insert(pid, stat);
        }
    }
    out
}

/// CPU ticks of every process named `postgres`, by pid.
fn postgres_ticks() -> HashMap<i32, u64> {
    process_ticks()
        .into_iter()
        .filter(|(_, (comm, _))| comm == "postgres")
        .map(|(pid, (_, ticks))| (pid, ticks))
        .collect()
}

/// CPU seconds that the processes named `comm` used between two
/// [`process_ticks`] snapshots (a process that started in between counts
/// from zero; one that exited in between is not counted).
fn ticks_between(
    before: &HashMap<i32, (String, u64)>,
    after: &HashMap<i32, (String, u64)>,
    comm: &str,
) -> f64 {
    let ticks: u64 = after
        .iter()
        .filter(|(_, (c, _))| c == comm)
        .map(|(pid, (_, t))| {
            let earlier = before
                .get(pid)
                .filter(|(c, _)| c == comm)
                .map_or(0, |(_, t0)| *t0);
            t.saturating_sub(earlier)
        })
        .sum();
    ticks as f64 / clock_ticks_per_second()
}

/// This process's CPU time over `window` of sleeping, as % of one core.
async fn own_cpu_over(window: Duration) -> f64 {
    let before = proc_stat("/proc/self/stat").map_or(0, |s| s.1);
    let wall0 = Instant::now();
    tokio::time::sleep(window).await;
    let wall = wall0.elapsed().as_secs_f64();
    let after = proc_stat("/proc/self/stat").map_or(0, |s| s.1);
    100.0 * after.saturating_sub(before) as f64 / clock_ticks_per_second() / wall
}

/// `getconf CLK_TCK`, asked once per process.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// Cores this process may run on (`nproc`).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Busy CPU time of the whole machine (every process: this one, PostgreSQL,
/// the broker) since boot, in seconds: the `cpu` line of /proc/stat, all but
/// idle and iowait.
fn machine_busy_seconds() -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    busy as f64 / clock_ticks_per_second()
}

/// CPU seconds this process has used (`/proc/self/stat` utime + stime).
fn own_cpu_seconds() -> f64 {
    proc_stat("/proc/self/stat").map_or(0.0, |s| s.1 as f64) / clock_ticks_per_second()
}

/// CPU seconds this process's children have used, once they have exited
/// and been waited for (`/proc/self/stat` cutime + cstime).
fn children_cpu_seconds() -> f64 {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|text| {
            let close = text.rfind(')')?;
            let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
            let cutime: u64 = fields.get(13)?.parse().ok()?;
            let cstime: u64 = fields.get(14)?.parse().ok()?;
            Some(cutime + cstime)
        })
        .unwrap_or(0);
    ticks as f64 / clock_ticks_per_second()
}

/// Busy CPU seconds over a timed interval: the whole machine's, and the
/// shares of this process, of its children that exited and were waited for
/// in the interval (a relay program it ran), of PostgreSQL's processes and
/// of the JVM's (the Kafka broker).
#[derive(Clone, Copy)]
struct Busy {
    machine: f64,
    own: f64,
    children: f64,
    postgres: f64,
    java: f64,
}

/// Starts clocking the machine's CPU for a timed interval.
struct MachineCpu {
    machine: f64,
    own: f64,
    children: f64,
    processes: HashMap<i32, (String, u64)>,
}

impl MachineCpu {
    fn start() -> MachineCpu {
        MachineCpu {
            machine: machine_busy_seconds(),
            own: own_cpu_seconds(),
            children: children_cpu_seconds(),
            processes: process_ticks(),
        }
    }

    /// Ends the interval: its busy CPU.
    fn stop(self) -> Busy {
        let machine = machine_busy_seconds() - self.machine;
        let own = own_cpu_seconds() - self.own;
        let children = children_cpu_seconds() - self.children;
        let processes = process_ticks();
        Busy {
            machine,
            own,
            children,
            postgres: ticks_between(&self.processes, &processes, "postgres"),
            java: ticks_between(&self.processes, &processes, "java"),
        }
    }
}

async fn backend_pids(b: &Bench) -> Result<Vec<i32>> {
    Ok(sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&b.app_name)
    .fetch_all(&b.pool)
    .await?)
}

async fn section_idle(b: &mut Bench) -> Result<()> {
    let window = b.sizes.idle_for;
    header(&format!(
        "6. CPU while idle ({} s, relay + consumer running, no traffic)",
        window.as_secs()
    ));
    b.reset().await?;
    let (relay, consumer) = start_pipeline(b, "idle", &Clocks::new()).await?;
    // Some traffic first, so that everything is warm and then drained.
    let warm = 100;
    for i in 0..warm {
        let tx = b.store.begin().await?;
        tx.enqueue(message(LATENCY_TOPIC, i)).await?;
        tx.commit().await?;
    }
    let outcome = async {
        wait_processed(&consumer, warm as u64, Duration::from_secs(30)).await?;
        ensure!(b.store.pending_count().await? == 0, "outbox not drained");
        tokio::time::sleep(Duration::from_millis(1500)).await;

        let ours = backend_pids(b).await?;
        let tck = clock_ticks_per_second();
        let me0 = proc_stat("/proc/self/stat").map_or(0, |s| s.1);
        let pg0 = postgres_ticks();
        let wall0 = Instant::now();
        tokio::time::sleep(window).await;
        let wall = wall0.elapsed().as_secs_f64();
        let me1 = proc_stat("/proc/self/stat").map_or(0, |s| s.1);
        let pg1 = postgres_ticks();
        let delta = |pids: &mut dyn Iterator<Item = i32>| -> u64 {
            pids.map(|p| {
                pg1.get(&p)
                    .unwrap_or(&0)
                    .saturating_sub(*pg0.get(&p).unwrap_or(&0))
            })
            .sum()
        };
        let pct = |ticks: u64| 100.0 * ticks as f64 / tck / wall;
        let me = pct(me1.saturating_sub(me0));
        let pg_all = pct(delta(&mut pg1.keys().copied()));
        let pg_ours = pct(delta(&mut ours.iter().copied()));
        Ok((me, pg_all, pg_ours, ours.len(), pg1.len(), wall))
    }
    .await;
    let delivered = relay.stats().delivered;
    consumer.shutdown().await?;
    relay.shutdown().await?;
    let (me, pg_all, pg_ours, n_ours, n_all, wall) = outcome?;
    ensure!(
        delivered == warm as u64,
        "relay delivered {delivered} of {warm}"
    );
    let tick = 100.0 / clock_ticks_per_second() / wall;
    println!(
        "  CPU time over {wall:.1} s, % of one core (/proc/<pid>/stat utime+stime; 1 tick = {tick:.2}%):"
    );
    let rows = [
        ("this process (relay + consumer)".to_string(), me),
        (format!("postgres: this run's {n_ours} backends"), pg_ours),
        (format!("postgres: all {n_all} processes"), pg_all),
    ];
    for (name, pct) in rows {
        println!(
            "  {:<42} {:>7.2}%   target < {IDLE_TARGET}%  {}",
            name,
            pct,
            verdict(Some(pct < IDLE_TARGET))
        );
    }
    println!("  (all postgres processes include the server's background workers and any other");
    println!("   sessions on this server, e.g. tests run by others at the same time)");
    b.figure(
        "idle CPU, this process",
        format!("{me:.2}% of a core"),
        "~0% (< 1%)",
        Some(me < IDLE_TARGET),
    );
    b.figure(
        "idle CPU, this run's PG backends",
        format!("{pg_ours:.2}% of a core"),
        "~0% (< 1%)",
        Some(pg_ours < IDLE_TARGET),
    );
    b.figure(
        "idle CPU, all postgres processes",
        format!("{pg_all:.2}% of a core"),
        "~0% (< 1%)",
        Some(pg_all < IDLE_TARGET),
    );
    b.reset().await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Explain (opt-in): the relay's statements on a full backlog

/// The lease owner the `explain` section's claim runs as.
const EXPLAIN_OWNER: &str = "bench-explain";

/// The relay's claim statement, as in core/src/store/postgres.rs (`claim_sql`).
fn claim_sql(p: &str) -> String {
    format!(
        "WITH held AS MATERIALIZED (SELECT partition FROM {p}leases \
             WHERE owner = $1 AND expires_at > now() AND partition % $2 = $3 ORDER BY partition FOR KEY SHARE) \
         SELECT o.ctid::text AS row_address, o.seq, o.partition, o.attempts, o.id, o.topic, o.key, o.type, o.payload, o.content_type, o.headers::text AS headers, o.created_at, o.available_at \
         FROM {p}outbox o \
         WHERE EXISTS (SELECT 1 FROM held) \
         AND o.sent_at IS NULL AND o.partition = ANY(ARRAY(SELECT partition FROM held)) AND o.available_at <= now() \
         AND NOT EXISTS (SELECT 1 FROM {p}outbox h WHERE h.available_at > h.created_at AND h.sent_at IS NULL \
             AND h.partition = o.partition AND h.key = o.key AND h.seq < o.seq AND h.available_at > now()) \
         ORDER BY o.seq LIMIT $4 FOR UPDATE OF o SKIP LOCKED"
    )
}

/// The fused relay path's statement (claim, delete, append to the log), as in
/// core/src/store/postgres.rs (`move_to_log_sql` with the DELETE).
fn move_to_log_sql(p: &str) -> String {
    format!(
        "WITH claimed AS (SELECT o.ctid FROM {p}outbox o \
             WHERE o.sent_at IS NULL AND o.partition = ANY($1) AND o.available_at <= now() \
             AND NOT EXISTS (SELECT 1 FROM {p}outbox h WHERE h.available_at > h.created_at AND h.sent_at IS NULL \
                 AND h.partition = o.partition AND h.key = o.key AND h.seq < o.seq AND h.available_at > now()) \
             ORDER BY o.seq LIMIT $2 FOR UPDATE OF o SKIP LOCKED), \
         taken AS (DELETE FROM {p}outbox o WHERE o.ctid = ANY(ARRAY(SELECT ctid FROM claimed)) RETURNING o.seq, o.id, o.topic, o.key, o.partition, o.type, o.payload, o.content_type, o.headers, o.created_at, o.available_at) \
         INSERT INTO {p}log (id, topic, key, partition, type, payload, content_type, headers, created_at, available_at, appended_at) \
         SELECT id, topic, key, partition, type, payload, content_type, headers, created_at, available_at, now() FROM taken ORDER BY seq"
    )
}

/// The database transport's log append, as in core/src/store/postgres.rs (`log_append`).
fn log_append_sql(p: &str) -> String {
    format!(
        "INSERT INTO {p}log (id, topic, key, partition, type, payload, content_type, headers, created_at, available_at, appended_at) \
         SELECT u.id, u.topic, u.key, u.partition, u.type, u.payload, u.content_type, u.headers::jsonb, u.created_at, u.available_at, now() \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::text[], $6::bytea[], $7::text[], $8::text[], $9::timestamptz[], $10::timestamptz[]) WITH ORDINALITY \
         AS u(id, topic, key, partition, type, payload, content_type, headers, created_at, available_at, ord) ORDER BY u.ord"
    )
}

async fn explain(
    conn: &mut PgConnection,
    sql: &str,
    bind: impl FnOnce(ExplainQuery) -> ExplainQuery,
) -> Result<()> {
    let text = format!("EXPLAIN (ANALYZE, BUFFERS, TIMING) {sql}");
    let mut tx = conn.begin().await?;
    let rows: Vec<String> = bind(sqlx::query_scalar(AssertSqlSafe(text)))
        .fetch_all(&mut *tx)
        .await?;
    tx.rollback().await?;
    for line in rows {
        println!("    {line}");
    }
    Ok(())
}

type ExplainQuery =
    sqlx::query::QueryScalar<'static, sqlx::Postgres, String, sqlx::postgres::PgArguments>;

async fn section_explain(b: &mut Bench) -> Result<()> {
    let n = b.sizes.backlog;
    let batch = 1000i64;
    header(&format!(
        "Explain: the relay's statements on a {}-row backlog (batch {batch}; rolled back)",
        thousands(n as u64)
    ));
    b.backlog(n, TOPIC).await?;
    let p = b.prefix.clone();
    let partitions: Vec<i32> = (0..b.store.partitions().await? as i32).collect();
    let mut conn = b.pool.acquire().await?;
    // The claim locks the leases of its owner: one that holds them all.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "UPDATE {p}leases SET owner = '{EXPLAIN_OWNER}', expires_at = now() + interval '1 hour'"
    )))
    .execute(&mut *conn)
    .await?;
    for mode in ["force_custom_plan", "force_generic_plan"] {
        sqlx::raw_sql(AssertSqlSafe(format!("SET plan_cache_mode = {mode}")))
            .execute(&mut *conn)
            .await?;
        println!("  claim (one batch loop holding every partition), plan_cache_mode = {mode}:");
        explain(&mut conn, &claim_sql(&p), |q| {
            q.bind(EXPLAIN_OWNER).bind(1i32).bind(0i32).bind(batch)
        })
        .await?;
    }
    sqlx::raw_sql("RESET plan_cache_mode")
        .execute(&mut *conn)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "UPDATE {p}leases SET owner = NULL, expires_at = now()"
    )))
    .execute(&mut *conn)
    .await?;
    for limit in [batch, 2 * batch] {
        println!("  move_to_log (the fused DatabaseSink path), LIMIT {limit}:");
        explain(&mut conn, &move_to_log_sql(&p), |q| {
            q.bind(partitions.clone()).bind(limit)
        })
        .await?;
    }

    // The log append of one batch, with the messages of the first claimable batch.
    let rows = b.store.read_log(TOPIC, 0, 1).await?;
    ensure!(rows.is_empty(), "the log should be empty");
    let messages: Vec<Message> = (0..batch as usize).map(|i| message(TOPIC, i)).collect();
    let n_parts = partitions.len() as u32;
    let headers: Vec<String> = messages
        .iter()
        .map(|m| serde_json::to_string(&m.headers).expect("headers"))
        .collect();
    println!("  log_append of {batch} messages:");
    explain(&mut conn, &log_append_sql(&p), |q| {
        q.bind(messages.iter().map(|m| m.id).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| m.topic.clone()).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| m.key.clone()).collect::<Vec<_>>())
            .bind(
                messages
                    .iter()
                    .map(|m| {
                        relaybox::partition::partition_for(m.key.as_deref(), &m.id, n_parts) as i32
                    })
                    .collect::<Vec<_>>(),
            )
            .bind(
                messages
                    .iter()
                    .map(|m| m.event_type.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(
                messages
                    .iter()
                    .map(|m| m.payload.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(
                messages
                    .iter()
                    .map(|m| m.content_type.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(headers.clone())
            .bind(messages.iter().map(|m| m.created_at).collect::<Vec<_>>())
            .bind(messages.iter().map(|m| m.available_at).collect::<Vec<_>>())
    })
    .await?;
    drop(conn);
    b.reset().await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// 8. Kafka (opt-in): PostgreSQL -> Kafka drain, its two ceilings, a naive
// poller and commit-to-handler latency through a real broker

#[cfg(not(feature = "kafka"))]
async fn section_kafka(_b: &mut Bench, _latency_only: bool) -> Result<()> {
    bail!("the kafka section needs relaybox's `kafka` feature (on by default)")
}

#[cfg(not(feature = "kafka"))]
async fn delete_kafka_leftovers(_b: &Bench) {}

#[cfg(not(feature = "kafka"))]
async fn relay_child(_args: &[String]) -> Result<()> {
    bail!("the relay process needs relaybox's `kafka` feature (on by default)")
}

/// The hidden first argument that makes this program a relay process (see
/// `relay_child`), used by the Kafka section's takeover measurement.
const RELAY_CHILD: &str = "__relay-process";

#[cfg(feature = "kafka")]
use kafka::{delete_kafka_leftovers, relay_child, section_kafka};

#[cfg(feature = "kafka")]
mod kafka {
    use std::collections::{BTreeMap, VecDeque};
    use std::path::{Path, PathBuf};
    use std::process::Stdio;

    use tokio::io::{AsyncBufReadExt, BufReader};

    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, DeliveryFuture, FutureProducer, FutureRecord, Producer};
    use rdkafka::util::Timeout;
    use rdkafka::ClientConfig;
    use relaybox::message::micros_rfc3339;
    use relaybox::transport::kafka::{
        KafkaConfig, KafkaSink, KafkaSource, KafkaSourceConfig, HEADER_CONTENT_TYPE,
        HEADER_CREATED_AT, HEADER_ID, HEADER_TYPE,
    };

    use super::*;

    /// Bootstrap servers of the broker (exported by `dev/services env`).
    const BOOTSTRAP_ENV: &str = "RELAYBOX_KAFKA_BOOTSTRAP";
    /// Payload size of this section's messages.
    const PAYLOAD_BYTES: usize = 256;
    /// Partitions of the topics this section creates.
    const PARTITIONS: i32 = 6;
    /// Distinct keys of this section's messages.
    const KAFKA_KEYS: usize = 100;
    /// Batch of the PostgreSQL ceiling: the relay's largest (`RelayConfig`'s default `batch_size`).
    const PG_CEILING_BATCH: u32 = 5000;
    /// Drain rate target: relaybox / the hand-tuned relay.
    const VS_HAND_TUNED_TARGET: f64 = 2.0;
    /// Drain rate target: relaybox / rdkafka alone.
    const VS_RDKAFKA_TARGET: f64 = 0.80;
    /// Machine CPU per message target: relaybox / the hand-tuned relay.
    const CPU_VS_HAND_TUNED_TARGET: f64 = 0.5;
    /// Takeover target: from SIGKILL to the killed relay's partitions delivered again.
    const TAKEOVER_TARGET: Duration = Duration::from_secs(2);
    /// `KafkaConfig::delivery_timeout`'s default: how long a send waits for its report.
    const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
    /// Warm-up messages of the latency run (until the consumer has joined its group).
    const WARM_UP: usize = 50;

    /// The `i`th message of this section: exactly 256 bytes of JSON
    /// (`order_id` = `i`), key `customer-<i % KAFKA_KEYS>`, type `OrderPlaced`.
    /// The third-party reader (bench/check_topic.py) relies on this shape.
    pub(super) fn kafka_message(topic: &str, i: usize) -> Message {
        let key = format!("customer-{:04}", i % KAFKA_KEYS);
        let body = |pad: usize| {
            serde_json::json!({
                "order_id": i,
                "customer": key,
                "amount_cents": (i * 7919) % 100_000,
                "currency": "EUR",
                "sku": format!("SKU-{:05}", i % 50_000),
                "qty": 1 + i % 5,
                "pad": "x".repeat(pad),
            })
        };
        let bare = serde_json::to_vec(&body(0)).expect("JSON").len();
        let value = body(PAYLOAD_BYTES.saturating_sub(bare));
        Message::json(topic, &value)
            .expect("a JSON payload")
            .with_key(key)
            .with_type("OrderPlaced")
    }

    /// The librdkafka settings `KafkaSink::new` uses with a default
    /// `KafkaConfig` (core/src/transport/kafka/sink.rs); kept in step by hand.
    fn sink_settings(bootstrap: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("batch.num.messages", "10000")
            .set("message.timeout.ms", "0")
            .set("allow.auto.create.topics", "false");
        for (k, v) in extra_producer_properties() {
            c.set(k, v);
        }
        c
    }

    /// Producer properties from `RELAYBOX_BENCH_KAFKA_PROPS` (`k=v,k=v`),
    /// applied to the ceiling's producer and the relay's `KafkaSink` alike.
    fn extra_producer_properties() -> Vec<(String, String)> {
        std::env::var("RELAYBOX_BENCH_KAFKA_PROPS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    }

    /// The relay's Kafka settings: `create_topics`, `PARTITIONS` partitions.
    fn kafka_config(bootstrap: &str) -> KafkaConfig {
        let mut config = KafkaConfig {
            create_topics: true,
            topic_partitions: PARTITIONS,
            ..KafkaConfig::new(bootstrap)
        };
        config
            .producer_properties
            .extend(extra_producer_properties());
        config
    }

    /// The record headers `KafkaSink` sends (codec.rs `headers_of`).
    fn record_headers(m: &Message) -> OwnedHeaders {
        let id = m.id.to_string();
        let created = micros_rfc3339::format(&m.created_at);
        let mut h = OwnedHeaders::new_with_capacity(4 + m.headers.len());
        for (key, value) in [
            (HEADER_ID, id.as_str()),
            (HEADER_TYPE, m.event_type.as_str()),
            (HEADER_CONTENT_TYPE, m.content_type.as_str()),
            (HEADER_CREATED_AT, created.as_str()),
        ] {
            h = h.insert(Header {
                key,
                value: Some(value),
            });
        }
        for (k, v) in &m.headers {
            h = h.insert(Header {
                key: k.as_str(),
                value: Some(v.as_str()),
            });
        }
        h
    }

    /// The record `KafkaSink` builds for `m`, sent to `topic`.
    fn record<'a>(topic: &'a str, m: &'a Message) -> FutureRecord<'a, str, [u8]> {
        let mut r = FutureRecord::<str, [u8]>::to(topic)
            .payload(&m.payload)
            .headers(record_headers(m))
            .timestamp(m.created_at.timestamp_millis());
        if let Some(key) = &m.key {
            r = r.key(key.as_str());
        }
        r
    }

    async fn delivered(d: DeliveryFuture) -> Result<()> {
        match d.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => bail!("a delivery failed: {e}"),
            Err(_) => bail!("the producer dropped a delivery report"),
        }
    }

    /// Admin and metadata access to the broker.
    struct Broker {
        bootstrap: String,
        admin: AdminClient<DefaultClientContext>,
        /// A producer used for metadata and watermarks only. A `BaseProducer`
        /// starts no polling thread, so it costs nothing while the idle CPU is
        /// measured.
        meta: Arc<BaseProducer>,
    }

    impl Broker {
        fn connect(bootstrap: &str) -> Result<Broker> {
            Ok(Broker {
                bootstrap: bootstrap.to_string(),
                admin: ClientConfig::new()
                    .set("bootstrap.servers", bootstrap)
                    .create()
                    .context("creating a Kafka admin client")?,
                meta: Arc::new(
                    sink_settings(bootstrap)
                        .create()
                        .context("creating a Kafka producer")?,
                ),
            })
        }

        /// "N broker(s): id@host:port ...".
        async fn describe(&self) -> Result<String> {
            let meta = self.meta.clone();
            let md = tokio::task::spawn_blocking(move || {
                meta.client().fetch_metadata(None, Duration::from_secs(10))
            })
            .await?
            .context("fetching Kafka metadata: is the broker up?")?;
            let brokers: Vec<String> = md
                .brokers()
                .iter()
                .map(|b| format!("id {} at {}:{}", b.id(), b.host(), b.port()))
                .collect();
            Ok(format!(
                "{} broker(s): {}",
                brokers.len(),
                brokers.join(", ")
            ))
        }

        /// Creates `topic` with `partitions` partitions (replication 1).
        async fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
            let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
            let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            for r in self.admin.create_topics([&new], &options).await? {
                match r {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((name, code)) => bail!("could not create topic {name}: {code}"),
                }
            }
            Ok(())
        }

        /// Waits until `topic` has `partitions` partitions, each with a leader.
        async fn wait_ready(&self, topic: &str, partitions: i32) -> Result<()> {
            let since = Instant::now();
            loop {
                let meta = self.meta.clone();
                let name = topic.to_string();
                let md = tokio::task::spawn_blocking(move || {
                    meta.client()
                        .fetch_metadata(Some(&name), Duration::from_secs(5))
                })
                .await??;
                let ready = md.topics().iter().any(|t| {
                    t.name() == topic
                        && t.error().is_none()
                        && t.partitions().len() == partitions as usize
                        && t.partitions()
                            .iter()
                            .all(|p| p.error().is_none() && p.leader() >= 0)
                });
                if ready {
                    return Ok(());
                }
                ensure!(
                    since.elapsed() < Duration::from_secs(30),
                    "topic {topic} has no leaders after 30 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        /// Records in `topic` (of `partitions` partitions): the sum of its
        /// partitions' high - low watermarks.
        async fn records(&self, topic: &str, partitions: i32) -> Result<i64> {
            let meta = self.meta.clone();
            let name = topic.to_string();
            tokio::task::spawn_blocking(move || {
                let mut total = 0;
                for p in 0..partitions {
                    let (low, high) =
                        meta.client()
                            .fetch_watermarks(&name, p, Duration::from_secs(10))?;
                    total += high - low;
                }
                Ok::<i64, KafkaError>(total)
            })
            .await?
            .map_err(Into::into)
        }
    }

    /// Forwards to the wrapped sink (so the relay's path is unchanged: a
    /// `KafkaSink` has no `log_store()` either, and `send` is forwarded so the
    /// relay pipelines alike) and measures, per message, `now - created_at`
    /// when `send` is called and when the batch's reports are in.
    struct Clocked {
        inner: Arc<dyn Sink>,
        called: SharedHistogram,
        acked: SharedHistogram,
        /// Itself, for the acknowledgement futures `send` returns.
        me: Mutex<std::sync::Weak<Clocked>>,
    }

    impl Clocked {
        fn new(inner: Arc<dyn Sink>) -> Arc<Clocked> {
            let clocked = Arc::new(Clocked {
                inner,
                called: Arc::new(Mutex::new(histogram())),
                acked: Arc::new(Mutex::new(histogram())),
                me: Mutex::new(std::sync::Weak::new()),
            });
            *clocked.me.lock().expect("self lock") = Arc::downgrade(&clocked);
            clocked
        }

        fn reset(&self) {
            self.called.lock().expect("histogram lock").reset();
            self.acked.lock().expect("histogram lock").reset();
        }

        fn ages(h: &SharedHistogram, batch: &[Message]) {
            let now = Utc::now();
            let mut h = h.lock().expect("histogram lock");
            for m in batch {
                let micros = (now - m.created_at).num_microseconds().unwrap_or(0);
                h.saturating_record(micros.max(0) as u64);
            }
        }
    }

    #[async_trait::async_trait]
    impl Sink for Clocked {
        fn name(&self) -> &str {
            self.inner.name()
        }

        async fn publish(&self, batch: &[Message]) -> Vec<relaybox::Result<()>> {
            Clocked::ages(&self.called, batch);
            let results = self.inner.publish(batch).await;
            Clocked::ages(&self.acked, batch);
            results
        }

        /// Forwards the hand-over too, so the relay pipelines as with a bare
        /// `KafkaSink`; the acknowledgement clock stops when the acks resolve.
        async fn send(&self, batch: &[Message]) -> relaybox::Acks {
            Clocked::ages(&self.called, batch);
            let acks = self.inner.send(batch).await;
            let me = self.me.lock().expect("self lock").upgrade();
            let batch = batch.to_vec();
            Box::pin(async move {
                let results = acks.await;
                if let Some(me) = me {
                    Clocked::ages(&me.acked, &batch);
                }
                results
            })
        }
    }

    /// A fresh topic name of this run (deleted at the end).
    fn new_topic(b: &mut Bench, what: &str) -> String {
        let random = Uuid::now_v7().simple().to_string();
        let topic = format!("{}{}-{what}", b.prefix, &random[random.len() - 6..]);
        b.kafka_topics.push(topic.clone());
        topic
    }

    /// The rows of one interleaved run of the drains.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum DrainRow {
        CeilingPg,
        CeilingRdkafka,
        Relaybox,
        HandTuned,
    }

    const ROWS: [DrainRow; 4] = [
        DrainRow::CeilingPg,
        DrainRow::CeilingRdkafka,
        DrainRow::Relaybox,
        DrainRow::HandTuned,
    ];

    impl DrainRow {
        fn name(self) -> String {
            match self {
                DrainRow::CeilingPg => {
                    format!("ceiling: PostgreSQL alone, batch {PG_CEILING_BATCH}")
                }
                DrainRow::CeilingRdkafka => "ceiling: librdkafka alone, no DB".into(),
                DrainRow::Relaybox => "relaybox, RelayConfig::default()".into(),
                DrainRow::HandTuned => "hand-tuned Python relay, batch 1000".into(),
            }
        }

        fn short(self) -> &'static str {
            match self {
                DrainRow::CeilingPg => "ceiling PG",
                DrainRow::CeilingRdkafka => "ceiling rdkafka",
                DrainRow::Relaybox => "relaybox",
                DrainRow::HandTuned => "hand-tuned",
            }
        }
    }

    /// One timed row: `n` messages in `elapsed`, the machine's busy CPU over it.
    struct Measured {
        n: usize,
        elapsed: Duration,
        busy: Busy,
    }

    impl Measured {
        fn rate(&self) -> f64 {
            rate(self.n, self.elapsed)
        }

        /// The machine's CPU per message, µs.
        fn cpu_us(&self) -> f64 {
            self.busy.machine * 1e6 / self.n as f64
        }
    }

    fn print_rows_header() {
        println!(
            "    {:<40} {:>9} {:>9} {:>10}   split of the CPU per message",
            "row", "elapsed", "msg/s", "CPU us/msg"
        );
    }

    fn print_row(name: &str, m: &Measured) {
        let per = |s: f64| s * 1e6 / m.n as f64;
        println!(
            "    {:<40} {:>7.2} s {:>9} {:>10.1}   this process {:.1}, relay program {:.1}, PostgreSQL {:.1}, broker {:.1}, rest {:.1}",
            name,
            m.elapsed.as_secs_f64(),
            thousands(m.rate() as u64),
            m.cpu_us(),
            per(m.busy.own),
            per(m.busy.children),
            per(m.busy.postgres),
            per(m.busy.java),
            per(m.busy.machine - m.busy.own - m.busy.children - m.busy.postgres - m.busy.java),
        );
    }

    /// The three ratio targets: (what, value, target text, met).
    fn ratios(
        relay: (f64, f64),
        hand: (f64, f64),
        rdkafka: f64,
    ) -> [(String, f64, String, bool); 3] {
        let (relay_rate, relay_cpu) = relay;
        let (hand_rate, hand_cpu) = hand;
        let vs_hand = relay_rate / hand_rate;
        let vs_rdkafka = relay_rate / rdkafka;
        let cpu_vs_hand = relay_cpu / hand_cpu;
        [
            (
                "relaybox / hand-tuned drain rate".into(),
                vs_hand,
                format!(">= {VS_HAND_TUNED_TARGET:.2}"),
                vs_hand >= VS_HAND_TUNED_TARGET,
            ),
            (
                "relaybox / librdkafka-alone drain rate".into(),
                vs_rdkafka,
                format!(">= {VS_RDKAFKA_TARGET:.2}"),
                vs_rdkafka >= VS_RDKAFKA_TARGET,
            ),
            (
                "relaybox / hand-tuned machine CPU per msg".into(),
                cpu_vs_hand,
                format!("<= {CPU_VS_HAND_TUNED_TARGET:.2}"),
                cpu_vs_hand <= CPU_VS_HAND_TUNED_TARGET,
            ),
        ]
    }

    fn print_ratios(ratios: &[(String, f64, String, bool); 3]) {
        for (what, value, target, met) in ratios {
            println!(
                "    {what:<42} {value:>6.2}   target {target:<8} {}",
                verdict(Some(*met))
            );
        }
    }

    fn median(values: &[f64]) -> f64 {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        if v.is_empty() {
            f64::NAN
        } else if v.len().is_multiple_of(2) {
            (v[mid - 1] + v[mid]) / 2.0
        } else {
            v[mid]
        }
    }

    /// The repository's root (this example lives in `<root>/core/examples`).
    fn repo_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }

    /// The Python of the repository's virtualenv, which has confluent-kafka
    /// and psycopg (bindings/python/requirements-dev.txt).
    fn python() -> Result<PathBuf> {
        let python = repo_root().join(".venv/bin/python");
        ensure!(
            python.exists(),
            "{} is missing: run this section with `dev/bench kafka`, which creates the \
             virtualenv and installs bindings/python/requirements-dev.txt",
            python.display()
        );
        Ok(python)
    }

    fn bench_script(name: &str) -> PathBuf {
        repo_root().join("bench").join(name)
    }

    /// What the third-party reader found in a topic.
    struct Reading {
        ok: bool,
        duplicates: u64,
        summary: String,
    }

    /// Reads the whole of `topic` with a confluent-kafka consumer
    /// (bench/check_topic.py) and checks it holds exactly the messages
    /// 0..n-1, none twice (unless `allow_duplicates`), in enqueue order per key.
    async fn read_topic(
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
    async fn check_exactly(broker: &Broker, topic: &str, n: usize) -> Result<String> {
        let reading = read_topic(broker, topic, n, false).await?;
        ensure!(reading.ok, "topic {topic}: {}", reading.summary);
        Ok(reading.summary)
    }

    /// The hand-tuned relay (bench/handtuned_relay.py) on a pre-filled
    /// backlog of `n` messages for `topic`, clocked from spawn to exit.
    /// Returns the run and the program's own clock.
    async fn hand_tuned(
        b: &Bench,
        broker: &Broker,
        topic: &str,
        n: usize,
    ) -> Result<(Measured, Duration)> {
        b.backlog_in_order(n, topic, kafka_message).await?;
        broker.create_topic(topic, PARTITIONS).await?;
        broker.wait_ready(topic, PARTITIONS).await?;
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
        let cpu = MachineCpu::start();
        let started = Instant::now();
        let child = cmd.spawn().context("starting the hand-tuned relay")?;
        let out = tokio::time::timeout(DRAIN_TIMEOUT, child.wait_with_output())
            .await
            .with_context(|| format!("the hand-tuned relay took over {DRAIN_TIMEOUT:?}"))??;
        let elapsed = started.elapsed();
        let busy = cpu.stop();
        ensure!(
            out.status.success(),
            "the hand-tuned relay failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .with_context(|| format!("the hand-tuned relay printed {stdout:?}"))?;
        let delivered = v["delivered"].as_u64().unwrap_or(0);
        ensure!(
            delivered == n as u64,
            "the hand-tuned relay delivered {delivered} of {n}"
        );
        let own = Duration::from_secs_f64(v["elapsed_s"].as_f64().unwrap_or(0.0));
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
        Ok((Measured { n, elapsed, busy }, own))
    }

    /// rdkafka alone: produces `n` records like the relay's to a fresh
    /// topic, all handed to librdkafka first (waiting for the oldest report
    /// when its queue is full), then every delivery report awaited.
    async fn producer_ceiling(broker: &Broker, topic: &str, n: usize) -> Result<(Duration, Busy)> {
        let messages: Vec<Message> = (0..n).map(|i| kafka_message(topic, i)).collect();
        broker.create_topic(topic, PARTITIONS).await?;
        broker.wait_ready(topic, PARTITIONS).await?;
        let producer: FutureProducer = sink_settings(&broker.bootstrap).create()?;
        // Connected, with the topic's leaders known, before the clock starts.
        let warm = producer.clone();
        let name = topic.to_string();
        tokio::task::spawn_blocking(move || {
            warm.client()
                .fetch_metadata(Some(&name), Duration::from_secs(10))
        })
        .await??;
        let cpu = MachineCpu::start();
        let started = Instant::now();
        let mut pending: VecDeque<DeliveryFuture> = VecDeque::with_capacity(n);
        for m in &messages {
            let mut rec = record(topic, m);
            loop {
                match producer.send_result(rec) {
                    Ok(d) => {
                        pending.push_back(d);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        rec = back;
                        match pending.pop_front() {
                            Some(d) => delivered(d).await?,
                            None => tokio::time::sleep(Duration::from_millis(1)).await,
                        }
                    }
                    Err((e, _)) => bail!("producing to {topic}: {e}"),
                }
            }
        }
        for d in pending {
            delivered(d).await?;
        }
        let elapsed = started.elapsed();
        let busy = cpu.stop();
        let records = broker.records(topic, PARTITIONS).await?;
        ensure!(
            records == n as i64,
            "topic {topic} holds {records} records, expected {n}"
        );
        Ok((elapsed, busy))
    }

    struct KafkaDrain {
        elapsed: Duration,
        batches: u64,
        /// The machine's busy CPU over `elapsed`.
        busy: Busy,
    }

    /// The relay with a `KafkaSink` (create_topics) on a pre-filled backlog
    /// of `n` messages for `topic`; `RelayConfig::default()` but its instance id.
    async fn relay_to_kafka(
        b: &Bench,
        broker: &Broker,
        topic: &str,
        n: usize,
    ) -> Result<KafkaDrain> {
        b.backlog_in_order(n, topic, kafka_message).await?;
        let sink = KafkaSink::new(kafka_config(&broker.bootstrap))?;
        // create_topics = true: the sink creates the topic here, before the clock starts.
        sink.ensure_topic(topic).await?;
        broker.wait_ready(topic, PARTITIONS).await?;
        let config = RelayConfig {
            instance_id: Some(format!("{}kafka-drain", b.prefix)),
            ..RelayConfig::default()
        };
        let (elapsed, stats, busy) = timed_drain(b, Arc::new(sink), config, n).await?;
        let records = broker.records(topic, PARTITIONS).await?;
        ensure!(
            records == n as i64,
            "topic {topic} holds {records} records, expected {n}"
        );
        Ok(KafkaDrain {
            elapsed,
            batches: stats.batches,
            busy,
        })
    }

    /// A hand-rolled poller: SELECT one row, produce it and await its
    /// delivery, mark it sent; sleeps 1 s when the table is empty. Returns the
    /// rows delivered and the time taken.
    async fn naive_to_kafka(b: &Bench, broker: &Broker, topic: &str) -> Result<(usize, Duration)> {
        let (n, limit) = (b.sizes.naive_rows, b.sizes.naive_max);
        b.backlog_in_order(n, topic, kafka_message).await?;
        broker.create_topic(topic, PARTITIONS).await?;
        broker.wait_ready(topic, PARTITIONS).await?;
        let producer: FutureProducer = sink_settings(&broker.bootstrap).create()?;
        let warm = producer.clone();
        let name = topic.to_string();
        tokio::task::spawn_blocking(move || {
            warm.client()
                .fetch_metadata(Some(&name), Duration::from_secs(10))
        })
        .await??;
        let outbox = b.table("outbox");
        let select = format!(
            "SELECT id, topic, key, type, payload, content_type, headers::text AS headers, created_at, available_at \
             FROM {outbox} WHERE sent_at IS NULL ORDER BY seq LIMIT 1"
        );
        let mark = format!("UPDATE {outbox} SET sent_at = now() WHERE id = $1");
        let mut conn = b.pool.acquire().await?;
        let started = Instant::now();
        let mut done = 0usize;
        while done < n && started.elapsed() < limit {
            let row = sqlx::query(AssertSqlSafe(select.as_str()))
                .fetch_optional(&mut *conn)
                .await?;
            let Some(row) = row else {
                // The hand-rolled poller's idle wait; never reached while the backlog lasts.
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let headers: BTreeMap<String, String> =
                serde_json::from_str(row.try_get::<&str, _>("headers")?)?;
            let m = Message {
                id: row.try_get("id")?,
                topic: row.try_get("topic")?,
                key: row.try_get("key")?,
                event_type: row.try_get("type")?,
                payload: row.try_get("payload")?,
                content_type: row.try_get("content_type")?,
                headers,
                created_at: row.try_get("created_at")?,
                available_at: row.try_get("available_at")?,
                idempotency_key: None,
            };
            producer
                .send(record(topic, &m), Timeout::After(DELIVERY_TIMEOUT))
                .await
                .map_err(|(e, _)| anyhow!("producing to {topic}: {e}"))?;
            sqlx::query(AssertSqlSafe(mark.as_str()))
                .bind(m.id)
                .execute(&mut *conn)
                .await?;
            done += 1;
        }
        Ok((done, started.elapsed()))
    }

    struct KafkaLatency {
        steady: Steady,
        /// Commit to handler start.
        latency: Histogram<u64>,
        /// `created_at` to handler start.
        since_created: Histogram<u64>,
        called: Histogram<u64>,
        acked: Histogram<u64>,
        handed: Histogram<u64>,
        batches: u64,
        /// This process's CPU with the pipeline idle afterwards, % of one core.
        idle_cpu: f64,
    }

    /// Relay (KafkaSink) + Consumer (KafkaSource) at 1,000 msg/s.
    async fn kafka_latency(b: &mut Bench, broker: &Broker) -> Result<KafkaLatency> {
        let run_for = b.sizes.latency_for;
        let topic = new_topic(b, "latency");
        let group = format!("{topic}-group");
        b.kafka_groups.push(group.clone());
        let b: &Bench = b;
        b.reset().await?;
        b.settle().await?;
        let config = kafka_config(&broker.bootstrap);
        let sink = KafkaSink::new(config.clone())?;
        sink.ensure_topic(&topic).await?;
        broker.wait_ready(&topic, PARTITIONS).await?;
        let clocked = Clocked::new(Arc::new(sink));
        let source = KafkaSource::new(KafkaSourceConfig::new(config, &topic, &group))?;
        let clocks = Clocks::new();
        let (relay, consumer) =
            start_pipeline_with(b, "kafka-latency", clocked.clone(), source, &group, &clocks)
                .await?;
        let outcome = async {
            // Warm-up: the consumer joins its group and handles messages end to end.
            for i in 0..WARM_UP {
                let tx = b.store.begin().await?;
                tx.enqueue(kafka_message(&topic, i)).await?;
                tx.commit().await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            wait_processed(&consumer, WARM_UP as u64, Duration::from_secs(60)).await?;
            let t = topic.clone();
            let make: Arc<dyn Fn(usize) -> Message + Send + Sync> =
                Arc::new(move |i| kafka_message(&t, i));
            let warmed = warm_up(b, &consumer, make.clone(), WARM_UP as u64).await?;
            clocks.reset();
            clocked.reset();
            let batches = relay.stats().batches;
            let steady = produce_steady(b, run_for, make).await?;
            wait_processed(
                &consumer,
                warmed + steady.produced as u64,
                Duration::from_secs(30),
            )
            .await?;
            let batches = relay.stats().batches - batches;
            // The same pipeline idle: everything handled, nothing new.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let idle_cpu = own_cpu_over(b.sizes.idle_for).await;
            Ok::<_, anyhow::Error>((steady, batches, idle_cpu))
        }
        .await;
        consumer.shutdown().await?;
        relay.shutdown().await?;
        let (steady, batches, idle_cpu) = outcome?;
        let since_created = clocks.handler.lock().expect("histogram lock").clone();
        ensure!(
            since_created.len() == steady.produced as u64,
            "recorded {} latencies for {} messages",
            since_created.len(),
            steady.produced
        );
        let latency = clocks.since_commit(&steady)?;
        let called = clocked.called.lock().expect("histogram lock").clone();
        let acked = clocked.acked.lock().expect("histogram lock").clone();
        let handed = clocks.handed.lock().expect("histogram lock").clone();
        b.reset().await?;
        Ok(KafkaLatency {
            steady,
            latency,
            since_created,
            called,
            acked,
            handed,
            batches,
            idle_cpu,
        })
    }

    /// Sequential single-record produce -> delivery report round trips with
    /// KafkaSink's settings but `linger_ms`.
    async fn produce_round_trips(
        broker: &Broker,
        topic: &str,
        linger_ms: u32,
        n: usize,
    ) -> Result<Histogram<u64>> {
        let mut settings = sink_settings(&broker.bootstrap);
        settings.set("linger.ms", linger_ms.to_string());
        let producer: FutureProducer = settings.create()?;
        let mut h = histogram();
        // The first send connects and fetches the topic's metadata: not counted.
        for i in 0..=n {
            let m = kafka_message(topic, i);
            let begun = Instant::now();
            producer
                .send(record(topic, &m), Timeout::After(DELIVERY_TIMEOUT))
                .await
                .map_err(|(e, _)| anyhow!("producing to {topic}: {e}"))?;
            if i > 0 {
                h.saturating_record(begun.elapsed().as_micros() as u64);
            }
        }
        Ok(h)
    }

    /// How fast a `Consumer` (default `ConsumerConfig`) with a `KafkaSource`
    /// handles `n` records already in a fresh topic of `partitions`
    /// partitions, from its first handled record to its last.
    async fn consumer_capacity(
        b: &mut Bench,
        broker: &Broker,
        partitions: i32,
        n: usize,
    ) -> Result<f64> {
        let topic = new_topic(b, &format!("consume-{partitions}p"));
        let group = format!("{topic}-group");
        b.kafka_groups.push(group.clone());
        let b: &Bench = b;
        b.reset().await?;
        broker.create_topic(&topic, partitions).await?;
        broker.wait_ready(&topic, partitions).await?;
        let producer: FutureProducer = sink_settings(&broker.bootstrap).create()?;
        let messages: Vec<Message> = (0..n).map(|i| kafka_message(&topic, i)).collect();
        let mut pending = Vec::with_capacity(n);
        for m in &messages {
            pending.push(
                producer
                    .send_result(record(&topic, m))
                    .map_err(|(e, _)| anyhow!("producing to {topic}: {e}"))?,
            );
        }
        for d in pending {
            delivered(d).await?;
        }
        let source = KafkaSource::new(KafkaSourceConfig::new(
            kafka_config(&broker.bootstrap),
            &topic,
            &group,
        ))?;
        let r = measure_consumer(b, source, &group, n).await?;
        b.reset().await?;
        Ok(r)
    }

    /// Section 8; with `latency_only`, its latency window alone.
    pub(super) async fn section_kafka(b: &mut Bench, latency_only: bool) -> Result<()> {
        let n = b.sizes.kafka_backlog;
        let bootstrap = std::env::var(BOOTSTRAP_ENV).map_err(|_| {
            anyhow!(
                "{BOOTSTRAP_ENV} is not set: run the Kafka section with `dev/bench kafka` (which \
                 starts the local broker), or `dev/services start postgres kafka` and \
                 eval \"$(dev/services env)\""
            )
        })?;
        header(&format!(
            "8. Kafka: PostgreSQL -> Kafka, {}-message backlog, {PAYLOAD_BYTES}-byte payloads",
            thousands(n as u64)
        ));
        let broker = Broker::connect(&bootstrap)?;
        println!("  broker:    {bootstrap}, {}", broker.describe().await?);
        println!("  producer:  KafkaSink's settings: enable.idempotence=true acks=all linger.ms=0");
        println!(
            "             batch.num.messages=10000 message.timeout.ms=0 (librdkafka {})",
            rdkafka::util::get_rdkafka_version().1
        );
        println!("  messages:  order_id = i, key customer-<i % {KAFKA_KEYS}> ({KAFKA_KEYS} keys), type OrderPlaced");
        println!("  topics:    a fresh one per run, {PARTITIONS} partitions, replication 1, created and its leaders");
        println!("             known before the clock starts; records as KafkaSink sends them (key, 256-byte");
        println!("             value, headers relaybox-id/-type/content-type/relaybox-created-at, timestamp)");
        println!("  load avg:  {}", loadavg());
        for i in [0, n] {
            let size = kafka_message("t", i).payload.len();
            ensure!(
                size == PAYLOAD_BYTES,
                "payload of {size} bytes, not {PAYLOAD_BYTES}"
            );
        }
        let probe = new_topic(b, "probe");
        broker.create_topic(&probe, PARTITIONS).await?;
        broker.wait_ready(&probe, PARTITIONS).await?;
        let rounds = if b.sizes.diagnostics_batch.is_some() {
            200
        } else {
            50
        };
        for linger in [5, 0] {
            let h = produce_round_trips(&broker, &probe, linger, rounds).await?;
            println!(
                "  round trip: produce 1 record + await its acks=all report, linger.ms={linger}: p50 {} p99 {} ({rounds} in a row)",
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99))
            );
        }
        if !latency_only {
            kafka_drains(b, &broker).await?;
        }
        kafka_latency_section(b, &broker, latency_only).await
    }

    /// Section 8's drains: `kafka_runs` interleaved runs of the two ceilings,
    /// relaybox and the hand-tuned relay, each topic checked by the
    /// third-party reader; medians and their ratios; then the takeover
    /// measurement and the naive poller.
    async fn kafka_drains(b: &mut Bench, broker: &Broker) -> Result<()> {
        let n = b.sizes.kafka_backlog;
        let runs = b.sizes.kafka_runs;
        println!(
            "\n  Drains of a {}-message backlog ({KAFKA_KEYS} keys), {runs} interleaved run(s); machine CPU from",
            thousands(n as u64)
        );
        println!("  /proc/stat over each row's clock (every process on the {} cores), split from /proc/<pid>/stat:", cores());
        println!("  this process, the relay program it ran (the hand-tuned relay, counted once it exited),");
        println!("  the processes named postgres, the broker's JVM, and the rest: other processes, and the");
        println!("  hand-tuned relay's PostgreSQL backend, which exits with it before its share can be read.");
        let mut results: Vec<(DrainRow, Measured)> = Vec::new();
        let mut readings = 0usize;
        for run in 0..runs {
            let order: Vec<DrainRow> = (0..ROWS.len())
                .map(|k| ROWS[(k + run) % ROWS.len()])
                .collect();
            println!(
                "\n  run {} of {runs} (order: {}; load average {})",
                run + 1,
                order
                    .iter()
                    .map(|r| r.short())
                    .collect::<Vec<_>>()
                    .join(", "),
                loadavg()
            );
            print_rows_header();
            let mut this_run: Vec<(DrainRow, f64, f64)> = Vec::new();
            for row in order {
                let (m, notes) = match row {
                    DrainRow::CeilingPg => {
                        b.backlog_in_order(n, "bench.kafka", kafka_message).await?;
                        let r = ceiling_drain(b, n, PG_CEILING_BATCH, false).await?;
                        let m = Measured {
                            n,
                            elapsed: r.elapsed,
                            busy: r.busy,
                        };
                        (m, vec![format!("{} batches", r.batches)])
                    }
                    DrainRow::CeilingRdkafka => {
                        let topic = new_topic(b, &format!("rdkafka-{}", run + 1));
                        let (elapsed, busy) = producer_ceiling(broker, &topic, n).await?;
                        let read = check_exactly(broker, &topic, n).await?;
                        readings += 1;
                        (
                            Measured { n, elapsed, busy },
                            vec![format!("reader: {read}")],
                        )
                    }
                    DrainRow::Relaybox => {
                        let topic = new_topic(b, &format!("relaybox-{}", run + 1));
                        let r = relay_to_kafka(b, broker, &topic, n).await?;
                        let read = check_exactly(broker, &topic, n).await?;
                        readings += 1;
                        let m = Measured {
                            n,
                            elapsed: r.elapsed,
                            busy: r.busy,
                        };
                        (
                            m,
                            vec![
                                format!("{} batches (adaptive)", thousands(r.batches)),
                                format!("reader: {read}"),
                            ],
                        )
                    }
                    DrainRow::HandTuned => {
                        let topic = new_topic(b, &format!("handtuned-{}", run + 1));
                        let (m, own) = hand_tuned(b, broker, &topic, n).await?;
                        let read = check_exactly(broker, &topic, n).await?;
                        readings += 1;
                        let note = format!(
                            "clocked from spawn to exit (starting Python included); its own clock, first \
                             SELECT to last COMMIT: {:.2} s = {} msg/s",
                            own.as_secs_f64(),
                            thousands(rate(n, own) as u64)
                        );
                        (m, vec![note, format!("reader: {read}")])
                    }
                };
                print_row(&row.name(), &m);
                for note in notes {
                    println!("      {note}");
                }
                this_run.push((row, m.rate(), m.cpu_us()));
                results.push((row, m));
            }
            let of = |row: DrainRow| {
                this_run
                    .iter()
                    .find(|(r, _, _)| *r == row)
                    .map(|(_, rate, cpu)| (*rate, *cpu))
                    .expect("every row ran")
            };
            println!("    ratios of this run:");
            print_ratios(&ratios(
                of(DrainRow::Relaybox),
                of(DrainRow::HandTuned),
                of(DrainRow::CeilingRdkafka).0,
            ));
        }

        // Medians over the runs, and the ratios of the medians.
        let medians = |row: DrainRow| {
            let rates: Vec<f64> = results
                .iter()
                .filter(|(r, _)| *r == row)
                .map(|(_, m)| m.rate())
                .collect();
            let cpus: Vec<f64> = results
                .iter()
                .filter(|(r, _)| *r == row)
                .map(|(_, m)| m.cpu_us())
                .collect();
            (median(&rates), median(&cpus))
        };
        println!("\n  medians of {runs} run(s):");
        println!("    {:<40} {:>9} {:>10}", "row", "msg/s", "CPU us/msg");
        for row in ROWS {
            let (r, cpu) = medians(row);
            println!(
                "    {:<40} {:>9} {:>10.1}",
                row.name(),
                thousands(r as u64),
                cpu
            );
            b.figure(
                format!("kafka: {} (median of {runs})", row.short()),
                format!("{} msg/s, {cpu:.1} us CPU/msg", thousands(r as u64)),
                "(info)",
                None,
            );
        }
        println!("  ratios of the medians:");
        let relay = medians(DrainRow::Relaybox);
        let median_ratios = ratios(
            relay,
            medians(DrainRow::HandTuned),
            medians(DrainRow::CeilingRdkafka).0,
        );
        print_ratios(&median_ratios);
        b.figure(
            format!("kafka: relaybox drain (median of {runs})"),
            format!("{} msg/s", thousands(relay.0 as u64)),
            ">= 50,000 msg/s",
            Some(relay.0 >= DRAIN_TARGET),
        );
        for (what, value, target, met) in &median_ratios {
            b.figure(
                format!("kafka: {what}"),
                format!("{value:.2} (medians of {runs})"),
                target,
                Some(*met),
            );
        }
        b.figure(
            "kafka: third-party reader (confluent-kafka)",
            format!("{readings} topics: all complete, none twice, in order per key"),
            "(checked)",
            None,
        );
        println!("  Every topic above was read back whole by a confluent-kafka consumer (bench/check_topic.py):");
        println!("  every id present once, keys as enqueued, each key in one partition and in enqueue order.");

        takeover(b, broker).await?;

        // Naive baseline.
        let topic = new_topic(b, "naive");
        let (done, elapsed) = naive_to_kafka(b, broker, &topic).await?;
        let naive = rate(done, elapsed);
        println!(
            "\n  naive poller: SELECT 1 row; produce it and await its delivery report; UPDATE ... SET sent_at"
        );
        println!(
            "  (autocommit each; sleeps 1 s only when the table is empty): {} rows in {:.2} s = {} msg/s",
            thousands(done as u64),
            elapsed.as_secs_f64(),
            thousands(naive as u64)
        );
        println!(
            "  relaybox (median {} msg/s) / naive = {:.0}x",
            thousands(relay.0 as u64),
            relay.0 / naive
        );
        b.figure(
            "kafka: naive 1-row poller",
            format!(
                "{} msg/s; relaybox/naive = {:.0}x",
                thousands(naive as u64),
                relay.0 / naive
            ),
            "(info)",
            None,
        );
        b.reset().await
    }

    /// Two relay processes (this program re-executed, `relay_child`) drain
    /// a backlog into Kafka, half the partitions each; relay A is killed
    /// with SIGKILL mid-drain. Prints the time from the kill until relay B
    /// holds A's leases, and until one of A's partitions is delivered again
    /// (the oldest pending row of one of them delivered and gone from the
    /// outbox), then the reader's check (at-least-once: a killed relay's
    /// unfinished batches may be produced twice).
    async fn takeover(b: &mut Bench, broker: &Broker) -> Result<()> {
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
            println!(
                "    not measured: the backlog was drained before both relays held partitions"
            );
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
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            )
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
    pub(super) async fn relay_child(args: &[String]) -> Result<()> {
        let [prefix, owner] = args else {
            bail!("usage: bench {RELAY_CHILD} TABLE_PREFIX INSTANCE_ID");
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

    /// Section 8's latency window and, in full runs unless `latency_only`,
    /// the consumer's capacity.
    async fn kafka_latency_section(
        b: &mut Bench,
        broker: &Broker,
        latency_only: bool,
    ) -> Result<()> {
        // Latency through Kafka.
        println!(
            "\n  Commit-to-handler latency through Kafka at 1,000 msg/s for {} s (relay + KafkaSink,",
            b.sizes.latency_for.as_secs()
        );
        println!("  Consumer + KafkaSource; default RelayConfig and ConsumerConfig; first {WARM_UP} warm-up messages,");
        println!(
            "  then {} s at the same rate, not counted):",
            WARM_UP_FOR.as_secs()
        );
        let lat = kafka_latency(b, broker).await?;
        print_latency_rows(&[(
            "relay -> Kafka -> consumer",
            &lat.steady,
            &lat.latency,
            lat.batches,
        )]);
        println!("  where the time goes (per message, since created_at; cumulative; send/report times come from");
        println!("  a forwarding Sink around KafkaSink, hand-out times from a forwarding Source):");
        for (leg, h) in [
            ("-> relay calls KafkaSink::send", &lat.called),
            ("-> its batch's acks=all reports are in", &lat.acked),
            ("-> KafkaSource::fetch returns it", &lat.handed),
            ("-> consumer's handler starts", &lat.since_created),
        ] {
            println!(
                "    {leg:<42} p50 {:>9}  p99 {:>9}  max {:>9}",
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99)),
                ms(h.max())
            );
        }
        let h = &lat.latency;
        b.figure(
            "kafka: latency p50 / p99 / max @1k msg/s",
            format!(
                "{} / {} / {} ({:.0} msg/s achieved)",
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99)),
                ms(h.max()),
                lat.steady.achieved
            ),
            "p99 < 25 ms",
            Some(p99_met(h)),
        );
        println!(
            "  idle afterwards ({} s, the same relay and consumer, no traffic): this process {:.2}% of a core",
            b.sizes.idle_for.as_secs(),
            lat.idle_cpu
        );
        b.figure(
            "kafka: idle CPU, this process (relay + consumer)",
            format!("{:.2}% of a core", lat.idle_cpu),
            "~0% (< 1%)",
            Some(lat.idle_cpu < IDLE_TARGET),
        );
        if b.sizes.diagnostics_batch.is_some() && !latency_only {
            // The consumer's capacity, which bounds the latency run.
            let records = CAPACITY_MESSAGES;
            let mut rates = Vec::new();
            for partitions in [PARTITIONS, 12] {
                rates.push((
                    format!("KafkaSource, {partitions:>2} partitions"),
                    consumer_capacity(b, broker, partitions, records).await?,
                ));
            }
            let database = database_consumer_capacity(b, records, kafka_message).await?;
            rates.push(("DatabaseSource, for comparison".to_string(), database));
            println!(
                "  consumer capacity (Consumer, default ConsumerConfig: concurrency 8, batch 100; {} records",
                thousands(records as u64)
            );
            println!("  already waiting; a handler that does nothing; rate from the first handled to the last):");
            for (name, r) in &rates {
                println!("    {name:<48} {:>7} msg/s", thousands(*r as u64));
            }
            b.figure(
                format!("kafka: consumer capacity (KafkaSource, {PARTITIONS} partitions)"),
                format!("{} msg/s", thousands(rates[0].1 as u64)),
                "(info)",
                None,
            );
        }
        Ok(())
    }

    /// Deletes the consumer groups and topics this run created (best effort).
    pub(super) async fn delete_kafka_leftovers(b: &Bench) {
        if b.kafka_topics.is_empty() && b.kafka_groups.is_empty() {
            return;
        }
        let Ok(bootstrap) = std::env::var(BOOTSTRAP_ENV) else {
            return;
        };
        let admin: AdminClient<DefaultClientContext> = match ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
        {
            Ok(a) => a,
            Err(e) => {
                eprintln!(
                    "could not delete the Kafka topics {:?}: {e}",
                    b.kafka_topics
                );
                return;
            }
        };
        let options = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(10)))
            .request_timeout(Some(Duration::from_secs(15)));
        if !b.kafka_groups.is_empty() {
            let groups: Vec<&str> = b.kafka_groups.iter().map(String::as_str).collect();
            match admin.delete_groups(&groups, &options).await {
                Ok(results) => {
                    for r in results {
                        if let Err((g, code)) = r {
                            eprintln!("could not delete Kafka consumer group {g}: {code}");
                        }
                    }
                }
                Err(e) => eprintln!("could not delete Kafka consumer groups {groups:?}: {e}"),
            }
        }
        if !b.kafka_topics.is_empty() {
            let topics: Vec<&str> = b.kafka_topics.iter().map(String::as_str).collect();
            match admin.delete_topics(&topics, &options).await {
                Ok(results) => {
                    let mut deleted = 0;
                    for r in results {
                        match r {
                            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {
                                deleted += 1
                            }
                            Err((t, code)) => eprintln!("could not delete Kafka topic {t}: {code}"),
                        }
                    }
                    println!("kafka topics deleted: {deleted} of {}", topics.len());
                }
                Err(e) => eprintln!("could not delete Kafka topics {topics:?}: {e}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Summary and cleanup

fn print_summary(figures: &[Figure]) {
    header("Summary");
    if figures.is_empty() {
        println!("  (no figures: the sections run print none)");
        return;
    }
    let width = figures.iter().map(|f| f.name.len()).max().unwrap_or(10);
    let vwidth = figures.iter().map(|f| f.value.len()).max().unwrap_or(10);
    println!(
        "  {:<width$}  {:<vwidth$}  {:<18}  result",
        "figure", "value", "target"
    );
    for f in figures {
        println!(
            "  {:<width$}  {:<vwidth$}  {:<18}  {}",
            f.name,
            f.value,
            f.target,
            verdict(f.met)
        );
    }
    let judged: Vec<_> = figures.iter().filter_map(|f| f.met).collect();
    let met = judged.iter().filter(|m| **m).count();
    println!("  targets met: {met} of {}", judged.len());
}

async fn drop_tables(url: &str, prefix: &str) -> Result<()> {
    let mut conn = PgConnection::connect(url).await?;
    let p = prefix;
    let tables: Vec<String> = relaybox::schema::TABLES
        .iter()
        .map(|t| format!("{p}{t}"))
        .collect();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {} CASCADE",
        tables.join(", ")
    )))
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    Ok(())
}

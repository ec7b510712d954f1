//! relaybox benchmark: prints throughput, latency and idle-CPU figures of the
//! outbox, the relay, the database transport and (on request) the Kafka
//! transport on PostgreSQL, each with its target and MET/MISSED. It is not a
//! test: nothing fails but the run itself.
//!
//! Run it with `dev/bench` (starts PostgreSQL, and Kafka for the `kafka`
//! section, exports RELAYBOX_DATABASE_URL / RELAYBOX_KAFKA_BOOTSTRAP and runs
//! `cargo run --release -p relaybox --example bench -- ARGS`):
//!
//! ```text
//! dev/bench                    # the PostgreSQL sections, full sizes (about a minute once built)
//! dev/bench --quick            # smaller sizes, a smoke run
//! dev/bench --only drain,ceiling
//! dev/bench kafka              # the Kafka section only, about 2 minutes (starts the local broker too)
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
//! 8. `kafka` (opt-in; needs RELAYBOX_KAFKA_BOOTSTRAP and a broker): first
//!    the produce round trip of one record (KafkaSink's settings, linger.ms
//!    5 and 0). Then, on a 200,000-message backlog with 256-byte payloads,
//!    for batch sizes 1000 and 5000: (a) the PostgreSQL ceiling of section 3
//!    (no broker), (b) rdkafka alone producing the same 200,000 records (same
//!    keys, payloads, headers and timestamps as `KafkaSink` sends; a
//!    `FutureProducer` with `KafkaSink`'s settings: idempotence, acks=all,
//!    linger.ms=0, batch.num.messages=10000, message.timeout.ms=0) to a fresh topic, all sent, then
//!    all awaited, no database, and the relay with a `KafkaSink`
//!    (`create_topics = true`, a fresh 3-partition topic, created and its
//!    leaders known before the clock starts) from `Relay::start` until
//!    everything is delivered (then `pending_count() == 0` and the topic's
//!    watermarks are checked). The relay is printed as % of the lower of (a)
//!    and (b) (target >= 70%) and against 50,000 msg/s, with the time from
//!    `KafkaSink::send` to a batch's last report (a forwarding sink times it)
//!    and the machine's CPU time per message (`/proc/stat`, every process;
//!    split into this process, PostgreSQL's processes and the broker's JVM
//!    from `/proc/<pid>/stat`) in (a), (b) and the relay, with the rate two cores allow for doing
//!    (a)'s and (b)'s work together and the shares of that rate the relay
//!    drained and the ratio target asks for. Diagnostic rows (full runs, batch 1000): two relays in this process
//!    sharing one `KafkaSink`, half the partitions each (lease rows written
//!    up front), and the relay with `linger.ms=0`. Then a naive poller
//!    (SELECT one row, produce it and await its delivery, UPDATE ... SET
//!    sent_at; sleeps 1 s only when the table is empty; 2,000 rows or 10 s)
//!    with the relay/naive ratio, and commit-to-handler latency at 1,000
//!    msg/s for 10 s through Kafka (relay with `KafkaSink`, `Consumer` with
//!    `KafkaSource`; settled as in section 5; target p99 < 25 ms) with where the time goes (send
//!    called / reports in, `KafkaSource::fetch` handing the record out), then
//!    the same pipeline idle: this process's CPU over 5 s with no traffic
//!    (target < 1% of a core). Full
//!    runs also measure the consumer's capacity on 20,000 waiting records (3
//!    and 12 partitions, and `DatabaseSource` for comparison). The topics and
//!    consumer groups it created are deleted at the end (best effort).
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
    kafka_batches: Vec<u32>,
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
            kafka_batches: vec![1000, 5000],
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
            kafka_batches: vec![1000],
        }
    }
}

struct Args {
    quick: bool,
    sections: BTreeSet<Section>,
}

const USAGE: &str =
    "usage: bench [--quick] [--only SECTION[,SECTION..]]... [--explain] [SECTION...]
sections: enqueue, drain, ceiling, naive, latency, idle (the default run),
          explain, kafka (opt-in: only when named; kafka needs RELAYBOX_KAFKA_BOOTSTRAP),
          kafka-latency (the kafka section's latency window alone)";

fn parse_args() -> Result<Args> {
    let mut quick = false;
    let mut only: BTreeSet<Section> = BTreeSet::new();
    let mut explain = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--explain" => explain = true,
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
    Ok(Args { quick, sections })
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
        sizes: if args.quick {
            Sizes::quick()
        } else {
            Sizes::full()
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
        self.reset().await?;
        let writers = 2;
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

/// Busy CPU seconds over a timed interval: the whole machine's, and the
/// shares of this process, of PostgreSQL's processes and of the JVM's (the
/// Kafka broker).
#[derive(Clone, Copy)]
struct Busy {
    machine: f64,
    own: f64,
    postgres: f64,
    java: f64,
}

/// Starts clocking the machine's CPU for a timed interval.
struct MachineCpu {
    machine: f64,
    own: f64,
    processes: HashMap<i32, (String, u64)>,
}

impl MachineCpu {
    fn start() -> MachineCpu {
        MachineCpu {
            machine: machine_busy_seconds(),
            own: own_cpu_seconds(),
            processes: process_ticks(),
        }
    }

    /// Ends the interval: its busy CPU.
    fn stop(self) -> Busy {
        let machine = machine_busy_seconds() - self.machine;
        let own = own_cpu_seconds() - self.own;
        let processes = process_ticks();
        Busy {
            machine,
            own,
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

#[cfg(feature = "kafka")]
use kafka::{delete_kafka_leftovers, section_kafka};

#[cfg(feature = "kafka")]
mod kafka {
    use std::collections::{BTreeMap, VecDeque};
    use std::sync::atomic::{AtomicU64, Ordering};

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
    const PARTITIONS: i32 = 3;
    /// `KafkaConfig::delivery_timeout`'s default: how long a send waits for its report.
    const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
    /// Warm-up messages of the latency run (until the consumer has joined its group).
    const WARM_UP: usize = 50;

    /// The `i`th message of this section: exactly 256 bytes of JSON, one of
    /// `KEYS` keys, type `OrderPlaced`.
    pub(super) fn kafka_message(topic: &str, i: usize) -> Message {
        let key = format!("customer-{:04}", i % KEYS);
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

    /// The relay's Kafka settings: `create_topics`, 3 partitions.
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

    /// `kafka_config`, with the producer's `linger.ms` overridden if `linger` is set.
    fn kafka_config_linger(bootstrap: &str, linger: Option<u32>) -> KafkaConfig {
        let mut config = kafka_config(bootstrap);
        if let Some(ms) = linger {
            config
                .producer_properties
                .insert("linger.ms".into(), ms.to_string());
        }
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
    /// relay pipelines alike) and measures it: total time from hand-over to
    /// the last report of each batch, and per message `now - created_at`
    /// when `send` is called and when the batch's reports are in.
    struct Clocked {
        inner: Arc<dyn Sink>,
        busy_micros: AtomicU64,
        called: SharedHistogram,
        acked: SharedHistogram,
        /// Itself, for the acknowledgement futures `send` returns.
        me: Mutex<std::sync::Weak<Clocked>>,
    }

    impl Clocked {
        fn new(inner: Arc<dyn Sink>) -> Arc<Clocked> {
            let clocked = Arc::new(Clocked {
                inner,
                busy_micros: AtomicU64::new(0),
                called: Arc::new(Mutex::new(histogram())),
                acked: Arc::new(Mutex::new(histogram())),
                me: Mutex::new(std::sync::Weak::new()),
            });
            *clocked.me.lock().expect("self lock") = Arc::downgrade(&clocked);
            clocked
        }

        fn busy(&self) -> Duration {
            Duration::from_micros(self.busy_micros.load(Ordering::Relaxed))
        }

        fn reset(&self) {
            self.busy_micros.store(0, Ordering::Relaxed);
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
            let begun = Instant::now();
            let results = self.inner.publish(batch).await;
            self.busy_micros
                .fetch_add(begun.elapsed().as_micros() as u64, Ordering::Relaxed);
            Clocked::ages(&self.acked, batch);
            results
        }

        /// Forwards the hand-over too, so the relay pipelines as with a bare
        /// `KafkaSink`; the acknowledgement clock stops when the acks resolve.
        async fn send(&self, batch: &[Message]) -> relaybox::Acks {
            Clocked::ages(&self.called, batch);
            let begun = Instant::now();
            let acks = self.inner.send(batch).await;
            let me = self.me.lock().expect("self lock").upgrade();
            let batch = batch.to_vec();
            Box::pin(async move {
                let results = acks.await;
                if let Some(me) = me {
                    me.busy_micros
                        .fetch_add(begun.elapsed().as_micros() as u64, Ordering::Relaxed);
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

    fn print_kafka_header() {
        println!(
            "  {:<34} {:>6} {:>9} {:>11} {:>8} {:>9} {:>10} {:>8}",
            "run", "batch", "elapsed", "msg/s", "batches", "ms/batch", "%lower", "target"
        );
    }

    fn print_kafka_row(
        name: &str,
        batch: Option<u32>,
        elapsed: Duration,
        n: usize,
        batches: Option<u64>,
        share: Option<f64>,
        result: &str,
    ) {
        let dash = || "-".to_string();
        println!(
            "  {:<34} {:>6} {:>7.2} s {:>11} {:>8} {:>9} {:>10} {:>8}",
            name,
            batch.map_or_else(dash, |b| b.to_string()),
            elapsed.as_secs_f64(),
            thousands(rate(n, elapsed) as u64),
            batches.map_or_else(dash, thousands),
            batches.map_or_else(dash, |k| format!(
                "{:.2}",
                elapsed.as_secs_f64() * 1000.0 / k.max(1) as f64
            )),
            share.map_or_else(dash, |s| format!("{s:.0}%")),
            result,
        );
    }

    /// The machine's CPU per message in ceilings a and b and in the relay,
    /// the rate at which the cores could do both ceilings' work, and what
    /// the relay (`relay_rate`) and the ratio target (`CEILING_TARGET`% of
    /// `lower`, the lower ceiling) are as shares of that rate.
    fn cpu_note(
        batch: u32,
        n: usize,
        [pg, kafka, relay]: [Busy; 3],
        relay_rate: f64,
        lower: f64,
    ) -> String {
        let per = |busy: f64| busy * 1e6 / n as f64;
        let both = per(pg.machine) + per(kafka.machine);
        let bound = cores() as f64 * 1e6 / both.max(f64::MIN_POSITIVE);
        let target = lower * CEILING_TARGET / 100.0;
        let split = |b: Busy| {
            format!(
                "{:.1} (this process {:.1}, PostgreSQL {:.1}, broker {:.1})",
                per(b.machine),
                per(b.own),
                per(b.postgres),
                per(b.java)
            )
        };
        format!(
            "batch {batch}: us of CPU per message: ceiling a {}, ceiling b {}, relay {}; \
             a's and b's work together fits {} msg/s on these cores, the relay drains {:.0}% of that; \
             the {CEILING_TARGET:.0}% target ({} msg/s) is {:.0}% of it",
            split(pg),
            split(kafka),
            split(relay),
            thousands(bound as u64),
            100.0 * relay_rate / bound,
            thousands(target as u64),
            100.0 * target / bound
        )
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
        /// Sum over batches of the time from `KafkaSink::send` to the last report.
        publishing: Duration,
    }

    /// The relay with a `KafkaSink` (create_topics; `linger.ms` overridden if
    /// `linger` is set) on a pre-filled backlog of `n` messages for `topic`.
    async fn relay_to_kafka(
        b: &Bench,
        broker: &Broker,
        topic: &str,
        n: usize,
        batch: u32,
        linger: Option<u32>,
    ) -> Result<KafkaDrain> {
        b.backlog_of(n, topic, kafka_message).await?;
        let sink = KafkaSink::new(kafka_config_linger(&broker.bootstrap, linger))?;
        // create_topics = true: the sink creates the topic here, before the clock starts.
        sink.ensure_topic(topic).await?;
        broker.wait_ready(topic, PARTITIONS).await?;
        let clocked = Clocked::new(Arc::new(sink));
        let config = RelayConfig {
            batch_size: batch,
            instance_id: Some(format!("{}kafka-drain-{batch}", b.prefix)),
            ..RelayConfig::default()
        };
        let (elapsed, stats, busy) = timed_drain(b, clocked.clone(), config, n).await?;
        let records = broker.records(topic, PARTITIONS).await?;
        ensure!(
            records == n as i64,
            "topic {topic} holds {records} records, expected {n}"
        );
        Ok(KafkaDrain {
            elapsed,
            batches: stats.batches,
            busy,
            publishing: clocked.busy(),
        })
    }

    /// A hand-rolled poller: SELECT one row, produce it and await its
    /// delivery, mark it sent; sleeps 1 s when the table is empty. Returns the
    /// rows delivered and the time taken.
    async fn naive_to_kafka(b: &Bench, broker: &Broker, topic: &str) -> Result<(usize, Duration)> {
        let (n, limit) = (b.sizes.naive_rows, b.sizes.naive_max);
        b.backlog_of(n, topic, kafka_message).await?;
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

    /// `relays` relays sharing one `KafkaSink`, each given `1/relays` of the
    /// partitions up front (lease rows written before they start, so that no
    /// relay drains alone while leases rebalance), on a pre-filled backlog.
    async fn relays_to_kafka(
        b: &Bench,
        broker: &Broker,
        topic: &str,
        n: usize,
        batch: u32,
        relays: usize,
    ) -> Result<KafkaDrain> {
        b.backlog_of(n, topic, kafka_message).await?;
        let sink = KafkaSink::new(kafka_config(&broker.bootstrap))?;
        sink.ensure_topic(topic).await?;
        broker.wait_ready(topic, PARTITIONS).await?;
        let clocked = Clocked::new(Arc::new(sink));
        let owners: Vec<String> = (0..relays)
            .map(|r| format!("{}kafka-drain-{batch}-{r}-of-{relays}", b.prefix))
            .collect();
        let (leases, instances) = (b.table("leases"), b.table("relay_instances"));
        let mut seed = String::new();
        for (r, owner) in owners.iter().enumerate() {
            let _ = write!(
                seed,
                "INSERT INTO {instances} (owner, started_at, heartbeat_at, expires_at) \
                 VALUES ('{owner}', now(), now(), now() + interval '15 seconds'); \
                 UPDATE {leases} SET owner = '{owner}', epoch = epoch + 1, \
                 expires_at = now() + interval '15 seconds' WHERE partition % {relays} = {r}; "
            );
        }
        b.exec(seed).await?;
        let cpu = MachineCpu::start();
        let started = Instant::now();
        let mut running = Vec::new();
        for owner in &owners {
            let config = RelayConfig {
                batch_size: batch,
                instance_id: Some(owner.clone()),
                ..RelayConfig::default()
            };
            running.push(Relay::start(b.store.clone(), clocked.clone(), config)?);
        }
        let total = |rs: &[Relay]| {
            rs.iter().fold(RelayStats::default(), |mut t, r| {
                let s = r.stats();
                t.delivered += s.delivered;
                t.retried += s.retried;
                t.dead_lettered += s.dead_lettered;
                t.batches += s.batches;
                t
            })
        };
        let outcome = async {
            while total(&running).delivered < n as u64 {
                ensure!(
                    started.elapsed() < DRAIN_TIMEOUT,
                    "{relays} relays delivered {} of {n} in {DRAIN_TIMEOUT:?}",
                    total(&running).delivered
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok((started.elapsed(), cpu.stop()))
        }
        .await;
        let stats = total(&running);
        for r in &running {
            r.shutdown().await?;
        }
        let (elapsed, busy) = outcome?;
        let pending = b.store.pending_count().await?;
        ensure!(
            pending == 0,
            "{pending} messages still pending after the drain"
        );
        ensure!(
            stats.retried == 0 && stats.dead_lettered == 0 && stats.delivered == n as u64,
            "unexpected failures while draining: {stats:?}"
        );
        let records = broker.records(topic, PARTITIONS).await?;
        ensure!(
            records == n as i64,
            "topic {topic} holds {records} records, expected {n}"
        );
        Ok(KafkaDrain {
            elapsed,
            batches: stats.batches,
            busy,
            publishing: clocked.busy(),
        })
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

    /// Where a Kafka drain's time went: from hand-over to the last report,
    /// per batch of each of `relays` relays.
    fn publish_note(name: &str, run: &KafkaDrain, relays: usize) -> String {
        let batches = run.batches.max(1) as f64;
        let publishing = run.publishing.as_secs_f64();
        let busy = run.elapsed.as_secs_f64() * relays as f64;
        format!(
            "{name}: per batch {:.2} ms from KafkaSink::send to its last delivery report, {:.2} ms of \
             wall time per batch; the 2 batch loops' batches overlap, so the hand-over-to-report \
             times add up to {:.0}% of the relay's wall time",
            1000.0 * publishing / batches,
            1000.0 * busy / batches,
            100.0 * publishing / busy,
        )
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

    /// Section 8's drains, ceilings and naive poller.
    async fn kafka_drains(b: &mut Bench, broker: &Broker) -> Result<()> {
        let n = b.sizes.kafka_backlog;
        print_kafka_header();
        let mut best_relay: Option<(u32, f64)> = None;
        let mut publish_notes = Vec::new();
        let mut cpu_notes = Vec::new();
        for batch in b.sizes.kafka_batches.clone() {
            // (a) PostgreSQL alone: claim + delete, no broker.
            b.backlog_of(n, "bench.kafka", kafka_message).await?;
            let pg = ceiling_drain(b, n, batch, false).await?;
            let pg_rate = rate(n, pg.elapsed);
            print_kafka_row(
                "ceiling a: PostgreSQL, no broker",
                Some(batch),
                pg.elapsed,
                n,
                Some(pg.batches),
                None,
                "",
            );
            // (b) rdkafka alone: the same records, no database.
            let topic = new_topic(b, &format!("produce-{batch}"));
            let (produced, kafka_busy) = producer_ceiling(broker, &topic, n).await?;
            let kafka_rate = rate(n, produced);
            print_kafka_row(
                "ceiling b: rdkafka alone, no DB",
                None,
                produced,
                n,
                None,
                None,
                "",
            );
            // The relay.
            let topic = new_topic(b, &format!("relay-{batch}"));
            let run = relay_to_kafka(b, broker, &topic, n, batch, None).await?;
            let r = rate(n, run.elapsed);
            let lower = pg_rate.min(kafka_rate);
            cpu_notes.push(cpu_note(
                batch,
                n,
                [pg.busy, kafka_busy, run.busy],
                r,
                lower,
            ));
            let share = 100.0 * r / lower;
            let met = r >= DRAIN_TARGET && share >= CEILING_TARGET;
            print_kafka_row(
                "relay, KafkaSink",
                Some(batch),
                run.elapsed,
                n,
                Some(run.batches),
                Some(share),
                verdict(Some(met)),
            );
            publish_notes.push(publish_note(&format!("relay, batch {batch}"), &run, 1));
            if b.sizes.diagnostics_batch == Some(batch) {
                // Diagnostic: two relays in this process, one KafkaSink, half the partitions each,
                // so that one relay's PostgreSQL work overlaps the other's wait for Kafka.
                let topic = new_topic(b, &format!("relay2-{batch}"));
                let two = relays_to_kafka(b, broker, &topic, n, batch, 2).await?;
                print_kafka_row(
                    "diag: 2 relays, 8 partitions each",
                    Some(batch),
                    two.elapsed,
                    n,
                    Some(two.batches),
                    Some(100.0 * rate(n, two.elapsed) / lower),
                    "",
                );
                publish_notes.push(publish_note(&format!("2 relays, batch {batch}"), &two, 2));
                // Diagnostic: the relay with linger.ms=0 (a whole batch is handed to librdkafka
                // before anything is awaited, so lingering only waits).
                let topic = new_topic(b, &format!("relay-linger0-{batch}"));
                let run = relay_to_kafka(b, broker, &topic, n, batch, Some(0)).await?;
                print_kafka_row(
                    "diag: relay, linger.ms=0",
                    Some(batch),
                    run.elapsed,
                    n,
                    Some(run.batches),
                    Some(100.0 * rate(n, run.elapsed) / lower),
                    "",
                );
                publish_notes.push(publish_note(
                    &format!("relay, linger.ms=0, batch {batch}"),
                    &run,
                    1,
                ));
            }
            if best_relay.is_none_or(|(_, best)| r > best) {
                best_relay = Some((batch, r));
            }
            b.figure(
                format!("kafka: relay drain, batch {batch}"),
                format!("{} msg/s", thousands(r as u64)),
                ">= 50,000 msg/s",
                Some(r >= DRAIN_TARGET),
            );
            b.figure(
                format!("kafka: relay / lower ceiling, batch {batch}"),
                format!(
                    "{share:.0}% (PG {}, rdkafka {} msg/s)",
                    thousands(pg_rate as u64),
                    thousands(kafka_rate as u64)
                ),
                ">= 70%",
                Some(share >= CEILING_TARGET),
            );
        }
        println!(
            "  %lower = the relay as % of the lower of the two ceilings measured just before it."
        );
        println!("  ceiling a = section 3's loop (BEGIN; SELECT <relay's columns> ... LIMIT B FOR UPDATE SKIP");
        println!(
            "  LOCKED; DELETE ... WHERE ctid = ANY($1); COMMIT) on the same backlog; ceiling b = one"
        );
        println!("  FutureProducer with KafkaSink's settings: all records sent, then all reports awaited.");
        println!("  Relay clock: Relay::start until all delivered; then pending_count()==0 and the topic's");
        println!("  watermarks (records == backlog) are checked. Where the relay's time went:");
        for note in &publish_notes {
            println!("    {note}");
        }
        println!(
            "  Machine CPU (/proc/stat: every process, this one, PostgreSQL and the broker; busy"
        );
        println!(
            "  time over each run's clock, {} cores; the split from /proc/<pid>/stat: this process,",
            cores()
        );
        println!("  the processes named postgres, the JVM running the broker):");
        for note in &cpu_notes {
            println!("    {note}");
        }

        // Naive baseline.
        let topic = new_topic(b, "naive");
        let (done, elapsed) = naive_to_kafka(b, broker, &topic).await?;
        let naive = rate(done, elapsed);
        println!(
            "  naive poller: SELECT 1 row; produce it and await its delivery report; UPDATE ... SET sent_at"
        );
        println!(
            "  (autocommit each; sleeps 1 s only when the table is empty): {} rows in {:.2} s = {} msg/s",
            thousands(done as u64),
            elapsed.as_secs_f64(),
            thousands(naive as u64)
        );
        let mut naive_value = format!("{} msg/s", thousands(naive as u64));
        if let Some((batch, relay)) = best_relay {
            println!(
                "  relay (batch {batch}, {} msg/s) / naive = {:.0}x",
                thousands(relay as u64),
                relay / naive
            );
            naive_value = format!("{naive_value}; relay/naive = {:.0}x", relay / naive);
        }
        b.figure("kafka: naive 1-row poller", naive_value, "(info)", None);
        b.reset().await
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
                "kafka: consumer capacity (KafkaSource, 3 partitions)",
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

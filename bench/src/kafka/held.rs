//! Section 8's held-snapshot rows: relaybox and the hand-tuned relay drain
//! the same backlog twice, clean and while another session holds a
//! `REPEATABLE READ` transaction open (its snapshot pins the xmin horizon,
//! so no dead outbox row can be vacuumed) and a producer churns (one
//! message per transaction, every millisecond). Prints both rates, their
//! ratio against the target, and the outbox's dead tuples and size at the
//! end of each drain; the third-party reader checks every topic.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use relaybox::transport::kafka::KafkaSink;
use relaybox::{Message, Relay, RelayConfig, Store};
use sqlx::{AssertSqlSafe, PgPool};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::context::{Bench, DRAIN_TIMEOUT};
use crate::cpu::{Busy, MachineCpu};
use crate::held_snapshot::HeldSnapshot;
use crate::kafka::client::{kafka_config, kafka_message, Broker};
use crate::kafka::drains::{print_row, print_rows_header, Measured};
use crate::kafka::programs::{
    check_exactly, check_hand_tuned_drain, finish_hand_tuned, spawn_hand_tuned,
};
use crate::kafka::{new_topic, KAFKA_KEYS, PARTITIONS};
use crate::report::{thousands, verdict};

/// Target of relaybox's drain rate with the transaction held and the
/// producer churning, as a share of its clean drain.
pub(crate) const HELD_TARGET: f64 = 0.70;
/// The churning producer's pause between its one-message transactions.
const CHURN_PAUSE: Duration = Duration::from_millis(1);

/// Which relay drains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Relayer {
    Relaybox,
    HandTuned,
}

impl Relayer {
    fn name(self) -> &'static str {
        match self {
            Relayer::Relaybox => "relaybox",
            Relayer::HandTuned => "hand-tuned",
        }
    }
}

/// A producer enqueueing the messages `first`, `first + 1`, ... of a topic,
/// one per committed transaction, pausing `CHURN_PAUSE` between them.
struct Churn {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Result<usize>>,
}

impl Churn {
    fn start(store: Store, pool: PgPool, topic: &str, first: usize) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let topic = topic.to_string();
        let task = tokio::spawn(async move {
            let mut i = first;
            while !flag.load(Ordering::SeqCst) {
                let m: Message = kafka_message(&topic, i);
                let mut tx = pool.begin().await?;
                store.enqueue_batch(&mut *tx, &[m]).await?;
                tx.commit().await?;
                i += 1;
                tokio::time::sleep(CHURN_PAUSE).await;
            }
            Ok(i - first)
        });
        Churn { stop, task }
    }

    /// Stops the producer after its current transaction; returns how many
    /// messages it enqueued (all committed when this returns).
    async fn stop(self) -> Result<usize> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await?
    }
}

/// How the outbox's dead tuples are counted: `pgstattuple` when the
/// extension can be created, else the statistics' `n_dead_tup`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DeadTuples {
    Pgstattuple,
    StatsView,
}

impl DeadTuples {
    async fn choose(b: &Bench) -> DeadTuples {
        match b
            .exec("CREATE EXTENSION IF NOT EXISTS pgstattuple".into())
            .await
        {
            Ok(()) => DeadTuples::Pgstattuple,
            Err(_) => DeadTuples::StatsView,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            DeadTuples::Pgstattuple => "pgstattuple(outbox).dead_tuple_count (a full scan: exact)",
            DeadTuples::StatsView => {
                "pg_stat_user_tables.n_dead_tup after pg_stat_force_next_flush() (the \
                 relay's sessions report theirs within about a second)"
            }
        }
    }

    /// The outbox's dead tuples and total size (`pg_total_relation_size`), bytes.
    async fn outbox(self, b: &Bench) -> Result<(i64, i64)> {
        let table = b.table("outbox");
        let dead: i64 = match self {
            DeadTuples::Pgstattuple => {
                sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT dead_tuple_count FROM pgstattuple('{table}')"
                )))
                .fetch_one(&b.pool)
                .await?
            }
            DeadTuples::StatsView => {
                let mut conn = b.pool.acquire().await?;
                sqlx::raw_sql("SELECT pg_stat_force_next_flush()")
                    .execute(&mut *conn)
                    .await?;
                sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = '{table}'::regclass"
                )))
                .fetch_one(&mut *conn)
                .await?
            }
        };
        let size: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT pg_total_relation_size('{table}')"
        )))
        .fetch_one(&b.pool)
        .await?;
        Ok((dead, size))
    }
}

/// One drain of this section.
struct HeldRun {
    measured: Measured,
    churned: usize,
    dead: i64,
    size: i64,
    reader: String,
}

/// What a drain waits for: the backlog delivered, then (the producer
/// stopped) everything it enqueued too.
async fn wait_delivered(
    what: &str,
    started: Instant,
    mut done: impl AsyncFnMut() -> Result<bool>,
) -> Result<()> {
    while !done().await? {
        if started.elapsed() > DRAIN_TIMEOUT {
            bail!("{what}: not done in {DRAIN_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Drains an `n`-message backlog for a fresh topic with `who`; with
/// `held`, while a transaction is held open and a producer churns.
async fn drain(
    b: &mut Bench,
    broker: &Broker,
    who: Relayer,
    held: bool,
    n: usize,
    dead_tuples: DeadTuples,
) -> Result<HeldRun> {
    let topic = new_topic(
        b,
        &format!("{}-{}", who.name(), if held { "held" } else { "clean" }),
    );
    b.backlog_in_order(n, &topic, kafka_message).await?;
    let sink = match who {
        Relayer::Relaybox => {
            let sink = KafkaSink::new(kafka_config(&broker.bootstrap))?;
            // create_topics = true: the sink creates the topic here, before the clock starts.
            sink.ensure_topic(&topic).await?;
            Some(sink)
        }
        Relayer::HandTuned => {
            broker.create_topic(&topic, PARTITIONS).await?;
            None
        }
    };
    broker.wait_ready(&topic, PARTITIONS).await?;
    let snapshot = match held {
        true => Some(HeldSnapshot::open(b, "dead_letters").await?),
        false => None,
    };
    let churn = held.then(|| Churn::start(b.store.clone(), b.pool.clone(), &topic, n));
    let stop_file: Option<PathBuf> = held.then(|| {
        std::env::temp_dir().join(format!("{}stop-{}", b.prefix, Uuid::now_v7().simple()))
    });

    let cpu = MachineCpu::start();
    let started = Instant::now();
    let (total, elapsed, busy) = match who {
        Relayer::Relaybox => {
            let config = RelayConfig {
                instance_id: Some(format!("{}kafka-{}", b.prefix, topic)),
                ..RelayConfig::default()
            };
            let sink = sink.context("the relay's sink")?;
            let relay = Relay::start(b.store.clone(), Arc::new(sink), config)?;
            let delivered = || relay.stats().delivered;
            wait_delivered("relaybox's backlog", started, async || {
                Ok(delivered() >= n as u64)
            })
            .await?;
            let churned = match churn {
                Some(c) => c.stop().await?,
                None => 0,
            };
            let total = n + churned;
            wait_delivered("relaybox's drain", started, async || {
                Ok(delivered() >= total as u64)
            })
            .await?;
            let elapsed = started.elapsed();
            let busy = cpu.stop();
            let stats = relay.stats();
            relay.shutdown().await?;
            ensure!(
                stats.retried == 0 && stats.dead_lettered == 0 && stats.delivered == total as u64,
                "unexpected failures while draining: {stats:?}"
            );
            (total, elapsed, busy)
        }
        Relayer::HandTuned => {
            let child = spawn_hand_tuned(b, broker, stop_file.as_deref())?;
            let churned = match churn {
                Some(c) => {
                    wait_delivered("the hand-tuned relay's backlog", started, async || {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(broker.records(&topic, PARTITIONS).await? >= n as i64)
                    })
                    .await?;
                    let churned = c.stop().await?;
                    if let Some(file) = &stop_file {
                        std::fs::write(file, b"stop")?;
                    }
                    churned
                }
                None => 0,
            };
            let exit = finish_hand_tuned(child).await?;
            let elapsed = started.elapsed();
            let busy: Busy = cpu.stop();
            if let Some(file) = &stop_file {
                let _ = std::fs::remove_file(file);
            }
            let total = n + churned;
            check_hand_tuned_drain(b, broker, &topic, total, exit.delivered).await?;
            (total, elapsed, busy)
        }
    };
    let (dead, size) = dead_tuples.outbox(b).await?;
    let pending = b.store.pending_count().await?;
    ensure!(pending == 0, "{pending} messages pending after the drain");
    if let Some(s) = snapshot {
        s.release().await?;
    }
    let records = broker.records(&topic, PARTITIONS).await?;
    ensure!(
        records == total as i64,
        "topic {topic} holds {records} records, expected {total}"
    );
    let reader = check_exactly(broker, &topic, total).await?;
    Ok(HeldRun {
        measured: Measured {
            n: total,
            elapsed,
            busy,
        },
        churned: total - n,
        dead,
        size,
        reader,
    })
}

/// Section 8's held-snapshot rows: each relay clean, then held + churn;
/// the ratios, the dead tuples and sizes, the reader's verdicts.
pub(crate) async fn held_snapshot_rows(b: &mut Bench, broker: &Broker) -> Result<()> {
    let n = b.sizes.kafka_backlog;
    let dead_tuples = DeadTuples::choose(b).await;
    println!(
        "\n  Held snapshot: drains of a {}-message backlog ({KAFKA_KEYS} keys), clean, then while another",
        thousands(n as u64)
    );
    println!("  session holds BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM <dead_letters> open");
    println!("  (a snapshot, no xid: it pins the xmin horizon, so no dead outbox row can be vacuumed) and a");
    println!("  producer churns (1 message per transaction, {} ms pause; its messages are delivered and read", CHURN_PAUSE.as_millis());
    println!("  back too). relaybox runs RelayConfig::default() with a KafkaSink; the hand-tuned relay as above.");
    println!("  Dead tuples: {}.", dead_tuples.describe());
    print_rows_header();
    let mut rates = Vec::new();
    for who in [Relayer::Relaybox, Relayer::HandTuned] {
        let mut pair = [0.0; 2];
        for (k, held) in [false, true].into_iter().enumerate() {
            let run = drain(b, broker, who, held, n, dead_tuples).await?;
            let name = format!(
                "{}, {}",
                who.name(),
                if held {
                    "held snapshot + churn"
                } else {
                    "clean"
                }
            );
            print_row(&name, &run.measured);
            println!(
                "      {} backlog + {} churned; outbox at the end: {} dead tuples, {:.1} MB",
                thousands(n as u64),
                thousands(run.churned as u64),
                thousands(run.dead.max(0) as u64),
                run.size as f64 / 1e6
            );
            println!("      reader: {}", run.reader);
            pair[k] = run.measured.rate();
            b.figure(
                format!("kafka: {name}"),
                format!(
                    "{} msg/s; {} dead tuples, {:.1} MB outbox at the end",
                    thousands(run.measured.rate() as u64),
                    thousands(run.dead.max(0) as u64),
                    run.size as f64 / 1e6
                ),
                "(info)",
                None,
            );
        }
        rates.push((who, pair));
    }
    for (who, [clean, held]) in rates {
        let ratio = held / clean;
        let met = (who == Relayer::Relaybox).then_some(ratio >= HELD_TARGET);
        println!(
            "    {:<42} {ratio:>6.2}   target {:<8} {}",
            format!("{} held / clean drain rate", who.name()),
            if met.is_some() {
                format!(">= {HELD_TARGET:.2}")
            } else {
                "(info)".into()
            },
            verdict(met)
        );
        b.figure(
            format!("kafka: {} held-snapshot / clean drain", who.name()),
            format!("{ratio:.2}"),
            if met.is_some() { ">= 0.70" } else { "(info)" },
            met,
        );
    }
    b.reset().await
}

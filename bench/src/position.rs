//! PostgreSQL alone, two ways of taking delivered rows off an outbox:
//! claiming with `FOR UPDATE SKIP LOCKED` and deleting each batch (what the
//! relay does), against reading each partition forward from a cursor up to
//! the snapshot horizon and retiring whole segments with `TRUNCATE`. Each
//! runs three fill-and-drain cycles, clean and then while another session
//! holds a snapshot open and a producer commits one message per millisecond;
//! the figures are the drain rate, the machine's CPU per message, and the
//! outbox's dead tuples and size after each cycle.
//!
//! The position layout is the benchmark's own: a table partitioned into a
//! ring of segments by `(seq / SEGMENT_ROWS) % SEGMENTS`, each row stamped
//! with its transaction's id (`xid8 DEFAULT pg_current_xact_id()`), read per
//! partition in `(xid, seq)` order below `pg_snapshot_xmin` (no transaction
//! still running can commit a row there, so a reader never passes a row that
//! commits later), one cursor row per partition written per batch, and a
//! segment truncated once every row in it is behind every cursor.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection, Row};
use tokio::sync::watch;
use uuid::Uuid;

use crate::ceiling::{claim_and_delete, claim_batch};
use crate::context::{message, Bench, TOPIC};
use crate::cpu::{Busy, MachineCpu};
use crate::held_snapshot::HeldSnapshot;
use crate::report::{header, rate, thousands};

/// Rows of a segment of the position layout.
const SEGMENT_ROWS: i64 = 50_000;
/// Segments in the ring.
const SEGMENTS: i64 = 8;
/// Outbox partitions (the store's default).
const PARTITIONS: i32 = 16;
/// Rows one batch reads or claims at most (the relay's largest batch).
const BATCH: i64 = 5_000;
/// Fill-and-drain cycles per row of the table.
const CYCLES: usize = 3;
/// The producer's pause between its one-message transactions.
const CHURN_EVERY: Duration = Duration::from_millis(1);

/// How delivered rows leave the outbox.
#[derive(Clone, Copy, PartialEq)]
enum Design {
    /// `SELECT ... FOR UPDATE SKIP LOCKED` then `DELETE` per batch.
    ClaimDelete,
    /// Read by position from per-partition cursors; segments truncated.
    Position,
}

impl Design {
    fn name(self) -> &'static str {
        match self {
            Design::ClaimDelete => "claim + delete",
            Design::Position => "read by position",
        }
    }
}

/// One fill-and-drain cycle's figures.
struct Cycle {
    rows: usize,
    elapsed: Duration,
    busy: Busy,
    dead: i64,
    bytes: i64,
}

/// Runs the section; its tables are dropped afterwards, also after an error.
pub(crate) async fn section_position(b: &mut Bench) -> Result<()> {
    let n = b.sizes.kafka_backlog;
    header(&format!(
        "Reading by position vs claiming and deleting: PostgreSQL alone, {CYCLES} cycles of {} messages",
        thousands(n as u64)
    ));
    println!(
        "  claim + delete   = BEGIN; SELECT ... WHERE sent_at IS NULL ORDER BY seq LIMIT {BATCH} FOR UPDATE SKIP LOCKED;"
    );
    println!("                     DELETE ... WHERE ctid = ANY($1); COMMIT");
    println!(
        "  read by position = per partition (of {PARTITIONS}): rows after its cursor below pg_snapshot_xmin, in (xid, seq)"
    );
    println!(
        "                     order, {BATCH} per batch in all; cursors written per batch; a ring of {SEGMENTS} segments of"
    );
    println!(
        "                     {} rows, each TRUNCATEd once behind every cursor",
        thousands(SEGMENT_ROWS as u64)
    );
    println!("  both loops run with jit = off on their sessions");
    println!("  held = another session in REPEATABLE READ after a read, open through the cycles, and a producer");
    println!("         committing one message every millisecond during each drain (its rows are counted)");
    let outcome = run(b, n).await;
    let dropped = b
        .exec(format!(
            "DROP TABLE IF EXISTS {p}pos_outbox, {p}pos_cursors CASCADE",
            p = b.prefix
        ))
        .await;
    outcome?;
    dropped
}

async fn run(b: &mut Bench, n: usize) -> Result<()> {
    create_position_tables(b).await?;
    println!(
        "\n  {:<18} {:<6} {:>5} {:>9} {:>10} {:>12} {:>12} {:>9}",
        "design", "load", "cycle", "rows", "msg/s", "CPU µs/msg", "dead tuples", "size MB"
    );
    let mut medians = Vec::new();
    for design in [Design::ClaimDelete, Design::Position] {
        for held in [false, true] {
            let mut holder = if held {
                Some(HeldSnapshot::open(b, "leases").await?)
            } else {
                None
            };
            let mut rates = Vec::new();
            for cycle in 1..=CYCLES {
                let c = fill_and_drain(b, design, n, held, cycle == 1).await?;
                let r = rate(c.rows, c.elapsed);
                rates.push(r);
                println!(
                    "  {:<18} {:<6} {:>5} {:>9} {:>10} {:>12.1} {:>12} {:>9.1}",
                    design.name(),
                    if held { "held" } else { "clean" },
                    cycle,
                    thousands(c.rows as u64),
                    thousands(r as u64),
                    c.busy.machine * 1e6 / c.rows as f64,
                    thousands(c.dead as u64),
                    c.bytes as f64 / 1_048_576.0,
                );
            }
            if let Some(snapshot) = holder.take() {
                snapshot.release().await?;
            }
            rates.sort_by(f64::total_cmp);
            medians.push((design, held, rates[rates.len() / 2]));
        }
    }
    let median = |d: Design, h: bool| {
        medians
            .iter()
            .find(|(md, mh, _)| *md == d && *mh == h)
            .map(|m| m.2)
            .unwrap_or(f64::NAN)
    };
    println!();
    for design in [Design::ClaimDelete, Design::Position] {
        let share = median(design, true) / median(design, false);
        println!(
            "  {:<18} held / clean (medians of the cycles): {:.2}",
            design.name(),
            share
        );
        b.figure(
            format!("PostgreSQL alone, {}: held / clean drain", design.name()),
            format!("{share:.2}"),
            "info",
            None,
        );
    }
    let speedup = median(Design::Position, false) / median(Design::ClaimDelete, false);
    println!("  read by position / claim + delete, clean: {speedup:.2}");
    b.figure(
        "PostgreSQL alone: read by position / claim + delete, clean",
        format!("{speedup:.2}"),
        "info",
        None,
    );
    Ok(())
}

/// Creates the position layout's outbox (a ring of segments) and cursors.
async fn create_position_tables(b: &Bench) -> Result<()> {
    let p = &b.prefix;
    let mut ddl = format!(
        "CREATE TABLE {p}pos_outbox (\
             seq bigint GENERATED ALWAYS AS IDENTITY, \
             xid xid8 NOT NULL DEFAULT pg_current_xact_id(), \
             partition int4 NOT NULL, id uuid NOT NULL, topic text NOT NULL, key text, type text, \
             payload bytea NOT NULL, content_type text NOT NULL, headers jsonb NOT NULL, \
             created_at timestamptz NOT NULL DEFAULT now(), available_at timestamptz NOT NULL DEFAULT now()\
         ) PARTITION BY LIST (((seq / {SEGMENT_ROWS}) % {SEGMENTS}));\n"
    );
    for s in 0..SEGMENTS {
        ddl.push_str(&format!(
            "CREATE TABLE {p}pos_outbox_{s} PARTITION OF {p}pos_outbox FOR VALUES IN ({s});\n"
        ));
    }
    ddl.push_str(&format!(
        "CREATE INDEX ON {p}pos_outbox (partition, xid, seq);\n\
         CREATE TABLE {p}pos_cursors (partition int4 PRIMARY KEY, xid xid8 NOT NULL, seq int8 NOT NULL);\n\
         INSERT INTO {p}pos_cursors SELECT g, '0'::xid8, 0 FROM generate_series(0, {}) g;",
        PARTITIONS - 1
    ));
    b.exec(ddl).await
}

/// Fills the design's outbox with `n` messages, then drains it (with the
/// producer running when `held`) and reads the table's dead tuples and size.
async fn fill_and_drain(
    b: &Bench,
    design: Design,
    n: usize,
    held: bool,
    first: bool,
) -> Result<Cycle> {
    if first {
        b.backlog(n, TOPIC).await?;
    } else {
        append_backlog(b, n).await?;
    }
    if design == Design::Position {
        copy_backlog(b).await?;
    }
    let (stop, stopped) = watch::channel(false);
    let churn =
        held.then(|| tokio::spawn(churn(b.pool.clone(), b.prefix.clone(), design, stopped)));
    let cpu = MachineCpu::start();
    let started = Instant::now();
    let mut drained = match design {
        Design::ClaimDelete => claim_delete(b, n, &stop).await?,
        Design::Position => read_by_position(b, n, &stop).await?,
    };
    stop.send_replace(true);
    let churned = match churn {
        Some(task) => task.await??,
        None => 0,
    };
    // The last rows the producer committed after the drain passed `n`.
    drained += match design {
        Design::ClaimDelete => claim_delete(b, usize::MAX, &stop).await?,
        Design::Position => read_by_position(b, usize::MAX, &stop).await?,
    };
    let elapsed = started.elapsed();
    let busy = cpu.stop();
    ensure!(
        drained == n + churned,
        "{}: drained {drained} rows, expected {n} + {churned} from the producer",
        design.name()
    );
    // Other backends flush their table statistics at most once a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let table = match design {
        Design::ClaimDelete => b.table("outbox"),
        Design::Position => b.table("pos_outbox"),
    };
    let (dead, bytes): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(pg_stat_get_dead_tuples(relid)), 0)::int8, \
                coalesce(sum(pg_total_relation_size(relid)), 0)::int8 \
         FROM (SELECT relid FROM pg_partition_tree($1::regclass) UNION SELECT $1::regclass) t",
    )
    .bind(&table)
    .fetch_one(&b.pool)
    .await?;
    Ok(Cycle {
        rows: drained,
        elapsed,
        busy,
        dead,
        bytes,
    })
}

/// Enqueues `n` more messages behind what the outbox holds (its dead rows
/// stay), 1,000 per transaction, then ANALYZE and CHECKPOINT as
/// [`Bench::backlog`] does.
async fn append_backlog(b: &Bench, n: usize) -> Result<()> {
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + 1000).min(n)).map(|j| message(TOPIC, j)).collect();
        let mut tx = b.pool.begin().await?;
        b.store.enqueue_batch(&mut *tx, &batch).await?;
        tx.commit().await?;
        i += 1000;
    }
    let pending = b.store.pending_count().await?;
    ensure!(pending == n as i64, "backlog has {pending} rows, not {n}");
    b.exec(format!("ANALYZE {}", b.table("outbox"))).await?;
    b.exec("CHECKPOINT".into()).await
}

/// Copies the backlog the store wrote into the position layout, a thousand
/// rows per transaction (so the rows carry many transaction ids), then
/// empties the store's outbox (`TRUNCATE`: its rows were never delivered).
async fn copy_backlog(b: &Bench) -> Result<()> {
    let p = &b.prefix;
    let copy = format!(
        "INSERT INTO {p}pos_outbox (partition, id, topic, key, type, payload, content_type, headers, created_at, available_at) \
         SELECT partition, id, topic, key, type, payload, content_type, headers, created_at, available_at \
         FROM {p}outbox WHERE seq > $1 AND seq <= $1 + 1000 ORDER BY seq"
    );
    let (mut from, last): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT coalesce(min(seq) - 1, 0), coalesce(max(seq), 0) FROM {p}outbox"
    )))
    .fetch_one(&b.pool)
    .await?;
    while from < last {
        sqlx::query(AssertSqlSafe(copy.as_str()))
            .bind(from)
            .execute(&b.pool)
            .await?;
        from += 1000;
    }
    b.exec(format!("TRUNCATE {p}outbox")).await?;
    b.exec(format!("ANALYZE {p}pos_outbox")).await?;
    b.exec("CHECKPOINT".into()).await
}

/// Commits one message per transaction every [`CHURN_EVERY`] until told to
/// stop; returns how many it committed.
async fn churn(
    pool: sqlx::PgPool,
    prefix: String,
    design: Design,
    mut stop: watch::Receiver<bool>,
) -> Result<usize> {
    let insert = match design {
        Design::ClaimDelete => format!(
            "INSERT INTO {prefix}outbox (id, topic, key, partition, type, payload, content_type, headers, created_at, available_at) \
             VALUES ($1, $2, $3, $4, 'OrderPlaced', $5, 'application/json', '{{}}', now(), now())"
        ),
        Design::Position => format!(
            "INSERT INTO {prefix}pos_outbox (id, topic, key, partition, type, payload, content_type, headers) \
             VALUES ($1, $2, $3, $4, 'OrderPlaced', $5, 'application/json', '{{}}')"
        ),
    };
    let mut committed = 0usize;
    let mut tick = tokio::time::interval(CHURN_EVERY);
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(committed),
            _ = tick.tick() => {}
        }
        let m = message(TOPIC, committed);
        let key = m.key.clone().unwrap_or_default();
        let mut tx = pool.begin().await?;
        sqlx::query(AssertSqlSafe(insert.as_str()))
            .bind(Uuid::now_v7())
            .bind(TOPIC)
            .bind(&key)
            .bind((committed % PARTITIONS as usize) as i32)
            .bind(m.payload.as_slice())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        committed += 1;
    }
}

/// A session of its own for a drain loop, with `jit = off`: PostgreSQL
/// would compile the read by position (its estimated cost passes
/// `jit_above_cost`) at most executions, which costs more than it runs.
/// Both designs run so; the session closes when the loop ends.
async fn loop_session(b: &Bench) -> Result<PgConnection> {
    let mut conn = b.pool.acquire().await?.detach();
    sqlx::query("SET jit = off").execute(&mut conn).await?;
    Ok(conn)
}

/// Claims and deletes batches until the outbox is empty, or until `enough`
/// rows are drained (then tells the producer to stop); returns the rows.
async fn claim_delete(b: &Bench, enough: usize, stop: &watch::Sender<bool>) -> Result<usize> {
    let (select, delete) = claim_and_delete(&b.table("outbox"));
    let mut conn = loop_session(b).await?;
    let mut done = 0usize;
    loop {
        let mut tx = conn.begin().await?;
        let (addresses, _) = claim_batch(&mut tx, &select, BATCH).await?;
        if addresses.is_empty() {
            tx.commit().await?;
            if done >= enough || *stop.borrow() {
                return Ok(done);
            }
            tokio::task::yield_now().await;
            continue;
        }
        sqlx::query(AssertSqlSafe(delete.as_str()))
            .bind(&addresses)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        done += addresses.len();
        if done >= enough {
            stop.send_replace(true);
        }
    }
}

/// Reads every partition forward from its cursor, batch after batch,
/// writing the cursors after each batch and truncating the segments every
/// cursor has passed; stops when a read finds nothing and `enough` rows are
/// drained (or the producer was stopped). Returns the rows.
async fn read_by_position(b: &Bench, enough: usize, stop: &watch::Sender<bool>) -> Result<usize> {
    let p = &b.prefix;
    let per_partition = (BATCH + i64::from(PARTITIONS) - 1) / i64::from(PARTITIONS);
    let read = format!(
        "SELECT o.partition, o.xid::text AS xid, o.seq, o.id, o.topic, o.key, o.type, o.payload, o.content_type, \
                o.headers::text AS headers, o.created_at, o.available_at \
         FROM {p}pos_cursors c CROSS JOIN LATERAL (\
             SELECT * FROM {p}pos_outbox o WHERE o.partition = c.partition AND (o.xid, o.seq) > (c.xid, c.seq) \
             AND o.xid < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY o.xid, o.seq LIMIT $1) o"
    );
    let advance = format!(
        "UPDATE {p}pos_cursors c SET xid = v.xid::xid8, seq = v.seq \
         FROM unnest($1::int4[], $2::text[], $3::int8[]) AS v(partition, xid, seq) WHERE c.partition = v.partition"
    );
    let mut conn = loop_session(b).await?;
    let mut done = 0usize;
    loop {
        let rows = sqlx::query(AssertSqlSafe(read.as_str()))
            .bind(per_partition)
            .fetch_all(&mut conn)
            .await?;
        if rows.is_empty() {
            retire_segments(&mut conn, p).await?;
            if done >= enough || *stop.borrow() {
                return Ok(done);
            }
            tokio::task::yield_now().await;
            continue;
        }
        // Rows come per partition in (xid, seq) order: each partition's last
        // row is its new cursor.
        let (mut parts, mut xids, mut seqs) = (Vec::new(), Vec::new(), Vec::new());
        for row in &rows {
            row.try_get::<Uuid, _>("id")?;
            row.try_get::<&[u8], _>("payload")?;
            let part: i32 = row.try_get("partition")?;
            let xid: String = row.try_get("xid")?;
            let seq: i64 = row.try_get("seq")?;
            if parts.last() == Some(&part) {
                *xids.last_mut().expect("a cursor per partition") = xid;
                *seqs.last_mut().expect("a cursor per partition") = seq;
            } else {
                parts.push(part);
                xids.push(xid);
                seqs.push(seq);
            }
        }
        sqlx::query(AssertSqlSafe(advance.as_str()))
            .bind(&parts)
            .bind(&xids)
            .bind(&seqs)
            .execute(&mut conn)
            .await?;
        done += rows.len();
        if done >= enough {
            stop.send_replace(true);
        }
        if done % (SEGMENT_ROWS as usize) < rows.len() {
            retire_segments(&mut conn, p).await?;
        }
    }
}

/// Truncates each non-empty segment all of whose rows are behind their
/// partition's cursor. The segment is locked first (`NOWAIT`: a writer
/// still inserting into it keeps it for the next try), so the check sees
/// every row that can ever be in it.
async fn retire_segments(conn: &mut PgConnection, p: &str) -> Result<()> {
    for s in 0..SEGMENTS {
        let segment = format!("{p}pos_outbox_{s}");
        let mut tx = conn.begin().await?;
        let locked = sqlx::raw_sql(AssertSqlSafe(format!(
            "LOCK TABLE {segment} IN ACCESS EXCLUSIVE MODE NOWAIT"
        )))
        .execute(&mut *tx)
        .await;
        if locked.is_err() {
            tx.rollback().await?;
            continue;
        }
        let (rows, behind): (bool, bool) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT 1 FROM {segment}), \
                    NOT EXISTS (SELECT 1 FROM {segment} o JOIN {p}pos_cursors c ON c.partition = o.partition \
                                WHERE (o.xid, o.seq) > (c.xid, c.seq))"
        )))
        .fetch_one(&mut *tx)
        .await?;
        if rows && behind {
            sqlx::raw_sql(AssertSqlSafe(format!("TRUNCATE {segment}")))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

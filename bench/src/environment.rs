//! The run's preamble: the machine, PostgreSQL's version and settings, the
//! load average and the round trip of one statement.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::Result;

use crate::args::Args;
use crate::context::{message, Bench, KEYS, TOPIC};
use crate::cpu::cores;
use crate::report::{histogram, ms};

pub(crate) async fn print_environment(b: &Bench, args: &Args) -> Result<()> {
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

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

//! The relaybox benchmark program of `dev/bench`: throughput, latency and
//! idle-CPU figures of the outbox, the relay, the database transport and
//! (on request) the Kafka transport on PostgreSQL, each with its target and
//! MET/MISSED. It is not a test: nothing fails but the run itself.
//!
//! docs/benchmarks.md describes how to run it, what each section measures
//! and the settings for experiments; `--help` lists the arguments. This file
//! parses them and runs the sections; each section is a module of its own.

mod args;
mod ceiling;
mod context;
mod cpu;
mod drain;
mod enqueue;
mod environment;
mod explain;
mod held_snapshot;
mod idle;
mod kafka;
mod latency;
mod naive;
mod pipeline;
mod position;
mod report;
mod steady;

use std::time::Instant;

use anyhow::{anyhow, ensure, Context, Result};
use relaybox::{Store, StoreOptions};

use crate::args::{parse_args, Args, Section};
use crate::context::{drop_tables, Bench, Sizes};
use crate::drain::section_drain;
use crate::enqueue::{enqueue_peer, section_enqueue, ENQUEUE_PEER};
use crate::environment::{loadavg, print_environment};
use crate::explain::section_explain;
use crate::idle::section_idle;
use crate::kafka::takeover::{relay_child, RELAY_CHILD};
use crate::kafka::{delete_kafka_leftovers, section_kafka, KafkaParts};
use crate::latency::section_latency;
use crate::naive::section_naive;
use crate::position::section_position;
use crate::report::print_summary;

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
    match argv.get(1).map(String::as_str) {
        Some(RELAY_CHILD) => return relay_child(&argv[2..]).await,
        // The bindings' benchmarks run it for their Rust baseline.
        Some(ENQUEUE_PEER) => return enqueue_peer(&argv[2..]).await,
        _ => {}
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
    if s.contains(&Section::Position) {
        section_position(b).await?;
    }
    if s.contains(&Section::Kafka) {
        section_kafka(b, KafkaParts::All).await?;
    } else {
        if s.contains(&Section::KafkaHeld) {
            section_kafka(b, KafkaParts::HeldOnly).await?;
        }
        if s.contains(&Section::KafkaLatency) {
            section_kafka(b, KafkaParts::LatencyOnly).await?;
        }
    }
    Ok(())
}

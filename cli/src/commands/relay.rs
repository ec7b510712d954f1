//! `relaybox relay`: runs a relay with the database transport until SIGINT or
//! SIGTERM, then shuts it down gracefully.

use std::sync::Arc;

use relaybox::{DatabaseSink, Relay};

use crate::context::Context;
use crate::{listen, signals};

/// Arguments of `relaybox relay`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Run a relay: move committed outbox rows, in order per key, to the log \
                  table of the database transport in the same database (read them with \
                  `relaybox tail` or a DatabaseSource consumer). Several relays share the \
                  partitions through leases. Runs until SIGINT (Ctrl-C) or SIGTERM, then \
                  finishes the batch in flight, releases its leases and exits 0.",
    after_long_help = "CONFIGURATION:\n  \
        The [relay] table of the --config file sets any RelayConfig field:\n\n  \
        [relay]\n  \
        batch_size = 500          # rows claimed per batch (1-10000)\n  \
        poll_interval = \"1s\"      # fallback poll when no wake-up arrives\n  \
        lease_ttl = \"15s\"         # a dead relay's partitions move after this long\n  \
        max_attempts = 10         # attempts before a message becomes a dead letter\n  \
        backoff_initial = \"500ms\" # first retry delay, doubling per attempt\n  \
        backoff_max = \"5m\"        # longest retry delay\n  \
        publish_timeout = \"7s\"    # must be shorter than lease_ttl\n  \
        retention = \"1d\"          # keep delivered rows this long (default: delete)\n  \
        instance_id = \"relay-1\"   # shown by `relaybox status`\n\n  \
        Durations are integer milliseconds or text with ms, s, m, h or d.\n\n\
        ENVIRONMENT (overrides the file; same value types, e.g. 500 or \"250ms\"):\n  \
        RELAYBOX_RELAY_BATCH_SIZE     batch_size\n  \
        RELAYBOX_RELAY_POLL_INTERVAL  poll_interval\n  \
        RELAYBOX_RELAY_LEASE_TTL      lease_ttl\n  \
        RELAYBOX_RELAY_MAX_ATTEMPTS   max_attempts\n  \
        RELAYBOX_LISTEN               --listen\n  \
        RUST_LOG                      log filter (default: info); logs go to stderr"
)]
pub struct Args {
    /// Run the migrations (`relaybox migrate`) before starting
    #[arg(long)]
    pub migrate: bool,

    /// Serve /healthz, /readyz and /metrics (Prometheus) over HTTP on this
    /// address: PORT (on 127.0.0.1) or IP:PORT (docs/metrics.md)
    #[arg(long, env = "RELAYBOX_LISTEN", value_name = "ADDRESS")]
    pub listen: Option<String>,
}

/// Runs the relay until a shutdown signal arrives.
pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    // Validate the settings before touching the database.
    let config = ctx.relay_config()?;
    let listen = args
        .listen
        .as_deref()
        .filter(|l| !l.trim().is_empty())
        .map(listen::parse_address)
        .transpose()?;
    let store = ctx.connect().await?;
    if args.migrate {
        store.migrate().await?;
        tracing::info!(url = %store.url(), "relaybox schema migrated");
    }
    // Fails with a clear "run relaybox migrate" error when the schema is missing.
    let partitions = store.partitions().await?;

    let stop = signals::shutdown()?;
    // Listen before the relay starts, so that a taken address fails at once;
    // the recorder goes first so that the relay records into it.
    let http = match listen {
        Some(address) => Some((listen::install_recorder()?, listen::bind(address).await?)),
        None => None,
    };
    let sink = Arc::new(DatabaseSink::new(store.clone()));
    let relay = Arc::new(Relay::start(store.clone(), sink, config)?);
    let server = http.map(|(metrics, listener)| {
        let address = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(%address, "relaybox relay serving /healthz, /readyz and /metrics");
        listen::Server::start(listener, relay.clone(), metrics)
    });
    tracing::info!(
        owner = relay.owner(),
        url = %store.url(),
        table_prefix = %store.options().table_prefix,
        partitions,
        "relaybox relay running; SIGINT or SIGTERM stops it"
    );

    let signal = stop.await;
    tracing::info!(signal, "relaybox relay shutting down");
    // A second signal while shutting down stops at once (leases then expire after lease_ttl).
    let again = signals::shutdown()?;
    let result = tokio::select! {
        result = relay.shutdown() => result,
        signal = again => {
            tracing::warn!(signal, "relaybox relay stopped without finishing its batch");
            std::process::exit(130);
        }
    };
    if let Some(server) = server {
        server.stop().await;
    }
    let stats = relay.stats();
    tracing::info!(
        delivered = stats.delivered,
        retried = stats.retried,
        dead_lettered = stats.dead_lettered,
        batches = stats.batches,
        "relaybox relay stopped"
    );
    store.close().await;
    Ok(result?)
}

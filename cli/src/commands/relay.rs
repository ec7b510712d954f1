//! `relaybox relay`: runs a relay to the configured transport or routes
//! until SIGINT or SIGTERM, then shuts it down gracefully; `--check`
//! validates the configuration and connects, then exits.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use relaybox::{Relay, TransportConfig};

use crate::console::{Access, Console, Mount};
use crate::context::Context;
use crate::{listen, signals};

/// How long `--check` waits for the transport to answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// Arguments of `relaybox relay`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Run a relay: move committed outbox rows, in order per key, to the \
                  transport of the --config file's [transport] table or [[route]] tables \
                  (default: the log table of the database transport in the same database; \
                  read it with `relaybox tail`). Several relays share the partitions through \
                  leases; relays whose routes serve disjoint topics share one outbox. Runs \
                  until SIGINT (Ctrl-C) or SIGTERM, then finishes the batch in flight, \
                  releases its leases and exits 0.",
    after_long_help = "CONFIGURATION:\n  \
        The [relay] table of the --config file sets any RelayConfig field:\n\n  \
        [relay]\n  \
        batch_size = 5000         # the largest batch (1-10000); batches adapt below it\n  \
        poll_interval = \"1s\"      # fallback poll when no wake-up arrives\n  \
        lease_ttl = \"15s\"         # a dead relay's partitions move after this long\n  \
        max_attempts = 10         # attempts before a message becomes a dead letter\n  \
        backoff_initial = \"500ms\" # first retry delay, doubling per attempt\n  \
        backoff_max = \"5m\"        # longest retry delay\n  \
        publish_timeout = \"7s\"    # must be shorter than lease_ttl\n  \
        retention = \"1d\"          # keep delivered rows this long (default: delete)\n  \
        instance_id = \"relay-1\"   # shown by `relaybox status`\n\n  \
        Durations are integer milliseconds or text with ms, s, m, h or d.\n\n  \
        The transport is a [transport] table naming one transport with its settings\n  \
        (the JSON the language bindings take), e.g.\n\n  \
        [transport.kafka]\n  \
        bootstrap_servers = \"kafka-1:9092\"\n\n  \
        Routes send each topic to a transport (default: [transport]); a relay with\n  \
        routes claims only their topics:\n\n  \
        [[route]]\n  \
        topics = [\"orders.*\"]           # names, or globs with *\n  \
        destination = \"prod.{topic}\"   # optional: the name published under\n  \
        [route.transport.rabbitmq]\n  \
        url = \"amqps://rabbit:5671/%2f\"\n\n  \
        See docs/operations.md for a complete file.\n\n\
        ENVIRONMENT (overrides the file; same value types, e.g. 500 or \"250ms\"):\n  \
        RELAYBOX_RELAY_BATCH_SIZE     batch_size\n  \
        RELAYBOX_RELAY_POLL_INTERVAL  poll_interval\n  \
        RELAYBOX_RELAY_LEASE_TTL      lease_ttl\n  \
        RELAYBOX_RELAY_MAX_ATTEMPTS   max_attempts\n  \
        RELAYBOX_TRANSPORT            kafka, rabbitmq, redis, sns, sqs, message_db or\n  \
                                      eventodb, with their variables (RELAYBOX_KAFKA_BOOTSTRAP,\n  \
                                      RELAYBOX_RABBITMQ_URL, RELAYBOX_REDIS_URL, ...): the\n  \
                                      transport, instead of the file's [transport]\n  \
        RELAYBOX_LISTEN               --listen\n  \
        RUST_LOG                      log filter (default: info); logs go to stderr\n  \
        OTEL_EXPORTER_OTLP_ENDPOINT   OpenTelemetry traces over OTLP/HTTP to this collector\n  \
                                      (or OTEL_TRACES_EXPORTER=otlp); the other OTEL_*\n  \
                                      variables apply (docs/observability.md)"
)]
pub struct Args {
    /// Run the migrations (`relaybox migrate`) before starting
    #[arg(long)]
    pub migrate: bool,

    /// Check the configuration, connect to the database and the transport,
    /// print what would run, and exit (0 when everything is in order)
    #[arg(long)]
    pub check: bool,

    /// Serve /healthz, /readyz and /metrics (Prometheus) over HTTP on this
    /// address: PORT (on 127.0.0.1) or IP:PORT (docs/metrics.md)
    #[arg(long, env = "RELAYBOX_LISTEN", value_name = "ADDRESS")]
    pub listen: Option<String>,

    /// Also serve the operator console under /console on the --listen
    /// address (changes need RELAYBOX_CONSOLE_TOKEN; docs/console.md)
    #[arg(long, requires = "listen")]
    pub console: bool,
}

/// Runs the relay until a shutdown signal arrives.
pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    // Validate the settings before touching the database.
    let config = ctx.relay_config()?;
    let transport = ctx.transport_config()?;
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

    let sink = transport.sink(&store)?;
    if args.check {
        println!("{}", describe(&transport));
        println!(
            "database {} (table prefix {:?}, {partitions} partitions): ok",
            store.url(),
            store.options().table_prefix
        );
        let checked = tokio::time::timeout(CHECK_TIMEOUT, sink.check()).await;
        store.close().await;
        match checked {
            Ok(Ok(())) => println!("transport {}: ok", transport.name()),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(anyhow!(
                    "transport {} did not answer within {CHECK_TIMEOUT:?}",
                    transport.name()
                ))
            }
        }
        return Ok(());
    }

    let stop = signals::shutdown()?;
    // Spans over OTLP when the OTEL_* environment asks for traces.
    let traces = relaybox::telemetry::otlp::from_env()?;
    if traces.is_some() {
        tracing::info!("relaybox relay exporting traces over OTLP");
    }
    // Listen before the relay starts, so that a taken address fails at once;
    // the recorder goes first so that the relay records into it.
    let http = match listen {
        Some(address) => Some((listen::install_recorder()?, listen::bind(address).await?)),
        None => None,
    };
    let relay = Arc::new(Relay::start(store.clone(), sink, config)?);
    let server = http.map(|(metrics, listener)| {
        let address = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(%address, "relaybox relay serving /healthz, /readyz and /metrics");
        let console = args.console.then(|| {
            tracing::info!(%address, "relaybox relay serving the console under /console");
            // `listen` is the address `listener` was bound to.
            let local_only = listen.is_some_and(|a| a.ip().is_loopback());
            Console::router(
                store.clone(),
                Access::from_env(false),
                Mount::at("/console"),
                local_only,
            )
        });
        listen::Server::start(listener, relay.clone(), metrics, console)
    });
    tracing::info!(
        owner = relay.owner(),
        url = %store.url(),
        table_prefix = %store.options().table_prefix,
        partitions,
        transport = %describe(&transport),
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
    if let Some(traces) = traces {
        // Sends the last spans; blocks on the export, so off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    }
    Ok(result?)
}

/// One line saying where each topic goes: `kafka`, or
/// `orders.* -> kafka; billing -> rabbitmq (as prod.{topic})`.
fn describe(transport: &TransportConfig) -> String {
    match transport {
        TransportConfig::Routes(routes) => routes
            .iter()
            .map(|r| {
                let mut line = format!("{} -> {}", r.topics.join(", "), r.transport.name());
                if let Some(d) = &r.destination {
                    line.push_str(&format!(" (as {d})"));
                }
                line
            })
            .collect::<Vec<_>>()
            .join("; "),
        other => format!("every topic -> {}", other.name()),
    }
}

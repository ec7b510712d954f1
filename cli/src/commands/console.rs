//! `relaybox console`: serves the operator console (a web page with backlog,
//! throughput, relays, consumer positions and dead letters) until SIGINT or
//! SIGTERM.

use crate::console::auth::Changes;
use crate::console::{Access, Console, Mount, TOKEN_ENV};
use crate::context::Context;
use crate::{listen, signals};

/// Where the console listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8089";

/// Arguments of `relaybox console`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Serve the operator console: a web page with the backlog and oldest \
                  pending age per topic, the throughput of the last minutes, the relays \
                  and their leases, the consumer groups' positions and lag on the database \
                  transport, and the dead letters (filter, view, retry, purge). Runs until \
                  SIGINT (Ctrl-C) or SIGTERM. Listens on 127.0.0.1 unless --listen names \
                  another address.",
    after_long_help = "SECURITY:\n  \
        Reading needs nothing. Retrying or purging dead letters needs the token of\n  \
        RELAYBOX_CONSOLE_TOKEN, which the page sends as `Authorization: Bearer <token>`;\n  \
        without that variable, or with --read-only, every change is refused. The page\n  \
        never shows the database URL. See docs/console.md.\n\n\
        ENVIRONMENT:\n  \
        RELAYBOX_CONSOLE_TOKEN        the token changes need (unset: read-only)\n  \
        RELAYBOX_CONSOLE_LISTEN       --listen"
)]
pub struct Args {
    /// Address to serve on: PORT (on 127.0.0.1) or IP:PORT (0.0.0.0:8089 for
    /// every interface)
    #[arg(
        long,
        env = "RELAYBOX_CONSOLE_LISTEN",
        hide_env_values = true,
        value_name = "ADDRESS",
        default_value = DEFAULT_LISTEN
    )]
    pub listen: String,

    /// Refuse every change (retry, purge), even with the token
    #[arg(long)]
    pub read_only: bool,
}

/// Serves the console until a shutdown signal arrives.
pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let address = listen::parse_address(&args.listen)?;
    let store = ctx.connect().await?;
    // Fails with a clear "run relaybox migrate" error when the schema is missing.
    if let Err(e) = store.partitions().await {
        store.close().await;
        return Err(e.into());
    }
    let stop = signals::shutdown()?;
    let listener = listen::bind(address).await?;
    let address = listener.local_addr()?;
    let access = Access::from_env(args.read_only);
    if !address.ip().is_loopback() {
        tracing::warn!(
            %address,
            "relaybox console listens beyond this machine: anyone who reaches it can read \
             the backlog and the dead letters' payloads"
        );
    }
    let changes = match access.changes() {
        Changes::Token => format!("changes need {TOKEN_ENV}"),
        Changes::ReadOnly => "read-only: --read-only".to_string(),
        Changes::NoToken => format!("read-only: {TOKEN_ENV} is unset"),
    };
    // The address goes to stderr whatever the log level, for scripts that wait for it.
    eprintln!("relaybox console: serving http://{address}/ ({changes}), until Ctrl-C");
    let app = Console::router(
        store.clone(),
        access,
        Mount::root(),
        address.ip().is_loopback(),
    );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let signal = stop.await;
            tracing::info!(signal, "relaybox console shutting down");
        })
        .await;
    store.close().await;
    Ok(served?)
}

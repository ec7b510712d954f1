//! `relaybox migrate`: creates or upgrades the relaybox tables.

use std::io::Write as _;

use crate::context::Context;

/// Arguments of `relaybox migrate`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Create or upgrade the relaybox tables (outbox, dead letters, inbox, \
                  positions, leases, relay instances, log) in the database.\n\n\
                  Idempotent and safe to run from several processes at once. On first run \
                  it also creates the lease rows of the configured partition count \
                  ([store] partitions, default 16), which is fixed afterwards."
)]
pub struct Args {}

/// Connects, migrates and prints one line naming the (redacted) database.
pub async fn run(ctx: &Context, _args: Args) -> anyhow::Result<()> {
    let store = ctx.connect().await?;
    let result = store.migrate().await;
    if result.is_ok() {
        writeln!(
            std::io::stdout(),
            "migrated {} (schema version {})",
            store.url(),
            relaybox::schema::latest_version()
        )?;
    }
    store.close().await;
    Ok(result?)
}

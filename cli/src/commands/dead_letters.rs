//! `relaybox dead-letters list|retry|purge`: inspect and act on messages that
//! failed too often (in the relay or in a consumer).

use std::io::Write as _;

use relaybox::{DeadLetter, DeadLetterFilter};
use uuid::Uuid;

use crate::context::Context;
use crate::output::{plural, table, truncate, Align};

/// The `dead-letters` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List dead letters, oldest failure first
    List(ListArgs),
    /// Move dead letters back to the outbox so the relay delivers them again
    #[command(
        long_about = "Move dead letters back to the outbox (same message id, attempts reset) \
                      so the relay delivers them again. Give the message ids to retry, or \
                      --all. Prints how many messages went back."
    )]
    Retry(Selection),
    /// Delete dead letters for good
    #[command(
        long_about = "Delete dead letters for good. Give the message ids to delete, or \
                      --all. Prints how many were deleted."
    )]
    Purge(Selection),
}

/// Arguments of `relaybox dead-letters list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Show at most N dead letters
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: u32,

    /// Print the dead letters as a JSON array (messages in canonical form)
    #[arg(long)]
    pub json: bool,
}

/// Which dead letters `retry` and `purge` act on: some ids, or all of them.
#[derive(Debug, clap::Args)]
#[group(id = "selection", required = true, multiple = false)]
pub struct Selection {
    /// Message ids of the dead letters (as shown by `relaybox dead-letters list`)
    #[arg(value_name = "ID")]
    pub ids: Vec<Uuid>,

    /// Every dead letter
    #[arg(long)]
    pub all: bool,
}

impl Selection {
    fn filter(self) -> DeadLetterFilter {
        if self.all {
            DeadLetterFilter::All
        } else {
            DeadLetterFilter::Ids(self.ids)
        }
    }
}

/// Runs one `dead-letters` subcommand.
pub async fn run(ctx: &Context, command: Command) -> anyhow::Result<()> {
    let store = ctx.connect().await?;
    let result = async {
        let text = match command {
            Command::List(args) => {
                let letters = store.dead_letters(args.limit).await?;
                if args.json {
                    serde_json::to_string_pretty(&letters)? + "\n"
                } else {
                    render(&letters, args.limit)
                }
            }
            Command::Retry(selection) => {
                let n = store.retry_dead_letters(&selection.filter()).await?;
                format!("retried {}\n", plural(n, "dead letter", "dead letters"))
            }
            Command::Purge(selection) => {
                let n = store.purge_dead_letters(&selection.filter()).await?;
                format!("purged {}\n", plural(n, "dead letter", "dead letters"))
            }
        };
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
        anyhow::Ok(())
    }
    .await;
    store.close().await;
    result
}

fn render(letters: &[DeadLetter], limit: u32) -> String {
    if letters.is_empty() {
        return "no dead letters\n".to_string();
    }
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|d| {
            let m = &d.message;
            vec![
                m.id.to_string(),
                d.origin.clone(),
                m.topic.clone(),
                m.key.clone().unwrap_or_else(|| "-".into()),
                if m.event_type.is_empty() {
                    "-".into()
                } else {
                    m.event_type.clone()
                },
                d.attempts.to_string(),
                d.failed_at.format("%Y-%m-%d %H:%M:%SZ").to_string(),
                truncate(&d.last_error, 60),
            ]
        })
        .collect();
    let mut out = table(
        &[
            ("ID", Align::Left),
            ("ORIGIN", Align::Left),
            ("TOPIC", Align::Left),
            ("KEY", Align::Left),
            ("TYPE", Align::Left),
            ("ATTEMPTS", Align::Right),
            ("FAILED_AT", Align::Left),
            ("LAST_ERROR", Align::Left),
        ],
        &rows,
    );
    if letters.len() as u64 >= u64::from(limit) {
        out.push_str(&format!(
            "(showing the first {limit}; use --limit to see more)\n"
        ));
    }
    out
}

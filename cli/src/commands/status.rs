//! `relaybox status`: backlog per topic, dead letters, parked keys,
//! partitions and relays.

use std::io::Write as _;

use chrono::Utc;
use relaybox::{Status, Store};

use crate::context::Context;
use crate::output::{key_values, short_duration, table, Align};

/// Arguments of `relaybox status`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Show the undelivered backlog per topic (pending messages, how many of \
                  them are being retried, age of the oldest, and whether a running relay \
                  serves the topic), the dead-letter count, the partition count, the live \
                  relays and which relay holds how many partition leases. Rows of a topic \
                  that no running relay serves stay pending: such topics are marked \
                  `unrouted` (relays run, but none has a route for them) or `no relay`. \
                  Parked keys are keys the relay dead-lettered a message of: relays that \
                  park keys (the default) relay none of their later messages until that \
                  dead letter is retried or purged (`relaybox dead-letters retry <ID>`, \
                  `relaybox dead-letters purge <ID>`, with the DEAD LETTER column's id); \
                  the first 100 are listed, longest parked first."
)]
pub struct Args {
    /// Print the status as JSON instead of tables
    #[arg(long)]
    pub json: bool,
}

/// Prints the store's status.
pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let store = ctx.connect().await?;
    let status = store.status().await;
    store.close().await;
    let status = status?;
    let text = if args.json {
        serde_json::to_string_pretty(&status)? + "\n"
    } else {
        render(&store, &status)
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

fn render(store: &Store, status: &Status) -> String {
    let leased: i64 = status.lease_owners.iter().map(|o| o.partitions).sum();
    let mut out = key_values(&[
        ("database", store.url().to_string()),
        ("table prefix", store.options().table_prefix.clone()),
        (
            "partitions",
            format!("{} ({leased} leased)", status.partitions),
        ),
        ("live relays", status.live_relays.to_string()),
        ("dead letters", status.dead_letters.to_string()),
        ("parked keys", status.parked_keys_total.to_string()),
    ]);

    out.push('\n');
    if status.topics.is_empty() {
        out.push_str("backlog: no undelivered messages\n");
    } else {
        let rows: Vec<Vec<String>> = status
            .topics
            .iter()
            .map(|t| {
                vec![
                    t.topic.clone(),
                    t.pending.to_string(),
                    t.retrying.to_string(),
                    short_duration(t.oldest_age_seconds),
                    match (t.served, status.live_relays) {
                        (true, _) => "yes",
                        (false, 0) => "no relay",
                        (false, _) => "unrouted",
                    }
                    .to_string(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                ("TOPIC", Align::Left),
                ("PENDING", Align::Right),
                ("RETRYING", Align::Right),
                ("OLDEST", Align::Right),
                ("SERVED", Align::Left),
            ],
            &rows,
        ));
        let unrouted: Vec<&str> = status
            .topics
            .iter()
            .filter(|t| !t.served && status.live_relays > 0)
            .map(|t| t.topic.as_str())
            .collect();
        if !unrouted.is_empty() {
            out.push_str(&format!(
                "unrouted: no running relay serves {} (their rows stay pending)\n",
                unrouted.join(", ")
            ));
        }
    }

    if !status.parked_keys.is_empty() {
        out.push('\n');
        out.push_str(&parked_keys(status));
    }

    out.push('\n');
    if status.lease_owners.is_empty() {
        out.push_str("leases: no partition is leased (no relay running)\n");
    } else {
        let now = Utc::now();
        let rows: Vec<Vec<String>> = status
            .lease_owners
            .iter()
            .map(|o| {
                let left = (o.expires_at - now).num_milliseconds().max(0) as f64 / 1000.0;
                vec![
                    o.owner.clone(),
                    o.partitions.to_string(),
                    format!("in {}", short_duration(left)),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                ("LEASE OWNER", Align::Left),
                ("PARTITIONS", Align::Right),
                ("EXPIRES", Align::Left),
            ],
            &rows,
        ));
    }
    out
}

/// The parked keys' table, and how many more there are than it shows.
fn parked_keys(status: &Status) -> String {
    let now = Utc::now();
    let rows: Vec<Vec<String>> = status
        .parked_keys
        .iter()
        .map(|k| {
            let age = (now - k.since).num_milliseconds().max(0) as f64 / 1000.0;
            vec![
                k.key.clone(),
                k.topic.clone(),
                k.partition.to_string(),
                short_duration(age),
                k.dead_letter_id.to_string(),
            ]
        })
        .collect();
    let mut out = table(
        &[
            ("PARKED KEY", Align::Left),
            ("TOPIC", Align::Left),
            ("PARTITION", Align::Right),
            ("FOR", Align::Right),
            ("DEAD LETTER", Align::Left),
        ],
        &rows,
    );
    let more = status.parked_keys_total - status.parked_keys.len() as i64;
    if more > 0 {
        out.push_str(&format!(
            "and {more} more parked keys (relaybox dead-letters list)\n"
        ));
    }
    out
}

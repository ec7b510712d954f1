//! `relaybox tail`: prints the messages of one topic from the log table of
//! the database transport, optionally following new ones.

use std::io::Write as _;
use std::time::Duration;

use relaybox::store::LogEntry;

use crate::context::Context;
use crate::output;
use crate::signals;

/// How often `--follow` looks for new messages.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Log entries read per query.
const PAGE: u64 = 500;

/// Arguments of `relaybox tail`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Print the messages of TOPIC from the log table of the database transport \
                  (what `relaybox relay` delivered), one line per message: position, id, \
                  key, type and payload, separated by tabs. The payload is shown as text \
                  when it is valid UTF-8, else as `<N bytes>`; a missing key or type is `-`. \
                  Starts at the beginning of the log unless --from-position is given, and \
                  exits after the last message unless --follow is given."
)]
pub struct Args {
    /// Topic to read
    pub topic: String,

    /// Start at the first message of the topic (the default)
    #[arg(long, conflicts_with = "from_position")]
    pub from_beginning: bool,

    /// Start at log position N (inclusive)
    #[arg(long, value_name = "N")]
    pub from_position: Option<i64>,

    /// Keep waiting for new messages (polling every 200 ms) until SIGINT or SIGTERM
    #[arg(short, long)]
    pub follow: bool,

    /// Stop after printing N messages
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,

    /// Print each message as its canonical JSON with a `position` field, one per line
    #[arg(long)]
    pub json: bool,
}

/// Prints the topic's messages.
pub async fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    relaybox::validate::check_topic(&args.topic)?;
    let store = ctx.connect().await?;
    // Only a follower catches signals; otherwise Ctrl-C stops at once, as usual.
    let stop = if args.follow {
        Some(signals::shutdown()?)
    } else {
        None
    };
    let result = async {
        let mut stop = stop.map(Box::pin);
        let mut after = args.from_position.map_or(0, |p| p.saturating_sub(1));
        let mut remaining = args.limit;
        let mut out = std::io::stdout().lock();
        loop {
            let page = remaining.map_or(PAGE, |r| r.min(PAGE));
            if page == 0 {
                return Ok(());
            }
            let entries = store.read_log(&args.topic, after, page as u32).await?;
            for entry in &entries {
                writeln!(out, "{}", line(entry, args.json))?;
                after = entry.position;
            }
            out.flush()?;
            remaining = remaining.map(|r| r - entries.len() as u64);
            if entries.len() as u64 == page {
                continue; // a full page: there may be more right away
            }
            match stop.as_mut() {
                None => return Ok(()),
                Some(stop) => {
                    tokio::select! {
                        _ = stop => return Ok(()),
                        _ = tokio::time::sleep(FOLLOW_POLL) => {}
                    }
                }
            }
        }
    }
    .await;
    store.close().await;
    result
}

/// One output line for `entry`.
fn line(entry: &LogEntry, json: bool) -> String {
    let m = &entry.message;
    if json {
        with_position(&m.to_canonical_json(), entry.position)
    } else {
        let or_dash = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        format!(
            "{}\t{}\t{}\t{}\t{}",
            entry.position,
            m.id,
            or_dash(m.key.as_deref().unwrap_or("")),
            or_dash(&m.event_type),
            output::payload(&m.payload)
        )
    }
}

/// Adds `"position":N` as the first field of a canonical JSON object, leaving
/// the rest byte for byte as [`relaybox::Message::to_canonical_json`] wrote it.
fn with_position(canonical: &str, position: i64) -> String {
    match canonical.strip_prefix('{') {
        Some("}") => format!("{{\"position\":{position}}}"),
        Some(rest) => format!("{{\"position\":{position},{rest}"),
        None => canonical.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relaybox::Message;

    #[test]
    fn text_lines() {
        let m = Message::new("orders", b"{\"n\":1}".to_vec())
            .with_key("k1")
            .with_type("OrderPlaced");
        let id = m.id;
        let entry = LogEntry {
            position: 7,
            message: m,
        };
        assert_eq!(
            line(&entry, false),
            format!("7\t{id}\tk1\tOrderPlaced\t{{\"n\":1}}")
        );
        let binary = LogEntry {
            position: 8,
            message: Message::new("orders", vec![0xff, 0x00]),
        };
        assert!(line(&binary, false).ends_with("\t-\t-\t<2 bytes>"));
    }

    #[test]
    fn json_lines_are_canonical_with_a_position() {
        let m = Message::new("orders", b"x".to_vec()).with_key("k");
        let entry = LogEntry {
            position: 3,
            message: m.clone(),
        };
        let text = line(&entry, true);
        assert!(text.starts_with("{\"position\":3,\"id\":"), "{text}");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["position"], 3);
        let mut object = value.as_object().unwrap().clone();
        object.remove("position");
        let back = Message::from_canonical_json(&serde_json::to_string(&object).unwrap());
        assert_eq!(back.unwrap(), m);
        assert_eq!(with_position("{}", 1), "{\"position\":1}");
    }
}

//! Command-line arguments: the sections to run, `--quick`, `--runs`.

use std::collections::BTreeSet;

use anyhow::{anyhow, bail, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Section {
    Enqueue,
    Drain,
    Ceiling,
    Naive,
    Latency,
    Idle,
    Explain,
    Kafka,
    /// Section 8's latency window alone, for experiments.
    KafkaLatency,
    /// Section 8's held-snapshot rows alone, for experiments.
    KafkaHeld,
    /// PostgreSQL alone: claiming and deleting against reading by position.
    Position,
}

impl Section {
    pub(crate) const DEFAULT: [Section; 6] = [
        Section::Enqueue,
        Section::Drain,
        Section::Ceiling,
        Section::Naive,
        Section::Latency,
        Section::Idle,
    ];

    pub(crate) fn parse(s: &str) -> Result<Section> {
        Ok(match s {
            "enqueue" => Section::Enqueue,
            "drain" | "relay" => Section::Drain,
            "ceiling" => Section::Ceiling,
            "naive" => Section::Naive,
            "latency" => Section::Latency,
            "idle" => Section::Idle,
            "explain" => Section::Explain,
            "kafka" => Section::Kafka,
            "kafka-latency" => Section::KafkaLatency,
            "kafka-held" => Section::KafkaHeld,
            "position" => Section::Position,
            other => bail!(
                "unknown section {other:?}; use enqueue, drain, ceiling, naive, latency, idle, explain, kafka, kafka-latency, kafka-held, position"
            ),
        })
    }
}

pub(crate) struct Args {
    pub(crate) quick: bool,
    /// `--runs N`: interleaved runs of the Kafka drains.
    pub(crate) runs: Option<usize>,
    pub(crate) sections: BTreeSet<Section>,
}

pub(crate) const USAGE: &str =
    "usage: relaybox-bench [--quick] [--runs N] [--only SECTION[,SECTION..]]... [--explain] [SECTION...]
sections: enqueue, drain, ceiling, naive, latency, idle (the default run),
          explain, kafka (opt-in: only when named; kafka needs RELAYBOX_KAFKA_BOOTSTRAP),
          kafka-latency (the kafka section's latency window alone),
          kafka-held (the kafka section's held-snapshot rows alone),
          position (opt-in: PostgreSQL alone, claiming and deleting against reading by position)
--runs N: interleaved runs of the kafka section's drains (default 3, --quick 1)
       relaybox-bench enqueue-peer ...  (the bindings' Rust baseline; see docs/benchmarks.md)";

pub(crate) fn parse_args() -> Result<Args> {
    let mut quick = false;
    let mut runs = None;
    let mut only: BTreeSet<Section> = BTreeSet::new();
    let mut explain = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--explain" => explain = true,
            "--runs" => {
                let n = args.next().ok_or_else(|| anyhow!("--runs needs a value"))?;
                runs = Some(parse_runs(&n)?);
            }
            s if s.starts_with("--runs=") => runs = Some(parse_runs(&s["--runs=".len()..])?),
            "--only" => {
                let list = args.next().ok_or_else(|| anyhow!("--only needs a value"))?;
                for s in list.split(',').filter(|s| !s.is_empty()) {
                    only.insert(Section::parse(s)?);
                }
            }
            s if s.starts_with("--only=") => {
                for s in s["--only=".len()..].split(',').filter(|s| !s.is_empty()) {
                    only.insert(Section::parse(s)?);
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other if other.starts_with('-') => bail!("unknown argument {other:?}\n{USAGE}"),
            // A plain argument names sections too: `bench kafka`, `bench drain,naive`.
            list => {
                for s in list.split(',').filter(|s| !s.is_empty()) {
                    only.insert(Section::parse(s)?);
                }
            }
        }
    }
    let mut sections = if only.is_empty() {
        Section::DEFAULT.into_iter().collect()
    } else {
        only
    };
    if explain {
        sections.insert(Section::Explain);
    }
    Ok(Args {
        quick,
        runs,
        sections,
    })
}

pub(crate) fn parse_runs(n: &str) -> Result<usize> {
    match n.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("--runs needs a positive number, not {n:?}"),
    }
}

//! `relaybox`: the command-line tool of relaybox, as a library.
//!
//! The `relaybox` binary and the Python package's `relaybox` command both run
//! [`main_with`], so the command has the same subcommands wherever it was
//! installed from. This module holds the argument definitions, logging
//! set-up, dispatch to the command modules and the one place where errors
//! are printed: a single `relaybox: <message>` line on stderr and exit status 1.

mod commands;
mod config;
mod console;
mod context;
mod listen;
mod output;
mod signals;

use std::ffi::OsString;
use std::io::IsTerminal;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::context::{Context, GlobalArgs};

/// Reliable event delivery from your database: transactional outbox, relay and
/// idempotent consumer on PostgreSQL or SQLite.
#[derive(Debug, Parser)]
#[command(
    name = "relaybox",
    version,
    propagate_version = true,
    after_help = "The database URL comes from --database-url, RELAYBOX_DATABASE_URL or \
                  `database_url` in the --config file, in that order.\n\
                  Run `relaybox <COMMAND> --help` for the options of a command."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,

    /// Log lines on stderr as text, or as one JSON object per line (for log
    /// collectors)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Create or upgrade the relaybox tables (idempotent)
    Migrate(commands::migrate::Args),
    /// Print the relaybox schema as SQL (needs no database)
    Schema(commands::schema::Args),
    /// Run a relay that moves outbox rows to the database transport's log
    Relay(commands::relay::Args),
    /// Show the backlog per topic, dead letters, partitions and relays
    Status(commands::status::Args),
    /// List, retry or purge dead letters
    #[command(subcommand)]
    DeadLetters(commands::dead_letters::Command),
    /// Print the messages of a topic from the database transport's log
    Tail(commands::tail::Args),
    /// Serve the operator console: backlog, throughput, relays, consumers and
    /// dead letters in the browser
    Console(commands::console::Args),
    /// Run the handlers a Python module registers (`consumer --app MODULE`; needs the
    /// relaybox Python package)
    Consumer(commands::consumer::Args),
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`
    /// (with `message`) and the span, if any.
    Json,
}

impl Command {
    /// Log level used when RUST_LOG is unset: the relay is a service and logs
    /// what it does; one-shot commands only log problems.
    fn default_log_level(&self) -> &'static str {
        match self {
            Command::Relay(_) => "info",
            _ => "warn",
        }
    }
}

/// Runs the command line `args` (the first item is the program name) and
/// returns the exit status: 0 on success, 1 when the command fails, 2 on a
/// usage error. Help and errors are printed here.
///
/// Runs on the process's relaybox runtime; call it from a thread that is not
/// one of the runtime's own.
pub fn main_with<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    init_logging(cli.command.default_log_level(), cli.log_format);
    match relaybox::runtime::block_on(run(cli)) {
        Ok(()) => 0,
        // `relaybox tail t | head`: the reader went away; that is not an error.
        Err(e) if is_broken_pipe(&e) => 0,
        Err(e) => {
            eprintln!("relaybox: {}", one_line(&e));
            1
        }
    }
}

/// Loads the configuration and runs the chosen command.
async fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Context::load(cli.global)?;
    match cli.command {
        Command::Migrate(args) => commands::migrate::run(&ctx, args).await,
        Command::Schema(args) => commands::schema::run(&ctx, args),
        Command::Relay(args) => commands::relay::run(&ctx, args).await,
        Command::Status(args) => commands::status::run(&ctx, args).await,
        Command::DeadLetters(command) => commands::dead_letters::run(&ctx, command).await,
        Command::Tail(args) => commands::tail::run(&ctx, args).await,
        Command::Console(args) => commands::console::run(&ctx, args).await,
        Command::Consumer(args) => commands::consumer::run(args),
    }
}

/// Logs to stderr in `format`, filtered by RUST_LOG (or `default` when unset
/// or invalid), unless the process already has a subscriber (the Python
/// package's, which logs through Python's `logging`).
fn init_logging(default: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The error and its causes on one line (`outer: inner: root`), never a Debug dump.
fn one_line(err: &anyhow::Error) -> String {
    format!("{err:#}")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn arguments_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn errors_print_on_one_line() {
        let err = anyhow::anyhow!("root\ncause").context("outer");
        assert_eq!(one_line(&err), "outer: root cause");
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = Cli::try_parse_from([
            "relaybox",
            "status",
            "--database-url",
            "sqlite::memory:",
            "--table-prefix",
            "app_",
        ])
        .unwrap();
        assert_eq!(cli.global.database_url.as_deref(), Some("sqlite::memory:"));
        assert_eq!(cli.global.table_prefix.as_deref(), Some("app_"));
    }

    #[test]
    fn dead_letter_commands_need_ids_or_all() {
        for argv in [
            &["relaybox", "dead-letters", "retry"][..],
            &["relaybox", "dead-letters", "purge"][..],
            &[
                "relaybox",
                "dead-letters",
                "purge",
                "--all",
                "0190a4b2-0000-7000-8000-000000000000",
            ][..],
        ] {
            assert!(Cli::try_parse_from(argv).is_err(), "{argv:?}");
        }
        assert!(Cli::try_parse_from(["relaybox", "dead-letters", "retry", "--all"]).is_ok());
        assert!(Cli::try_parse_from([
            "relaybox",
            "dead-letters",
            "retry",
            "0190a4b2-0000-7000-8000-000000000000",
        ])
        .is_ok());
    }

    #[test]
    fn tail_start_options_conflict() {
        assert!(Cli::try_parse_from([
            "relaybox",
            "tail",
            "t",
            "--from-beginning",
            "--from-position",
            "3"
        ])
        .is_err());
    }
}

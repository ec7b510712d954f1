//! `relaybox schema`: prints the schema as SQL for a host's own migration tool.

use std::io::Write as _;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser as _};
use relaybox::Dialect;

use crate::context::Context;

/// Arguments of `relaybox schema`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Print the whole relaybox schema as one idempotent SQL script: every \
                  migration, the records of them in <prefix>schema_migrations (so a later \
                  `relaybox migrate` knows they ran) and the lease rows. Use it to add \
                  relaybox to your own migration tool. Needs no database."
)]
pub struct Args {
    /// SQL dialect to print
    #[arg(long, value_name = "DIALECT", value_parser = dialect_parser())]
    pub dialect: Dialect,

    /// Table prefix [default: --table-prefix, else [store] table_prefix, else relaybox_]
    #[arg(long, value_name = "P")]
    pub prefix: Option<String>,

    /// Number of outbox partitions to create lease rows for
    /// [default: [store] partitions, else 16]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub partitions: Option<u32>,
}

fn dialect_parser() -> impl clap::builder::TypedValueParser<Value = Dialect> {
    PossibleValuesParser::new([
        PossibleValue::new("postgres").aliases(["postgresql", "pg"]),
        PossibleValue::new("sqlite").alias("sqlite3"),
    ])
    .try_map(|name| name.parse::<Dialect>())
}

/// Prints the schema to stdout.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<()> {
    let defaults = ctx.store_options()?;
    let prefix = args.prefix.unwrap_or(defaults.table_prefix);
    let partitions = args.partitions.unwrap_or(defaults.partitions);
    let sql = relaybox::schema::schema_sql(args.dialect, &prefix, partitions)?;
    let mut out = std::io::stdout().lock();
    out.write_all(sql.as_bytes())?;
    out.flush()?;
    Ok(())
}

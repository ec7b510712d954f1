//! `relaybox consumer`: runs the handlers a Python module registers, through
//! the relaybox Python package.
//!
//! The Python package's `relaybox` command implements this subcommand itself
//! (it imports the application's module); the `relaybox` binary hands the
//! whole command line to it: it replaces itself with
//! `$RELAYBOX_PYTHON -m relaybox consumer ARGS...` (default `python3`), so
//! signals and the exit status are the Python program's.

use std::ffi::OsString;

use anyhow::Context as _;

/// Arguments of `relaybox consumer`: passed on untouched.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub struct Args {
    /// `--app MODULE [--topic T]... [--group G] [--no-relay]` (see `relaybox consumer --help`)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<OsString>,
}

/// The Python interpreter that runs the consumer.
fn python() -> OsString {
    std::env::var_os("RELAYBOX_PYTHON").unwrap_or_else(|| "python3".into())
}

/// Replaces this process with the Python package's `relaybox consumer`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let python = python();
    let mut command = std::process::Command::new(&python);
    command
        .args(["-m", "relaybox", "consumer"])
        .args(&args.args);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        let err = command.exec();
        Err(err).with_context(|| {
            format!(
                "`relaybox consumer` runs Python handlers through the relaybox Python package, \
                 and {} could not be started (set RELAYBOX_PYTHON to the interpreter that has \
                 it installed)",
                python.to_string_lossy()
            )
        })
    }
    #[cfg(not(unix))]
    {
        let status = command.status().with_context(|| {
            format!(
                "`relaybox consumer` runs Python handlers through the relaybox Python package, \
                 and {} could not be started (set RELAYBOX_PYTHON)",
                python.to_string_lossy()
            )
        })?;
        std::process::exit(status.code().unwrap_or(1));
    }
}

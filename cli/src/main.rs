//! The `relaybox` binary: the command line of [`relaybox_cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    let status = relaybox_cli::main_with(std::env::args_os());
    ExitCode::from(u8::try_from(status).unwrap_or(1))
}

//! Waiting for the signals that ask the process to stop: SIGINT (Ctrl-C) and,
//! on Unix, SIGTERM.

use std::future::Future;

/// Installs the signal handlers now and returns a future that resolves, with
/// the signal's name, when the first of SIGINT or SIGTERM arrives. While the
/// returned future exists those signals no longer kill the process.
pub fn shutdown() -> anyhow::Result<impl Future<Output = &'static str>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        })
    }
}

//! One shutdown signal for a whole service: SIGTERM or SIGINT cancels a token that the gRPC
//! server and every background worker watch, so in-flight work drains instead of being cut.

use tokio_util::sync::CancellationToken;

/// Returns a token cancelled on the first SIGTERM or SIGINT.
pub fn on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
            _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
        }
        cancel.cancel();
    });
    Ok(token)
}

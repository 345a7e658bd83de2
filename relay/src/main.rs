//! Loads configuration, starts telemetry, binds the health port, and runs the relay until
//! SIGTERM/SIGINT.

use std::process::ExitCode;

use anyhow::Context;

fn main() -> ExitCode {
    platform::cli::exit_code(run())
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let _telemetry = platform::telemetry::init("relay")?;
    let config: relay::Config = platform::config::load("RELAY_")?;
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen_addr))?;
    let shutdown = platform::shutdown::on_signals()?;
    relay::run(config, listener, shutdown).await?;
    Ok(())
}

//! Loads configuration, starts telemetry, binds, and runs the write region until SIGTERM/SIGINT.

use std::process::ExitCode;

use anyhow::Context;

fn main() -> ExitCode {
    platform::cli::exit_code(run())
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let _telemetry = platform::telemetry::init("write-region")?;
    let config: write_region::Config = platform::config::load("WRITE_REGION_")?;
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen_addr))?;
    let shutdown = platform::shutdown::on_signals()?;
    write_region::run(config, listener, shutdown).await?;
    Ok(())
}

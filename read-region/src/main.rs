//! `read-region [serve]` runs the region until SIGTERM/SIGINT; `read-region rebuild` rebuilds
//! its views from the mirror into a fresh generation and switches to it. Both read their
//! settings from `READ_REGION_*` (and the TOML file named by `READ_REGION_CONFIG`).

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "A read region: portfolio views projected from the enriched stream")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve portfolio.v1 and keep the views projected (the default).
    Serve,
    /// Replay the mirror into a fresh generation of views and switch to it, showing progress.
    Rebuild,
}

fn main() -> ExitCode {
    platform::cli::exit_code(run(Cli::parse()))
}

#[tokio::main]
async fn run(cli: Cli) -> anyhow::Result<()> {
    let config: read_region::Config = platform::config::load("READ_REGION_")?;
    config.validate()?;
    // One service per region in the trace viewer: an order's trace shows each region's hop.
    let _telemetry = platform::telemetry::init(&format!("read-region-{}", config.region))?;
    let shutdown = platform::shutdown::on_signals()?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let listener = tokio::net::TcpListener::bind(config.listen_addr)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen_addr))?;
            read_region::run(config, listener, shutdown).await?;
        }
        Command::Rebuild => rebuild(config, shutdown).await?,
    }
    Ok(())
}

async fn rebuild(
    config: read_region::Config,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let region = config.region.clone();
    let report = read_region::rebuild(config, shutdown, &mut |progress| {
        println!(
            "region {region} generation {}: {} events applied, stream at {}/{}, {:.0} events/s",
            progress.generation,
            progress.events,
            progress.stream_sequence,
            progress.target_sequence,
            progress.rate_per_second()
        );
    })
    .await?;
    println!(
        "rebuilt region {region}: generation {} now served ({} events in {:.2} s, {:.0} events/s; replaced generation {}; {} events still waiting for a predecessor)",
        report.progress.generation,
        report.progress.events,
        report.progress.elapsed.as_secs_f64(),
        report.progress.rate_per_second(),
        report
            .previous_generation
            .map_or_else(|| "none".to_owned(), |g| g.to_string()),
        report.waiting,
    );
    Ok(())
}

//! `loadtest`: setup, side-by-side benchmarks and the HTML report. Thin: parses arguments and
//! calls the library.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use loadtest::{
    bench::{self, Group},
    grpc, memory, report, results,
    setup::{self, Accounts},
};

#[derive(Parser)]
#[command(about = "Load tests and benchmarks of the trading backend against raw limits")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open and fund the load-test accounts, create instruments and prices (idempotent).
    Setup {
        #[command(flatten)]
        target: Target,
        /// Requests in flight while setting up.
        #[arg(long, default_value_t = 16)]
        parallel: usize,
    },
    /// Our paths beside the raw limits of their components, in one run; prints the table and
    /// writes the results as JSON.
    Bench(Box<BenchArgs>),
    /// Write a self-contained HTML report from the JSON results.
    Report {
        /// Folder of result files.
        #[arg(long)]
        results: Option<PathBuf>,
        /// Output HTML file (default: <results>/report.html).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Args, Clone)]
struct Target {
    /// Write region (trading.v1).
    #[arg(long, env = "WRITE_ADDR", default_value = "127.0.0.1:50051")]
    write_addr: String,
    /// Funded load-test accounts (plus one "poor" account per ten, for rejections).
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    /// Account id prefix: ids are <prefix>-000000, <prefix>-poor-000000, ...
    #[arg(long, default_value = "lt")]
    prefix: String,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    target: Target,
    /// Read region (portfolio.v1); GetPortfolio is skipped when it does not answer.
    #[arg(long, env = "READ_EU_ADDR", default_value = "127.0.0.1:50061")]
    read_addr: String,
    #[arg(
        long,
        env = "CASSANDRA_CONTACT_POINTS",
        default_value = "127.0.0.1:9042",
        value_delimiter = ','
    )]
    cassandra: Vec<String>,
    #[arg(long, env = "NATS_HUB_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Redis for the raw read limit (the eu region's server, under this run's own keys).
    #[arg(long, env = "REDIS_EU_URL", default_value = "redis://127.0.0.1:6380")]
    redis_url: String,
    /// Callers in flight on every closed-loop path.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds each path runs.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// HTTP/2 connections (and Redis connections) per path.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Raw events for the relay path.
    #[arg(long, default_value_t = 20_000)]
    relay_events: usize,
    /// Offered rate of the fixed-rate GetPortfolio pass.
    #[arg(long, default_value_t = 5_000.0)]
    portfolio_rate: f64,
    /// Skip the fixed-rate passes (half PlaceOrder capacity, the portfolio rate).
    #[arg(long)]
    no_paced: bool,
    /// Groups to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Group>,
    /// Where the services' pid files are, for memory sampling.
    #[arg(long)]
    pids_dir: Option<PathBuf>,
    /// Result file (default: loadtest/results/bench-<timestamp>.json).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn loopback_only(addr: &str) -> anyhow::Result<()> {
    // Load is only ever sent to this machine: other engineers' machines are not ours to load.
    let host = addr
        .trim_start_matches("http://")
        .trim_start_matches("nats://")
        .trim_start_matches("redis://")
        .rsplit_once(':')
        .map_or(addr, |(host, _)| host);
    anyhow::ensure!(
        matches!(host, "localhost" | "[::1]") || host.starts_with("127."),
        "{addr} is not a loopback address; load tests only target this machine"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup { target, parallel } => {
            loopback_only(&target.write_addr)?;
            let accounts = Accounts::new(&target.prefix, target.accounts);
            let channel = grpc::connect(&target.write_addr, 1).await?.remove(0);
            let changed = setup::run(channel, &accounts, parallel).await?;
            println!(
                "setup: {} funded and {} poor accounts ready on {} ({changed} changed)",
                accounts.funded, accounts.poor, target.write_addr
            );
        }
        Command::Bench(args) => {
            for addr in [
                &args.target.write_addr,
                &args.read_addr,
                &args.nats_url,
                &args.redis_url,
            ]
            .into_iter()
            .chain(&args.cassandra)
            {
                loopback_only(addr)?;
            }
            anyhow::ensure!(
                args.duration > 0.0 && args.duration <= 120.0,
                "--duration must be in (0, 120] seconds"
            );
            let started = std::time::SystemTime::now();
            let out = args
                .out
                .clone()
                .unwrap_or_else(|| results::default_file(started));
            let settings = bench::Settings {
                write_addr: args.target.write_addr.clone(),
                read_addr: args.read_addr,
                cassandra: args.cassandra,
                nats_url: args.nats_url,
                redis_url: args.redis_url,
                concurrency: args.concurrency.max(1),
                duration: Duration::from_secs_f64(args.duration),
                connections: args.connections.max(1),
                accounts: Accounts::new(&args.target.prefix, args.target.accounts),
                relay_events: args.relay_events,
                portfolio_rate: args.portfolio_rate,
                paced: !args.no_paced,
                groups: if args.only.is_empty() {
                    vec![Group::PlaceOrder, Group::Relay, Group::Portfolio]
                } else {
                    args.only
                },
                pids_dir: args.pids_dir.unwrap_or_else(memory::default_pids_dir),
                tag: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            };
            let command = std::env::args().collect::<Vec<_>>().join(" ");
            let run = bench::run(settings, command).await?;
            println!("\n{}", bench::table(&run));
            results::write(&out, &run)?;
            println!("results: {}", out.display());
        }
        Command::Report { results: dir, out } => {
            let dir = dir.unwrap_or_else(results::default_dir);
            let runs = results::load_all(&dir)?;
            anyhow::ensure!(!runs.is_empty(), "no bench results in {}", dir.display());
            let out = out.unwrap_or_else(|| dir.join("report.html"));
            std::fs::write(&out, report::html(&runs))
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("report: {} ({} runs)", out.display(), runs.len());
        }
    }
    Ok(())
}

//! `loadtest`: setup, side-by-side benchmarks and the HTML report. Thin: parses arguments and
//! calls the library.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use loadtest::{
    bench::{self, Group},
    grpc, lag, memory, report, results,
    setup::{self, Accounts},
    verify,
};
use platform::names::{self, local};

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
    /// Orders at a fixed rate, each followed into every read region: how long until its version
    /// is visible there (p50, p90, p99, max); prints the figures and writes them as JSON.
    Lag(Box<LagArgs>),
    /// For every account, compare the write model, the fold of its raw events and every read
    /// region's portfolio; print each difference and fail on any. Run once load has stopped.
    Verify(Box<VerifyArgs>),
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
    #[arg(long, env = "WRITE_ADDR", default_value_t = local::WRITE_REGION_ADDR.to_string())]
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
    #[arg(long, env = "READ_EU_ADDR", default_value_t = local::READ_EU_ADDR.to_string())]
    read_addr: String,
    #[arg(
        long,
        env = "CASSANDRA_CONTACT_POINTS",
        default_value = local::CASSANDRA,
        value_delimiter = ','
    )]
    cassandra: Vec<String>,
    #[arg(long, env = "NATS_HUB_URL", default_value = local::NATS_HUB_URL)]
    nats_url: String,
    /// Redis for the raw read limit (the eu region's server, under this run's own keys).
    #[arg(long, env = "REDIS_EU_URL", default_value = local::REDIS_EU_URL)]
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
    /// Where the services' pid files are, for memory sampling: `infra/.run/pids` (the default)
    /// or `infra/.run`.
    #[arg(long)]
    pids_dir: Option<PathBuf>,
    /// Result file (default: loadtest/results/bench-<timestamp>.json).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct VerifyArgs {
    #[command(flatten)]
    target: Target,
    /// Check these accounts instead of the load-test ones (repeatable).
    #[arg(long = "account", value_name = "ID")]
    account_ids: Vec<String>,
    /// The eu read region (portfolio.v1).
    #[arg(long, env = "READ_EU_ADDR", default_value_t = local::READ_EU_ADDR.to_string())]
    read_eu_addr: String,
    /// The ap read region (portfolio.v1).
    #[arg(long, env = "READ_AP_ADDR", default_value_t = local::READ_AP_ADDR.to_string())]
    read_ap_addr: String,
    #[arg(long, env = "NATS_HUB_URL", default_value = local::NATS_HUB_URL)]
    nats_url: String,
    /// Hub stream of the write region's raw account events.
    #[arg(long, default_value = names::RAW_ACCOUNTS_STREAM)]
    raw_stream: String,
    /// Subject prefix of those events: `<prefix>.<account id>`.
    #[arg(long, default_value_t = format!("{}.{}", names::RAW_SUBJECT_PREFIX, names::Aggregate::Account.subject_token()))]
    raw_subject_prefix: String,
    /// Seconds, in all, the read regions get to reach the write model's versions.
    #[arg(long, default_value_t = 30)]
    wait: u64,
    /// Accounts checked at once.
    #[arg(long, default_value_t = 16)]
    parallel: usize,
}

#[derive(Args)]
struct LagArgs {
    #[command(flatten)]
    target: Target,
    /// The eu read region (portfolio.v1).
    #[arg(long, env = "READ_EU_ADDR", default_value_t = local::READ_EU_ADDR.to_string())]
    read_eu_addr: String,
    /// The ap read region (portfolio.v1).
    #[arg(long, env = "READ_AP_ADDR", default_value_t = local::READ_AP_ADDR.to_string())]
    read_ap_addr: String,
    /// Orders offered per second.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Seconds orders are placed for.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Place this many orders (at --rate) instead of running for --duration.
    #[arg(long, conflicts_with = "duration")]
    orders: Option<u64>,
    /// Result file (default: loadtest/results/lag-<timestamp>.json).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Short unique tag naming a run's partitions, streams, keys and client order ids.
fn run_tag() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// The command line, kept in the results so a run can be repeated.
fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
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

fn main() -> ExitCode {
    platform::cli::exit_code(run(Cli::parse()))
}

#[tokio::main]
async fn run(cli: Cli) -> anyhow::Result<()> {
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
                tag: run_tag(),
            };
            let run = bench::run(settings, command_line()).await?;
            println!("\n{}", bench::table(&run));
            results::write(&out, &run)?;
            println!("results: {}", out.display());
        }
        Command::Verify(args) => {
            for addr in [
                &args.target.write_addr,
                &args.read_eu_addr,
                &args.read_ap_addr,
                &args.nats_url,
            ] {
                loopback_only(addr)?;
            }
            let accounts = if args.account_ids.is_empty() {
                let load_test = Accounts::new(&args.target.prefix, args.target.accounts);
                let poor = (0..load_test.poor).map(|i| load_test.poor_id(i));
                load_test.funded_ids().into_iter().chain(poor).collect()
            } else {
                args.account_ids
            };
            let report = verify::run(&verify::Settings {
                write_addr: args.target.write_addr,
                regions: vec![
                    ("eu".into(), args.read_eu_addr),
                    ("ap".into(), args.read_ap_addr),
                ],
                nats_url: args.nats_url,
                raw_stream: args.raw_stream,
                raw_subject_prefix: args.raw_subject_prefix,
                accounts,
                wait: Duration::from_secs(args.wait),
                parallel: args.parallel,
            })
            .await?;
            for difference in &report.differences {
                println!("{difference}");
            }
            println!(
                "verify: {} accounts checked ({} raw events), {} differences",
                report.accounts,
                report.events,
                report.differences.len()
            );
            anyhow::ensure!(
                report.differences.is_empty(),
                "{} differences between the write model, the raw-event fold and the read regions",
                report.differences.len()
            );
        }
        Command::Lag(args) => {
            for addr in [
                &args.target.write_addr,
                &args.read_eu_addr,
                &args.read_ap_addr,
            ] {
                loopback_only(addr)?;
            }
            anyhow::ensure!(
                args.rate > 0.0 && args.rate <= 20_000.0,
                "--rate must be in (0, 20000] orders per second"
            );
            let seconds = args
                .orders
                .map_or(args.duration, |orders| orders as f64 / args.rate);
            anyhow::ensure!(
                seconds > 0.0 && seconds <= 600.0,
                "the load must last (0, 600] seconds (--duration, or --orders at --rate)"
            );
            let out = args
                .out
                .clone()
                .unwrap_or_else(|| results::file_for("lag", std::time::SystemTime::now()));
            let settings = lag::Settings {
                write_addr: args.target.write_addr.clone(),
                regions: vec![
                    lag::Region {
                        name: "eu".into(),
                        addr: args.read_eu_addr,
                    },
                    lag::Region {
                        name: "ap".into(),
                        addr: args.read_ap_addr,
                    },
                ],
                rate: args.rate,
                duration: Duration::from_secs_f64(seconds),
                accounts: Accounts::new(&args.target.prefix, args.target.accounts),
                tag: run_tag(),
            };
            let run = lag::run(settings, command_line()).await?;
            println!("\n{}", lag::table(&run));
            results::write(&out, &run)?;
            println!("results: {}", out.display());
        }
        Command::Report { results: dir, out } => {
            let dir = dir.unwrap_or_else(results::default_dir);
            let runs = results::load_all(&dir)?;
            let lags = results::load_lag(&dir)?;
            anyhow::ensure!(
                !runs.is_empty() || !lags.is_empty(),
                "no bench or lag results in {}",
                dir.display()
            );
            let out = out.unwrap_or_else(|| dir.join("report.html"));
            std::fs::write(&out, report::html(&runs, &lags))
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "report: {} ({} bench runs, {} lag runs)",
                out.display(),
                runs.len(),
                lags.len()
            );
        }
    }
    Ok(())
}

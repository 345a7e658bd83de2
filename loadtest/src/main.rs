//! `loadtest`: setup, side-by-side benchmarks and the HTML report. Thin: parses arguments and
//! calls the library.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use loadtest::{
    bench::{self, Group},
    chaos, grpc, lag, link, memory, report, results,
    setup::{self, Accounts},
    status, ticks, verify,
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
    /// Price ticks with resting orders on the book: ticks per second, and the time from a tick
    /// to its fills being visible in every read region beside a market order's; prints the
    /// figures and writes them as JSON.
    Ticks(Box<TicksArgs>),
    /// For every account, compare the write model, the fold of its raw events and every read
    /// region's portfolio; print each difference and fail on any. Run once load has stopped.
    Verify(Box<VerifyArgs>),
    /// Orders at a fixed rate while the stack of `infra/up` is hurt, one fault at a time and in
    /// rounds (SIGKILL of each process, a cut leaf link, Redis from an older snapshot, FLUSHALL);
    /// after each, the recovery time, the orders lost and the accounts that differ anywhere.
    /// Fails unless every fault ends with 0 lost and 0 differing. Only for a stack that is there
    /// to be hurt.
    Chaos(Box<ChaosArgs>),
    /// The stack on one screen, refreshed live: each component's health, which relay holds the
    /// lease, each stream's backlog and each read region's lag behind the write model.
    Status(Box<StatusArgs>),
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

/// The read regions of the stack (portfolio.v1).
#[derive(Args, Clone)]
struct ReadRegions {
    /// The eu read region.
    #[arg(long, env = "READ_EU_ADDR", default_value_t = local::READ_EU_ADDR.to_string())]
    read_eu_addr: String,
    /// The ap read region.
    #[arg(long, env = "READ_AP_ADDR", default_value_t = local::READ_AP_ADDR.to_string())]
    read_ap_addr: String,
}

impl ReadRegions {
    /// Name and address of each, eu first.
    fn named(&self) -> [(&'static str, &String); 2] {
        [("eu", &self.read_eu_addr), ("ap", &self.read_ap_addr)]
    }

    /// Each as a region to measure, eu first.
    fn measured(&self) -> Vec<lag::Region> {
        self.named()
            .map(|(name, addr)| lag::Region {
                name: name.to_owned(),
                addr: addr.clone(),
            })
            .to_vec()
    }
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    target: Target,
    /// Read region (portfolio.v1); GetPortfolio is skipped when it does not answer.
    #[arg(long, env = "READ_EU_ADDR", default_value_t = local::READ_EU_ADDR.to_string())]
    read_addr: String,
    #[command(flatten)]
    store: Store,
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
    #[command(flatten)]
    regions: ReadRegions,
    #[arg(long, env = "NATS_HUB_URL", default_value = local::NATS_HUB_URL)]
    nats_url: String,
    /// Hub stream of the write region's raw account events.
    #[arg(long, default_value = names::RAW_ACCOUNTS_STREAM)]
    raw_stream: String,
    /// Subject prefix of those events: `<prefix>.<account id>`.
    #[arg(long, default_value_t = verify::raw_account_prefix())]
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
    #[command(flatten)]
    regions: ReadRegions,
    /// Orders offered per second.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Seconds orders are placed for.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Place this many orders (at --rate) instead of running for --duration.
    #[arg(long, conflicts_with = "duration")]
    orders: Option<u64>,
    /// Add this many milliseconds each way to every region's leaf link for the run (toxiproxy;
    /// 100 is about New York to Singapore), removed afterwards.
    #[arg(long)]
    link_latency_ms: Option<u64>,
    /// toxiproxy's API, for --link-latency-ms.
    #[arg(long, env = "TOXIPROXY_URL", default_value = link::DEFAULT_API)]
    toxiproxy_url: String,
    /// Result file (default: loadtest/results/lag-<timestamp>.json).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct TicksArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    regions: ReadRegions,
    /// Resting orders on the book while the ticks run.
    #[arg(long, default_value_t = 1000)]
    book: usize,
    /// Seconds of ticks that cross nothing.
    #[arg(long, default_value_t = 10.0)]
    idle: f64,
    /// Ticks that fill orders.
    #[arg(long, default_value_t = 50)]
    rounds: usize,
    /// Orders each filling tick fills.
    #[arg(long, default_value_t = 10)]
    per_round: usize,
    /// Result file (default: loadtest/results/ticks-<timestamp>.json).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct ChaosArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    regions: ReadRegions,
    #[arg(long, env = "REDIS_EU_URL", default_value = local::REDIS_EU_URL)]
    redis_eu_url: String,
    #[arg(long, env = "REDIS_AP_URL", default_value = local::REDIS_AP_URL)]
    redis_ap_url: String,
    #[arg(long, env = "NATS_HUB_URL", default_value = local::NATS_HUB_URL)]
    nats_url: String,
    /// toxiproxy's API, in front of each region's leaf link.
    #[arg(long, env = "TOXIPROXY_URL", default_value = link::DEFAULT_API)]
    toxiproxy_url: String,
    /// Rounds; each runs every fault once, in order.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// A fault of each round, repeatable: kill:<component> (write-region, relay, relay-2,
    /// read-region-eu|ap, nats-hub, nats-eu|ap, redis-eu|ap, toxiproxy, cassandra; store-1|2|3
    /// on a stack of `infra/up --store-nodes 3`),
    /// kill-mid-fill:write-region (SIGKILL while a price move fills 1,000 resting orders),
    /// failover:relay (SIGKILL of whichever relay holds the lease), cut-link:<eu|ap>,
    /// older-snapshot:<eu|ap>, flushall:<eu|ap>. Default: kill:write-region, kill:relay,
    /// kill:read-region-eu, kill:read-region-ap, kill:nats-hub, kill:nats-eu, kill:redis-eu,
    /// kill-mid-fill:write-region, failover:relay, cut-link:ap, older-snapshot:ap, flushall:eu.
    #[arg(long = "fault", value_name = "KIND:TARGET")]
    faults: Vec<chaos::Fault>,
    /// Orders offered per second while each fault runs.
    #[arg(long, default_value_t = 150.0)]
    rate: f64,
    /// Seconds of orders per fault.
    #[arg(long, default_value_t = 20.0)]
    load_secs: f64,
    /// Seconds into the orders when the fault strikes.
    #[arg(long, default_value_t = 5.0)]
    fault_at: f64,
    /// Seconds a cut link stays cut.
    #[arg(long, default_value_t = 30.0)]
    cut_secs: f64,
    /// Seconds the stack gets to recover after each fault.
    #[arg(long, default_value_t = 120.0)]
    recover_within: f64,
    /// The stack's run folder (pid files, Redis data): default infra/.run.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Result file (default: loadtest/results/chaos-<timestamp>.json).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The store's contact points, comma-separated.
#[derive(Args)]
struct Store {
    #[arg(
        long,
        env = "CASSANDRA_CONTACT_POINTS",
        default_value = local::CASSANDRA,
        value_delimiter = ','
    )]
    cassandra: Vec<String>,
}

#[derive(Args)]
struct StatusArgs {
    #[arg(long, env = "WRITE_ADDR", default_value_t = local::WRITE_REGION_ADDR.to_string())]
    write_addr: String,
    /// The relay processes' health endpoints.
    #[arg(long, env = "HUB_RELAY_ADDR", default_value_t = local::RELAY_ADDR.to_string())]
    relay_addr: String,
    #[arg(long, env = "HUB_RELAY_2_ADDR", default_value_t = local::RELAY_2_ADDR.to_string())]
    relay_2_addr: String,
    #[command(flatten)]
    regions: ReadRegions,
    #[arg(long, env = "NATS_HUB_URL", default_value = local::NATS_HUB_URL)]
    nats_url: String,
    #[arg(long, env = "NATS_EU_URL", default_value = local::NATS_EU_URL)]
    nats_eu_url: String,
    #[arg(long, env = "NATS_AP_URL", default_value = local::NATS_AP_URL)]
    nats_ap_url: String,
    #[arg(long, env = "REDIS_EU_URL", default_value = local::REDIS_EU_URL)]
    redis_eu_url: String,
    #[arg(long, env = "REDIS_AP_URL", default_value = local::REDIS_AP_URL)]
    redis_ap_url: String,
    /// The store's nodes (infra/up --store-nodes 3: three), each shown on its own line.
    #[command(flatten)]
    store: Store,
    /// Each service's metrics endpoint (its EDGE__METRICS_ADDR).
    #[arg(long, env = "WRITE_METRICS_ADDR", default_value = "127.0.0.1:9461")]
    write_metrics_addr: String,
    #[arg(long, env = "HUB_RELAY_METRICS_ADDR", default_value = "127.0.0.1:9462")]
    relay_metrics_addr: String,
    #[arg(
        long,
        env = "HUB_RELAY_2_METRICS_ADDR",
        default_value = "127.0.0.1:9463"
    )]
    relay_2_metrics_addr: String,
    #[arg(long, env = "READ_EU_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    read_eu_metrics_addr: String,
    #[arg(long, env = "READ_AP_METRICS_ADDR", default_value = "127.0.0.1:9465")]
    read_ap_metrics_addr: String,
    /// Print once and exit, instead of refreshing.
    #[arg(long)]
    once: bool,
    /// Milliseconds between refreshes.
    #[arg(long, default_value_t = 1_000)]
    interval_ms: u64,
    /// Print the status once as JSON.
    #[arg(long)]
    json: bool,
}

impl StatusArgs {
    fn settings(&self) -> status::Settings {
        let [(eu, eu_addr), (ap, ap_addr)] = self.regions.named();
        status::Settings {
            services: vec![
                ("write-region".into(), self.write_addr.clone()),
                ("relay".into(), self.relay_addr.clone()),
                ("relay-2".into(), self.relay_2_addr.clone()),
                (format!("read-region-{eu}"), eu_addr.clone()),
                (format!("read-region-{ap}"), ap_addr.clone()),
            ],
            nats_hub_url: self.nats_url.clone(),
            regions: vec![
                status::RegionEndpoints {
                    name: eu.into(),
                    nats_url: self.nats_eu_url.clone(),
                    redis_url: self.redis_eu_url.clone(),
                },
                status::RegionEndpoints {
                    name: ap.into(),
                    nats_url: self.nats_ap_url.clone(),
                    redis_url: self.redis_ap_url.clone(),
                },
            ],
            cassandra: self.store.cassandra.clone(),
            metrics: vec![
                ("write-region".into(), self.write_metrics_addr.clone()),
                ("relay".into(), self.relay_metrics_addr.clone()),
                ("relay-2".into(), self.relay_2_metrics_addr.clone()),
                (
                    format!("read-region-{eu}"),
                    self.read_eu_metrics_addr.clone(),
                ),
                (
                    format!("read-region-{ap}"),
                    self.read_ap_metrics_addr.clone(),
                ),
            ],
        }
    }
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

fn chaos_settings(args: &ChaosArgs) -> anyhow::Result<chaos::Settings> {
    loopback_only(&args.target.write_addr)?;
    for addr in [&args.nats_url, &args.toxiproxy_url] {
        loopback_only(addr)?;
    }
    for (_, addr) in args.regions.named() {
        loopback_only(addr)?;
    }
    anyhow::ensure!(
        args.rate > 0.0 && args.rate <= 5_000.0,
        "--rate must be in (0, 5000] orders per second"
    );
    anyhow::ensure!(
        args.fault_at >= 0.0 && args.fault_at < args.load_secs && args.load_secs <= 600.0,
        "--fault-at must fall within --load-secs (at most 600)"
    );
    anyhow::ensure!(
        args.cut_secs > 0.0 && args.recover_within > 0.0,
        "--cut-secs and --recover-within must be positive"
    );
    let redis = [&args.redis_eu_url, &args.redis_ap_url];
    let root = loadtest::workspace_root();
    Ok(chaos::Settings {
        write_addr: args.target.write_addr.clone(),
        regions: args
            .regions
            .named()
            .into_iter()
            .zip(redis)
            .map(|((name, addr), redis_url)| chaos::Region {
                name: name.to_owned(),
                addr: addr.clone(),
                redis_url: redis_url.clone(),
            })
            .collect(),
        nats_url: args.nats_url.clone(),
        links_api: args.toxiproxy_url.clone(),
        run_dir: args
            .run_dir
            .clone()
            .unwrap_or_else(|| root.join("infra").join(".run")),
        up: root.join("infra").join("up"),
        accounts: Accounts::new(&args.target.prefix, args.target.accounts),
        faults: if args.faults.is_empty() {
            chaos::Fault::all()
        } else {
            args.faults.clone()
        },
        rounds: args.rounds.max(1),
        rate: args.rate,
        load: Duration::from_secs_f64(args.load_secs),
        fault_at: Duration::from_secs_f64(args.fault_at),
        cut: Duration::from_secs_f64(args.cut_secs),
        recover_within: Duration::from_secs_f64(args.recover_within),
        tag: run_tag(),
    })
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
            .chain(&args.store.cassandra)
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
                cassandra: args.store.cassandra,
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
            loopback_only(&args.target.write_addr)?;
            loopback_only(&args.nats_url)?;
            for (_, addr) in args.regions.named() {
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
                regions: args
                    .regions
                    .named()
                    .map(|(name, addr)| (name.to_owned(), addr.clone()))
                    .to_vec(),
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
            loopback_only(&args.target.write_addr)?;
            for (_, addr) in args.regions.named() {
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
                regions: args.regions.measured(),
                rate: args.rate,
                duration: Duration::from_secs_f64(seconds),
                accounts: Accounts::new(&args.target.prefix, args.target.accounts),
                tag: run_tag(),
            };
            let run = match args.link_latency_ms {
                None => lag::run(settings, command_line()).await?,
                Some(millis) => {
                    let links = link::Links::new(&args.toxiproxy_url)?;
                    let mut slowed = async {
                        for (region, _) in args.regions.named() {
                            links
                                .add_latency(region, Duration::from_millis(millis))
                                .await?;
                        }
                        lag::run(settings, command_line()).await
                    }
                    .await;
                    // The links go back to normal whatever happened to the run.
                    links.reset().await?;
                    if let Ok(run) = &mut slowed {
                        run.link_latency_ms = Some(millis);
                    }
                    slowed?
                }
            };
            println!("\n{}", lag::table(&run));
            results::write(&out, &run)?;
            println!("results: {}", out.display());
        }
        Command::Ticks(args) => {
            loopback_only(&args.target.write_addr)?;
            for (_, addr) in args.regions.named() {
                loopback_only(addr)?;
            }
            anyhow::ensure!(
                args.idle >= 0.0 && args.idle <= 600.0,
                "--idle must be in [0, 600] seconds"
            );
            let out = args
                .out
                .clone()
                .unwrap_or_else(|| results::file_for("ticks", std::time::SystemTime::now()));
            let settings = ticks::Settings {
                write_addr: args.target.write_addr.clone(),
                regions: args.regions.measured(),
                accounts: Accounts::new(&args.target.prefix, args.target.accounts),
                book: args.book,
                idle: Duration::from_secs_f64(args.idle),
                rounds: args.rounds,
                per_round: args.per_round,
                tag: run_tag(),
            };
            let run = ticks::run(settings, command_line()).await?;
            println!("\n{}", ticks::table(&run));
            results::write(&out, &run)?;
            println!("results: {}", out.display());
        }
        Command::Chaos(args) => {
            let run = chaos::run(chaos_settings(&args)?, command_line()).await?;
            println!("\n{}", chaos::table(&run));
            let out = args
                .out
                .clone()
                .unwrap_or_else(|| results::file_for("chaos", std::time::SystemTime::now()));
            results::write(&out, &run)?;
            println!("results: {}", out.display());
            anyhow::ensure!(
                run.passed(),
                "orders were lost, accounts differ or the stack did not recover (see above)"
            );
        }
        Command::Status(args) => {
            let settings = args.settings();
            if args.json {
                let taken = status::Probe::new(settings)?.take_with_rates().await;
                println!("{}", serde_json::to_string_pretty(&taken)?);
            } else {
                let interval =
                    (!args.once).then(|| Duration::from_millis(args.interval_ms.max(100)));
                status::watch(settings, interval).await?;
            }
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

//! `chaos`: orders flow at a fixed rate while the stack of `infra/up` is hurt, one fault at a
//! time and in rounds, and after each fault the suite proves that nothing was lost and every
//! region converged:
//!
//! 1. a load of orders starts (open loop, the `bench` mix over the load-test accounts), each
//!    accepted order remembered;
//! 2. a few seconds in, the fault: a component killed with SIGKILL and brought back by
//!    `infra/up`, the write region killed while a price move fills a book of 1,000 resting
//!    orders rested before the load (then every one must end filled once), the active relay
//!    killed while the standby takes over, a region's leaf link cut
//!    and restored, a region's Redis restarted from a copy
//!    older than what its consumer acknowledged, or a region's Redis flushed;
//! 3. as soon as the fault is over, a probe deposit is followed into every region: the time
//!    until every region shows it is the recovery time;
//! 4. once the load ends, `verify` compares every account's write model, its raw-event fold and
//!    every region's view, and each accepted order is looked up in the write model (an accepted
//!    order it does not know is lost).
//!
//! The faults are real: this is run against a stack that is only there to be tested.

pub mod fill;
pub mod stack;

use std::{
    collections::BTreeSet,
    fmt::{self, Write},
    path::PathBuf,
    str::FromStr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use crate::grpc::Channel;
use anyhow::Context;
use futures::{StreamExt, future::BoxFuture};
use platform::names;
use serde::{Deserialize, Serialize};
use tonic::Code;
use trading_proto::{
    portfolio::v1::{GetPortfolioRequest, portfolio_service_client::PortfolioServiceClient},
    trading::v1::{
        self as api, account_service_client::AccountServiceClient,
        order_service_client::OrderServiceClient,
    },
};

use self::stack::Stack;
use crate::{
    bench::place_order,
    grpc,
    link::Links,
    load::{self, Call, LoadResult, Outcome, Pace},
    results::Machine,
    setup::{self, Accounts},
    timefmt, verify,
};

/// The components a `kill:` fault may name: `infra/up`'s names for them. The first
/// `DEFAULT_KILLS` are killed in every round by default: each kind of process once (one leaf,
/// one Redis); the store and the link proxy only when asked, and a node of the three-node store
/// (`store-1`..`store-3`) only on a stack started with `infra/up --store-nodes 3`.
pub const COMPONENTS: [&str; 15] = [
    "write-region",
    "relay",
    "read-region-eu",
    "read-region-ap",
    "nats-hub",
    "nats-eu",
    "redis-eu",
    "nats-ap",
    "redis-ap",
    "relay-2",
    "toxiproxy",
    "cassandra",
    "store-1",
    "store-2",
    "store-3",
];
const DEFAULT_KILLS: usize = 7;
/// The relay processes of `infra/up`'s stack: one holds the lease and runs the pipeline.
pub const RELAYS: [&str; 2] = ["relay", "relay-2"];
/// The read regions of `infra/up`'s stack.
pub const REGIONS: [&str; 2] = ["eu", "ap"];

/// One fault, written `kill:<component>`, `kill-mid-fill:write-region`, `failover:relay`,
/// `cut-link:<region>`, `older-snapshot:<region>` or `flushall:<region>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Fault {
    /// SIGKILL, then `infra/up` brings the component back.
    Kill(String),
    /// SIGKILL of the write region while a price move fills a book of resting orders, then
    /// `infra/up` brings it back and its book sweep finishes the fills (see [`fill`]).
    KillMidFill,
    /// SIGKILL of whichever relay holds the lease; once the other has taken it over, `infra/up`
    /// brings the killed one back as the new standby.
    Failover,
    /// The region's leaf link refused for the cut's length, then restored.
    CutLink(String),
    /// The region's Redis killed and restarted from a copy of its data taken when this fault's
    /// load began, so it comes back without writes its consumer already acknowledged.
    OlderSnapshot(String),
    /// `FLUSHALL` on the region's Redis.
    Flushall(String),
}

impl Fault {
    /// One of each kind, over every process the issue names: the default list of a round.
    pub fn all() -> Vec<Self> {
        let mut faults: Vec<Self> = COMPONENTS[..DEFAULT_KILLS]
            .iter()
            .map(|c| Self::Kill((*c).into()))
            .collect();
        faults.extend([
            Self::KillMidFill,
            Self::Failover,
            Self::CutLink("ap".into()),
            Self::OlderSnapshot("ap".into()),
            Self::Flushall("eu".into()),
        ]);
        faults
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kill(component) => write!(f, "kill:{component}"),
            Self::KillMidFill => write!(f, "kill-mid-fill:write-region"),
            Self::Failover => write!(f, "failover:relay"),
            Self::CutLink(region) => write!(f, "cut-link:{region}"),
            Self::OlderSnapshot(region) => write!(f, "older-snapshot:{region}"),
            Self::Flushall(region) => write!(f, "flushall:{region}"),
        }
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (kind, target) = text
            .split_once(':')
            .ok_or_else(|| format!("{text:?}: a fault is <kind>:<target>, e.g. kill:relay"))?;
        let region = || {
            if REGIONS.contains(&target) {
                Ok(target.to_owned())
            } else {
                Err(format!("{text:?}: the region must be one of {REGIONS:?}"))
            }
        };
        match kind {
            "kill" if COMPONENTS.contains(&target) => Ok(Self::Kill(target.into())),
            "kill" => Err(format!(
                "{text:?}: the component must be one of {COMPONENTS:?}"
            )),
            "kill-mid-fill" if target == "write-region" => Ok(Self::KillMidFill),
            "kill-mid-fill" => Err(format!(
                "{text:?}: only the write region fills orders (kill-mid-fill:write-region)"
            )),
            "failover" if target == "relay" => Ok(Self::Failover),
            "failover" => Err(format!(
                "{text:?}: only the relay fails over (failover:relay)"
            )),
            "cut-link" => region().map(Self::CutLink),
            "older-snapshot" => region().map(Self::OlderSnapshot),
            "flushall" => region().map(Self::Flushall),
            _ => Err(format!(
                "{text:?}: the kind must be kill, kill-mid-fill, failover, cut-link, older-snapshot or flushall"
            )),
        }
    }
}

impl From<Fault> for String {
    fn from(fault: Fault) -> Self {
        fault.to_string()
    }
}

impl TryFrom<String> for Fault {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

/// A read region of the stack: its API and its Redis.
#[derive(Debug, Clone)]
pub struct Region {
    pub name: String,
    pub addr: String,
    pub redis_url: String,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub write_addr: String,
    pub regions: Vec<Region>,
    pub nats_url: String,
    /// toxiproxy's API (the leaf links).
    pub links_api: String,
    /// `infra/.run` and `infra/up`.
    pub run_dir: PathBuf,
    pub up: PathBuf,
    pub accounts: Accounts,
    pub faults: Vec<Fault>,
    pub rounds: u32,
    /// Orders offered per second during each fault's load.
    pub rate: f64,
    /// How long each fault's load runs, and when in it the fault strikes.
    pub load: Duration,
    pub fault_at: Duration,
    /// How long a cut link stays cut.
    pub cut: Duration,
    /// How long the stack gets to recover, and `verify` to see every region converge.
    pub recover_within: Duration,
    /// Short unique tag naming this run's client order ids and probe deposits.
    pub tag: String,
}

/// What one fault did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultRun {
    pub round: u32,
    pub fault: Fault,
    /// From the fault striking to its end: the component back (`infra/up` done), the link
    /// restored, Redis restarted; zero for a flush.
    pub fault_s: f64,
    /// From the fault's end until a deposit made then is visible in every region; `None` when
    /// that did not happen within the recovery bound (see `recovery_error`).
    pub recovery_s: Option<f64>,
    pub recovery_error: Option<String>,
    /// For a failover: from the SIGKILL until the standby held the lease.
    #[serde(default)]
    pub takeover_s: Option<f64>,
    /// For a kill mid-fill: how the price call ended and what the book came to.
    #[serde(default)]
    pub fill: Option<fill::FillCheck>,
    pub orders: LoadResult,
    /// Orders `PlaceOrder` accepted during the load.
    pub accepted: u64,
    /// Accepted orders the write model does not know.
    pub lost: u64,
    /// Accounts `verify` found different anywhere, and its first differences.
    pub differing_accounts: u64,
    pub differences: Vec<String>,
}

impl FaultRun {
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.differing_accounts == 0
            && self.recovery_s.is_some()
            && self.fill.as_ref().is_none_or(fill::FillCheck::passed)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChaosRun {
    /// `chaos`.
    pub kind: String,
    pub started_at: String,
    pub command: String,
    pub machine: Machine,
    pub rate: f64,
    pub load_s: f64,
    pub accounts: usize,
    pub faults: Vec<FaultRun>,
}

impl ChaosRun {
    pub fn passed(&self) -> bool {
        self.faults.iter().all(FaultRun::passed)
    }
}

/// Differences kept per fault in the results (all are printed).
const DIFFERENCES_KEPT: usize = 20;
/// HTTP/2 connections to the write region.
const CONNECTIONS: usize = 4;
/// Accepted orders looked up in the write model at once.
const LOOKUPS_IN_FLIGHT: usize = 32;
/// The probe's own calls: short, so a region that is not there yet is asked again soon.
const PROBE_CALL: Duration = Duration::from_secs(1);
const PROBE_PAUSE: Duration = Duration::from_millis(100);

/// What bringing a fault about measured, beside its length.
#[derive(Default)]
struct Injected {
    /// A failover's: from the SIGKILL until the standby held the lease.
    takeover: Option<Duration>,
    /// A kill mid-fill's: how the price call ended.
    strike: Option<fill::Strike>,
}

/// Everything the faults of a run share.
struct Run {
    settings: Settings,
    stack: Stack,
    links: Links,
    write: Vec<Channel>,
    ids: Arc<Vec<String>>,
}

/// Sets up the accounts, then hurts the stack with every fault of every round.
pub async fn run(settings: Settings, command: String) -> anyhow::Result<ChaosRun> {
    let started_at = SystemTime::now();
    println!(
        "chaos: {} round(s) of {} fault(s), {:.0} orders/s for {:.0} s each, fault at {:.0} s, {} accounts",
        settings.rounds,
        settings.faults.len(),
        settings.rate,
        settings.load.as_secs_f64(),
        settings.fault_at.as_secs_f64(),
        settings.accounts.funded,
    );
    let write = grpc::connect(&settings.write_addr, CONNECTIONS).await?;
    setup::run(write[0].clone(), &settings.accounts, 16).await?;
    let ids = Arc::new(settings.accounts.funded_ids());
    anyhow::ensure!(!ids.is_empty(), "chaos needs at least one funded account");
    let run = Run {
        stack: Stack::new(settings.run_dir.clone(), settings.up.clone()),
        links: Links::new(&settings.links_api)?,
        settings,
        write,
        ids,
    };
    let mut faults = Vec::new();
    for round in 1..=run.settings.rounds {
        for fault in &run.settings.faults {
            let result = run
                .fault(round, fault)
                .await
                .with_context(|| format!("round {round}, {fault}"))?;
            println!("{}", line(&result));
            faults.push(result);
        }
    }
    Ok(ChaosRun {
        kind: "chaos".into(),
        started_at: timefmt::rfc3339(started_at),
        command,
        machine: Machine::detect(),
        rate: run.settings.rate,
        load_s: run.settings.load.as_secs_f64(),
        accounts: run.settings.accounts.funded,
        faults,
    })
}

impl Run {
    fn region(&self, name: &str) -> anyhow::Result<&Region> {
        self.settings
            .regions
            .iter()
            .find(|region| region.name == name)
            .with_context(|| format!("no region {name} in the settings"))
    }

    async fn fault(&self, round: u32, fault: &Fault) -> anyhow::Result<FaultRun> {
        let settings = &self.settings;
        eprintln!("chaos round {round}: {fault}");
        if let Fault::OlderSnapshot(region) = fault {
            let url = &self.region(region)?.redis_url;
            self.stack.snapshot_redis(region, url).await?;
        }
        let book = match fault {
            Fault::KillMidFill => Some(
                fill::Book::rest(&self.write[0], &settings.accounts, &settings.tag, round).await?,
            ),
            _ => None,
        };
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let orders = Orders {
            write: self.write.clone(),
            ids: self.ids.clone(),
            id_prefix: format!("chaos-{}-{round}-{}", settings.tag, slug(fault)),
            accepted: accepted.clone(),
        };
        let pace = Pace::Rate {
            per_second: settings.rate,
            max_in_flight: (settings.rate.ceil() as usize).max(64),
        };
        let load = tokio::spawn(load::run("orders", pace, settings.load, move |call| {
            orders.call(call)
        }));

        tokio::time::sleep(settings.fault_at).await;
        let struck = Instant::now();
        let injected = self.inject(fault, book.as_ref()).await;
        let fault_s = struck.elapsed().as_secs_f64();
        let takeover = injected.as_ref().ok().and_then(|i| i.takeover);
        let recovery = match &injected {
            Ok(_) => self.probe(round, fault).await,
            Err(error) => Err(format!("the fault could not be brought about: {error:#}")),
        };
        let orders = load.await.context("the order load failed")?;
        // A fault left half done (a link still cut) must not spoil the faults after it.
        if injected.is_err() {
            self.links.reset().await.ok();
            self.stack.up().await.ok();
        }
        let strike = injected?.strike;
        if let Some(takeover) = takeover {
            println!(
                "  failover: the standby relay held the lease {:.2} s after the SIGKILL",
                takeover.as_secs_f64()
            );
        }

        let fill = match (book, strike) {
            (Some(book), Some(strike)) => Some(
                book.check(&self.write[0], strike, settings.recover_within)
                    .await?,
            ),
            _ => None,
        };
        let accepted = std::mem::take(&mut *accepted.lock().unwrap_or_else(|e| e.into_inner()));
        let lost = self.lost(&accepted).await?;
        let report = self.verify().await?;
        for difference in &report.differences {
            println!("  {difference}");
        }
        let differing: BTreeSet<&str> = report
            .differences
            .iter()
            .map(|d| d.account.as_str())
            .collect();
        Ok(FaultRun {
            round,
            fault: fault.clone(),
            fault_s,
            recovery_s: recovery.as_ref().ok().map(Duration::as_secs_f64),
            recovery_error: recovery.err(),
            takeover_s: takeover.map(|t| t.as_secs_f64()),
            fill,
            orders,
            accepted: accepted.len() as u64,
            lost,
            differing_accounts: differing.len() as u64,
            differences: report
                .differences
                .iter()
                .take(DIFFERENCES_KEPT)
                .map(ToString::to_string)
                .collect(),
        })
    }

    /// Brings the fault about and returns once it is over, with the takeover time of a
    /// failover or how a kill mid-fill struck the price call.
    async fn inject(&self, fault: &Fault, book: Option<&fill::Book>) -> anyhow::Result<Injected> {
        let mut injected = Injected::default();
        match fault {
            Fault::Kill(component) => {
                self.stack.kill(component).await?;
                self.stack.up().await?;
            }
            Fault::KillMidFill => {
                let book = book.context("a kill mid-fill needs its book rested first")?;
                injected.strike = Some(book.strike(&self.write[0], &self.stack).await?);
                self.stack.up().await?;
            }
            Fault::Failover => {
                injected.takeover = Some(self.failover().await?);
                self.stack.up().await?;
            }
            Fault::CutLink(region) => {
                self.links.set_enabled(region, false).await?;
                tokio::time::sleep(self.settings.cut).await;
                self.links.set_enabled(region, true).await?;
            }
            Fault::OlderSnapshot(region) => {
                self.stack.kill(&format!("redis-{region}")).await?;
                self.stack.restore_redis(region)?;
                self.stack.up().await?;
            }
            Fault::Flushall(region) => {
                let url = &self.region(region)?.redis_url;
                let client = crate::admin::redis(url)?;
                let mut redis = client
                    .get_multiplexed_async_connection()
                    .await
                    .with_context(|| format!("cannot connect to Redis {region}"))?;
                let _: String = redis::cmd("FLUSHALL").query_async(&mut redis).await?;
            }
        }
        Ok(injected)
    }

    /// SIGKILL to the relay holding the lease; returns once another relay of the stack holds
    /// it, with how long that took.
    async fn failover(&self) -> anyhow::Result<Duration> {
        let client = crate::admin::nats(&self.settings.nats_url).await?;
        let bucket = async_nats::jetstream::new(client)
            .get_key_value(names::RELAY_LEASE_BUCKET)
            .await
            .context("no relay lease bucket on the hub: is a relay running?")?;
        // The stack's relay named by the lease, if one holds it.
        let leader = || async {
            let value = bucket.get(relay::lease::KEY).await?;
            let holder = value.and_then(|value| relay::lease::Holder::decode(&value));
            Ok::<_, anyhow::Error>(holder.and_then(|holder| {
                RELAYS
                    .into_iter()
                    .find(|name| self.stack.pid(name).ok() == Some(holder.pid))
            }))
        };
        let active = leader()
            .await?
            .context("no relay of the stack holds the lease")?;
        let killed = Instant::now();
        self.stack.kill(active).await?;
        loop {
            if leader().await?.is_some_and(|name| name != active) {
                return Ok(killed.elapsed());
            }
            anyhow::ensure!(
                killed.elapsed() < self.settings.recover_within,
                "no standby took the relay lease within {:?} of killing {active}",
                self.settings.recover_within
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A deposit made now, followed until every region shows it: how long the stack takes to
    /// carry a new change end to end again.
    async fn probe(&self, round: u32, fault: &Fault) -> Result<Duration, String> {
        let started = Instant::now();
        let deadline = started + self.settings.recover_within;
        let account_id = self.ids[0].clone();
        let mut accounts = AccountServiceClient::new(self.write[0].clone());
        let request = api::DepositRequest {
            account_id: account_id.clone(),
            amount: "1".into(),
            // Retries of this deposit move cash once.
            idempotency_key: format!("chaos-probe-{}-{round}-{}", self.settings.tag, slug(fault)),
        };
        let version = loop {
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(PROBE_CALL);
            match accounts.deposit(call).await {
                Ok(answer) => break answer.into_inner().account_version,
                Err(status) if Instant::now() > deadline => {
                    return Err(format!("the probe deposit was never accepted: {status}"));
                }
                Err(_) => tokio::time::sleep(PROBE_PAUSE).await,
            }
        };
        for region in &self.settings.regions {
            seen(region, &account_id, version, deadline).await?;
        }
        Ok(started.elapsed())
    }

    /// Accepted orders the write model does not know.
    async fn lost(&self, accepted: &[(String, String)]) -> anyhow::Result<u64> {
        let orders = OrderServiceClient::new(self.write[0].clone());
        let answers: Vec<anyhow::Result<bool>> = futures::stream::iter(accepted)
            .map(|(account_id, client_order_id)| {
                let mut orders = orders.clone();
                let request = api::GetOrderRequest {
                    account_id: account_id.clone(),
                    client_order_id: client_order_id.clone(),
                };
                async move {
                    match orders.get_order(grpc::request(request)).await {
                        Ok(_) => Ok(false),
                        Err(status) if status.code() == Code::NotFound => {
                            println!("  lost: order {client_order_id} of {account_id} was accepted and is not in the write model");
                            Ok(true)
                        }
                        Err(status) => Err(anyhow::anyhow!(
                            "cannot look up order {client_order_id}: {status}"
                        )),
                    }
                }
            })
            .buffer_unordered(LOOKUPS_IN_FLIGHT)
            .collect()
            .await;
        let mut lost = 0;
        for answer in answers {
            lost += u64::from(answer?);
        }
        Ok(lost)
    }

    async fn verify(&self) -> anyhow::Result<verify::Report> {
        let settings = &self.settings;
        let poor = (0..settings.accounts.poor).map(|i| settings.accounts.poor_id(i));
        verify::run(&verify::Settings {
            write_addr: settings.write_addr.clone(),
            regions: settings
                .regions
                .iter()
                .map(|r| (r.name.clone(), r.addr.clone()))
                .collect(),
            nats_url: settings.nats_url.clone(),
            raw_stream: names::RAW_ACCOUNTS_STREAM.into(),
            raw_subject_prefix: verify::raw_account_prefix(),
            accounts: self.ids.iter().cloned().chain(poor).collect(),
            wait: settings.recover_within,
            parallel: 16,
        })
        .await
    }
}

/// Waits until `region` shows the account at `version` or later.
async fn seen(
    region: &Region,
    account_id: &str,
    version: u64,
    deadline: Instant,
) -> Result<(), String> {
    let mut last = String::from("never answered");
    while Instant::now() < deadline {
        let answer = match grpc::connect(&region.addr, 1).await {
            Ok(mut channels) => {
                let mut client = PortfolioServiceClient::new(channels.remove(0));
                let mut call = tonic::Request::new(GetPortfolioRequest {
                    account_id: account_id.to_owned(),
                    min_version: version,
                });
                call.set_timeout(PROBE_CALL);
                client.get_portfolio(call).await.map_err(|s| s.to_string())
            }
            Err(error) => Err(format!("{error:#}")),
        };
        match answer {
            Ok(portfolio) if portfolio.get_ref().version >= version => return Ok(()),
            Ok(portfolio) => last = format!("at version {}", portfolio.get_ref().version),
            Err(error) => last = error,
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
    Err(format!(
        "region {} did not show version {version} of {account_id} in time ({last})",
        region.name
    ))
}

/// A fault as it can appear in an id.
fn slug(fault: &Fault) -> String {
    fault.to_string().replace(':', "-")
}

/// Places the load's orders and remembers each one accepted.
struct Orders {
    write: Vec<Channel>,
    ids: Arc<Vec<String>>,
    id_prefix: String,
    accepted: Arc<Mutex<Vec<(String, String)>>>,
}

impl Orders {
    fn call(&self, call: Call) -> BoxFuture<'static, Result<Outcome, String>> {
        let request = place_order::order(&self.ids, &self.id_prefix, call.seq);
        let channel = self.write[(call.seq % self.write.len() as u64) as usize].clone();
        let accepted = self.accepted.clone();
        Box::pin(async move {
            let key = (request.account_id.clone(), request.client_order_id.clone());
            match OrderServiceClient::new(channel)
                .place_order(grpc::request(request))
                .await
            {
                Ok(_) => {
                    accepted.lock().unwrap_or_else(|e| e.into_inner()).push(key);
                    Ok(Outcome::Ok)
                }
                Err(status) if status.code() == Code::FailedPrecondition => Ok(Outcome::Rejected),
                Err(status) => Err(grpc::code_name(&status)),
            }
        })
    }
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "never".to_owned(), |s| format!("{s:.1}"))
}

/// One fault's outcome on one line.
pub fn line(run: &FaultRun) -> String {
    format!(
        "round {} {}: fault {:.1} s{}, recovered in {} s, {} accepted ({} refused or failed), {} lost, {} accounts differing{}",
        run.round,
        run.fault,
        run.fault_s,
        run.takeover_s
            .map_or_else(String::new, |t| format!(" (standby took over in {t:.2} s)")),
        seconds(run.recovery_s),
        run.accepted,
        run.orders.calls - run.orders.ok,
        run.lost,
        run.differing_accounts,
        run.recovery_error
            .as_ref()
            .map_or_else(String::new, |e| format!(" ({e})")),
    ) + &run.fill.as_ref().map_or_else(String::new, |fill| {
        format!(
            "; book of {} on {}: killed {:.3} s after the price, price call {}, {} filled once, {} wrong",
            fill.book, fill.symbol, fill.killed_after_s, fill.price_call, fill.filled, fill.wrong
        )
    })
}

/// Per fault over every round, for the terminal and the README.
pub fn table(run: &ChaosRun) -> String {
    let mut out = String::from(
        "| fault | rounds | fault lasted s (max) | recovered in s (max) | orders accepted | not accepted | orders lost | accounts differing |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut faults: Vec<&Fault> = Vec::new();
    for result in &run.faults {
        if !faults.contains(&&result.fault) {
            faults.push(&result.fault);
        }
    }
    for fault in faults {
        let runs: Vec<&FaultRun> = run.faults.iter().filter(|r| &r.fault == fault).collect();
        let max = |values: Vec<f64>| values.into_iter().fold(0.0, f64::max);
        let recovery = if runs.iter().all(|r| r.recovery_s.is_some()) {
            seconds(Some(max(runs
                .iter()
                .filter_map(|r| r.recovery_s)
                .collect())))
        } else {
            "never".to_owned()
        };
        let sum = |field: fn(&FaultRun) -> u64| runs.iter().map(|r| field(r)).sum::<u64>();
        let _ = writeln!(
            out,
            "| {fault} | {} | {:.1} | {recovery} | {} | {} | {} | {} |",
            runs.len(),
            max(runs.iter().map(|r| r.fault_s).collect()),
            sum(|r| r.accepted),
            sum(|r| r.orders.calls - r.orders.ok),
            sum(|r| r.lost),
            sum(|r| r.differing_accounts),
        );
    }
    let _ = write!(
        out,
        "{:.0} orders/s offered for {:.0} s per fault over {} accounts; {}",
        run.rate,
        run.load_s,
        run.accounts,
        if run.passed() {
            "every fault: 0 lost, 0 accounts differing, recovered"
        } else {
            "FAILED: see the lines above"
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_read_back_as_written() {
        for fault in Fault::all() {
            assert_eq!(fault.to_string().parse::<Fault>(), Ok(fault));
        }
        assert_eq!(
            "cut-link:eu".parse::<Fault>(),
            Ok(Fault::CutLink("eu".into()))
        );
        assert_eq!("failover:relay".parse::<Fault>(), Ok(Fault::Failover));
        assert_eq!(
            "kill-mid-fill:write-region".parse::<Fault>(),
            Ok(Fault::KillMidFill)
        );
    }

    #[test]
    fn unknown_kinds_components_and_regions_are_refused() {
        for text in [
            "kill:postgres",
            "cut-link:us",
            "flush:eu",
            "relay",
            "kill:",
            "failover:eu",
            "kill-mid-fill:relay",
        ] {
            assert!(text.parse::<Fault>().is_err(), "{text} was accepted");
        }
    }
}

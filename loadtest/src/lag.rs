//! `lag`: how long after `PlaceOrder` answers an order becomes visible in each read region.
//!
//! Orders leave at a fixed rate (open loop, through `load`) with the `bench` mix: each funded
//! load-test account in turn buys, then sells, one share. As soon as `PlaceOrder` accepts an
//! order, every region is asked for the account's portfolio with `min_version` set to the
//! version the order produced; a region answers once its view has reached that version (its
//! projector wakes the waiting call) or, when the call's deadline is near, with
//! `FAILED_PRECONDITION`. The time from the `PlaceOrder` answer to a region's answer is the
//! order's lag there.
//!
//! A sample is therefore the propagation itself (outbox, relay, the region's NATS mirror, the
//! projection into Redis) plus one `GetPortfolio` round trip and a task hand-over in this
//! process: an upper bound, too high by about that round trip, which is measured per region at
//! rest before the load and reported beside the lag. `WatchPortfolio` would save only the
//! request's half of that round trip and would disturb what it measures: one stream per
//! account, each woken by every version the region applies (the projector broadcasts all of
//! them), is accounts × orders wake-ups per second inside the region under test, and a watch
//! that falls behind skips versions.
//!
//! Once propagation falls behind, every order's read waits in the regions, up to rate × deadline
//! calls at once, which adds to their load: figures past that point describe an overloaded
//! system, and the count of orders never seen says so.
//!
//! A rejected order changes no version, so it has no lag: it is counted with the orders only.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use crate::grpc::Channel;
use anyhow::Context;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tonic::Code;
use trading_proto::{
    portfolio::v1::{GetPortfolioRequest, portfolio_service_client::PortfolioServiceClient},
    trading::v1::order_service_client::OrderServiceClient,
};

use crate::{
    bench::place_order,
    grpc,
    load::{self, Call, Outcome, Pace},
    memory,
    results::{LagBucket, LagRun, Machine, RegionLag},
    setup::{self, Accounts},
    stats::{self, Latency},
    timefmt,
};

/// The targets at 500 orders/s, in each region: reported against, never asserted.
pub const TARGET_P50_MS: f64 = 5.0;
pub const TARGET_P99_MS: f64 = 25.0;

/// HTTP/2 connections to the write region and to each read region, as `bench` uses by default.
const CONNECTIONS: usize = 4;
/// Sequential reads per region that measure the at-rest round trip.
const ROUND_TRIP_PROBES: usize = 200;
/// How long the regions get to learn of accounts that setup has just opened.
const ACCOUNTS_WAIT: Duration = Duration::from_secs(30);
/// A region's own answer that the version did not arrive within the call's deadline.
const NOT_VISIBLE: &str = "NotVisible";
/// No answer at all within the deadline: tonic's server enforces `grpc-timeout` with
/// `CANCELLED`, a client-side timeout would be `DEADLINE_EXCEEDED`.
const NO_ANSWER: &str = "NoAnswerInTime";
/// How often the stack's CPU is sampled while orders are placed, under the phase name
/// `orders`.
const CPU_SAMPLE_INTERVAL: Duration = Duration::from_millis(500);
const ORDERS_PHASE: &str = "orders";

/// A read region to measure.
#[derive(Debug, Clone)]
pub struct Region {
    pub name: String,
    pub addr: String,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub write_addr: String,
    pub regions: Vec<Region>,
    /// Orders offered per second.
    pub rate: f64,
    pub duration: Duration,
    pub accounts: Accounts,
    /// Short unique tag naming this run's client order ids.
    pub tag: String,
}

/// One accepted order in one region.
#[derive(Debug)]
pub struct Sample {
    /// When `PlaceOrder` answered, from the start of the load.
    pub answered_at: Duration,
    /// The lag, or why the order's version was never seen.
    pub seen: Result<Duration, String>,
}

/// What the load's callers tell the collector.
enum Event {
    Sent,
    Accepted,
    NotAccepted,
    Seen { region: usize, sample: Sample },
}

/// One region's samples, as they arrive.
#[derive(Default)]
struct Observed {
    samples: Vec<Sample>,
    not_visible: u64,
    /// Lags (µs) since the last progress line, so it shows the present rather than the average.
    recent_us: Vec<u64>,
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn pick(channels: &[Channel], seq: u64) -> Channel {
    channels[(seq % channels.len() as u64) as usize].clone()
}

/// Sets up the accounts, measures each region at rest, then places orders at the offered rate
/// and follows each accepted one into every region.
pub async fn run(settings: Settings, command: String) -> anyhow::Result<LagRun> {
    let started_at = SystemTime::now();
    println!(
        "lag: {:.0} orders/s for {:.1} s on {} across {} accounts, followed into {}",
        settings.rate,
        settings.duration.as_secs_f64(),
        settings.write_addr,
        settings.accounts.funded,
        settings
            .regions
            .iter()
            .map(|r| format!("{} ({})", r.name, r.addr))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let write = grpc::connect(&settings.write_addr, CONNECTIONS).await?;
    setup::run(write[0].clone(), &settings.accounts, 16).await?;
    let ids = Arc::new(settings.accounts.funded_ids());
    anyhow::ensure!(!ids.is_empty(), "lag needs at least one funded account");

    // The orders meet a stack at rest, not one still working off the setup or a run before.
    let settled = memory::settle(&memory::default_pids_dir()).await;
    println!("  {settled}");
    let mut readers = Vec::with_capacity(settings.regions.len());
    let mut round_trips = Vec::with_capacity(settings.regions.len());
    for region in &settings.regions {
        let channels = grpc::connect(&region.addr, CONNECTIONS)
            .await
            .with_context(|| format!("read region {} is not running", region.name))?;
        let client = PortfolioServiceClient::new(channels[0].clone());
        await_accounts(&client, &ids)
            .await
            .with_context(|| format!("read region {} is not ready", region.name))?;
        let round_trip = round_trip(client, &ids).await;
        println!(
            "  {} on {}: GetPortfolio at rest p50 {}",
            region.name,
            region.addr,
            round_trip
                .as_ref()
                .map_or_else(|| "-".to_owned(), |l| format!("{:.2} ms", l.p50_ms))
        );
        round_trips.push(round_trip);
        readers.push(channels);
    }

    let (events, received) = mpsc::unbounded_channel();
    let started = Instant::now();
    let names = settings.regions.iter().map(|r| r.name.clone()).collect();
    // Ends once every caller and every visibility read has let go of its sender.
    let collector = tokio::spawn(collect(received, names, settings.duration, started));
    let pace = Pace::Rate {
        per_second: settings.rate,
        // A second's worth: PlaceOrder answers in milliseconds, so more than this in flight means
        // the write region stalled, and the orders beyond it are counted as not sent.
        max_in_flight: (settings.rate.ceil() as usize).max(64),
    };
    let caller = Caller {
        write,
        readers,
        ids,
        id_prefix: format!("lag-{}", settings.tag),
        started,
        events,
    };
    let sampler = memory::Sampler::start(&memory::default_pids_dir(), CPU_SAMPLE_INTERVAL);
    sampler.set_phase(ORDERS_PHASE);
    let orders = load::run("PlaceOrder", pace, settings.duration, move |call| {
        caller.call(call)
    })
    .await;
    let cpu = sampler.finish().await.cpu;
    let observed = collector.await.context("the lag collector failed")?;

    let regions = settings
        .regions
        .iter()
        .zip(round_trips)
        .zip(observed)
        .map(|((region, round_trip), observed)| summarize(region, round_trip, &observed.samples))
        .collect();
    Ok(LagRun {
        kind: "lag".into(),
        started_at: timefmt::rfc3339(started_at),
        command,
        machine: Machine::detect(),
        rate: settings.rate,
        duration_s: settings.duration.as_secs_f64(),
        accounts: settings.accounts.funded,
        link_latency_ms: None,
        settled: Some(settled),
        orders,
        regions,
        cpu,
    })
}

/// Waits until the region knows every account: setup may just have opened them, and their
/// arrival is not the lag of the orders that follow.
async fn await_accounts(
    client: &PortfolioServiceClient<Channel>,
    ids: &[String],
) -> anyhow::Result<()> {
    setup::await_all(ids, ACCOUNTS_WAIT, |account_id| {
        let mut client = client.clone();
        async move {
            match client
                .get_portfolio(grpc::request(GetPortfolioRequest {
                    account_id,
                    min_version: 0,
                }))
                .await
            {
                Ok(_) => Ok(true),
                Err(status) if status.code() == Code::NotFound => Ok(false),
                Err(status) => Err(anyhow::anyhow!("GetPortfolio failed: {status}")),
            }
        }
    })
    .await
}

/// `GetPortfolio` with nothing to wait for, one call at a time.
async fn round_trip(
    mut client: PortfolioServiceClient<Channel>,
    ids: &[String],
) -> Option<Latency> {
    let mut taken = Vec::with_capacity(ROUND_TRIP_PROBES);
    for account_id in ids.iter().cycle().take(ROUND_TRIP_PROBES) {
        let sent = Instant::now();
        let answer = client
            .get_portfolio(grpc::request(GetPortfolioRequest {
                account_id: account_id.clone(),
                min_version: 0,
            }))
            .await;
        if answer.is_ok() {
            taken.push(micros(sent.elapsed()));
        }
    }
    stats::summarize(taken)
}

/// Places one order per call and, once it is accepted, follows it into every region.
struct Caller {
    write: Vec<Channel>,
    /// Each region's connections, in the order of `Settings::regions`.
    readers: Vec<Vec<Channel>>,
    ids: Arc<Vec<String>>,
    id_prefix: String,
    started: Instant,
    events: mpsc::UnboundedSender<Event>,
}

impl Caller {
    fn call(&self, call: Call) -> BoxFuture<'static, Result<Outcome, String>> {
        let request = place_order::order(&self.ids, &self.id_prefix, call.seq);
        let mut orders = OrderServiceClient::new(pick(&self.write, call.seq));
        let readers: Vec<_> = self
            .readers
            .iter()
            .map(|channels| PortfolioServiceClient::new(pick(channels, call.seq)))
            .collect();
        let (events, started) = (self.events.clone(), self.started);
        let _ = events.send(Event::Sent);
        Box::pin(async move {
            let account_id = request.account_id.clone();
            let response = match orders.place_order(grpc::request(request)).await {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    let _ = events.send(Event::NotAccepted);
                    return if status.code() == Code::FailedPrecondition {
                        Ok(Outcome::Rejected)
                    } else {
                        Err(grpc::code_name(&status))
                    };
                }
            };
            let answered = Instant::now();
            let _ = events.send(Event::Accepted);
            // Tasks of their own: the regions are read side by side, and the order's call ends
            // with PlaceOrder, so `load`'s figures stay PlaceOrder's own.
            for (region, reader) in readers.into_iter().enumerate() {
                let (events, account_id) = (events.clone(), account_id.clone());
                let version = response.account_version;
                tokio::spawn(async move {
                    let seen = visible(reader, account_id, version)
                        .await
                        .map(|()| answered.elapsed());
                    let sample = Sample {
                        answered_at: answered.duration_since(started),
                        seen,
                    };
                    let _ = events.send(Event::Seen { region, sample });
                });
            }
            Ok(Outcome::Ok)
        })
    }
}

/// Returns once the region shows the account at `version` or later. The call's deadline
/// (`grpc::CALL_TIMEOUT`) bounds the wait; the region gives up a little before it.
async fn visible(
    mut client: PortfolioServiceClient<Channel>,
    account_id: String,
    version: u64,
) -> Result<(), String> {
    match client
        .get_portfolio(grpc::request(GetPortfolioRequest {
            account_id,
            min_version: version,
        }))
        .await
    {
        Ok(portfolio) if portfolio.get_ref().version >= version => Ok(()),
        // The region broke its read-your-writes promise: no lag to record, a bug to show.
        Ok(_) => Err("AnsweredBelowMinVersion".into()),
        Err(status) => Err(match status.code() {
            Code::FailedPrecondition => NOT_VISIBLE.into(),
            Code::Cancelled | Code::DeadlineExceeded => NO_ANSWER.into(),
            _ => grpc::code_name(&status),
        }),
    }
}

/// Gathers the events until every sender is gone, printing a progress line every second.
async fn collect(
    mut received: mpsc::UnboundedReceiver<Event>,
    regions: Vec<String>,
    duration: Duration,
    started: Instant,
) -> Vec<Observed> {
    let mut observed: Vec<Observed> = regions.iter().map(|_| Observed::default()).collect();
    let (mut sent, mut accepted, mut not_accepted) = (0_u64, 0_u64, 0_u64);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    loop {
        tokio::select! {
            event = received.recv() => match event {
                None => break,
                Some(Event::Sent) => sent += 1,
                Some(Event::Accepted) => accepted += 1,
                Some(Event::NotAccepted) => not_accepted += 1,
                Some(Event::Seen { region, sample }) => {
                    let observed = &mut observed[region];
                    match &sample.seen {
                        Ok(lag) => observed.recent_us.push(micros(*lag)),
                        Err(_) => observed.not_visible += 1,
                    }
                    observed.samples.push(sample);
                }
            },
            _ = ticker.tick() => {
                let mut line = format!(
                    "  lag {:>3.0}/{:.0}s  sent {sent}  accepted {accepted}  not accepted {not_accepted}",
                    started.elapsed().as_secs_f64(),
                    duration.as_secs_f64(),
                );
                for (name, observed) in regions.iter().zip(&mut observed) {
                    let recent = stats::summarize(std::mem::take(&mut observed.recent_us));
                    let _ = write!(
                        line,
                        "  | {name} {}, not visible {}",
                        recent.map_or_else(
                            || "-".to_owned(),
                            |l| format!("p50 {:.1} p99 {:.1} ms", l.p50_ms, l.p99_ms)
                        ),
                        observed.not_visible
                    );
                }
                // A line per second that stays, written over `load`'s own transient one.
                eprintln!("\r{line:<100}");
            }
        }
    }
    observed
}

/// A region's figures from its samples.
fn summarize(
    region: &Region,
    round_trip_at_rest: Option<Latency>,
    samples: &[Sample],
) -> RegionLag {
    let mut lags = Vec::with_capacity(samples.len());
    let mut not_visible = BTreeMap::new();
    for sample in samples {
        match &sample.seen {
            Ok(lag) => lags.push(micros(*lag)),
            Err(reason) => *not_visible.entry(reason.clone()).or_default() += 1,
        }
    }
    RegionLag {
        region: region.name.clone(),
        addr: region.addr.clone(),
        round_trip_at_rest,
        lag: stats::summarize(lags),
        not_visible,
        over_time: over_time(samples),
    }
}

/// One bucket per second of the load, by when `PlaceOrder` answered, up to the last second
/// anything was answered in; seconds without orders stay in as empty buckets, so a stall shows.
pub fn over_time(samples: &[Sample]) -> Vec<LagBucket> {
    let Some(last) = samples.iter().map(|s| s.answered_at.as_secs()).max() else {
        return Vec::new();
    };
    let mut buckets = vec![(Vec::new(), 0_u64); last as usize + 1];
    for sample in samples {
        let (lags, not_visible) = &mut buckets[sample.answered_at.as_secs() as usize];
        match &sample.seen {
            Ok(lag) => lags.push(micros(*lag)),
            Err(_) => *not_visible += 1,
        }
    }
    buckets
        .into_iter()
        .zip(0..)
        .map(|((lags, not_visible), second)| LagBucket {
            second,
            lag: stats::summarize(lags),
            not_visible,
        })
        .collect()
}

/// Whether a region met the targets, in words.
pub fn against_targets(lag: Option<&Latency>) -> String {
    match lag {
        None => "no samples".into(),
        Some(l) if l.p50_ms <= TARGET_P50_MS && l.p99_ms <= TARGET_P99_MS => "met".into(),
        Some(l) => format!("missed (p50 {:.2} ms, p99 {:.2} ms)", l.p50_ms, l.p99_ms),
    }
}

/// The figures of a run, for the terminal and the README.
pub fn table(run: &LagRun) -> String {
    let mut out = String::from(
        "| region | visible | p50 ms | p90 ms | p99 ms | max ms | not visible | GetPortfolio at rest p50 ms |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for region in &run.regions {
        let figures = region.lag.as_ref().map_or_else(
            || "0 | - | - | - | -".to_owned(),
            |l| {
                format!(
                    "{} | {:.2} | {:.2} | {:.2} | {:.2}",
                    l.samples, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
                )
            },
        );
        let not_visible = if region.not_visible.is_empty() {
            "0".to_owned()
        } else {
            format!("{} {:?}", region.not_visible_count(), region.not_visible)
        };
        let _ = writeln!(
            out,
            "| {} | {figures} | {not_visible} | {} |",
            region.region,
            region
                .round_trip_at_rest
                .as_ref()
                .map_or_else(|| "-".to_owned(), |l| format!("{:.2}", l.p50_ms)),
        );
    }
    let orders = &run.orders;
    let _ = writeln!(
        out,
        "\norders: {:.0}/s offered, {:.1}/s answered over {:.1} s ({} accepted, {} rejected, errors {:?}); PlaceOrder {}",
        run.rate,
        orders.throughput,
        orders.elapsed_s,
        orders.ok,
        orders.rejected,
        orders.errors,
        orders.latency.as_ref().map_or_else(
            || "-".to_owned(),
            |l| format!("p50 {:.2} ms, p99 {:.2} ms", l.p50_ms, l.p99_ms)
        ),
    );
    if let Some(millis) = run.link_latency_ms {
        let _ = writeln!(
            out,
            "every leaf link slowed by {millis} ms each way (toxiproxy) during the run"
        );
    }
    let _ = writeln!(
        out,
        "lag is from the PlaceOrder answer to the region's GetPortfolio(min_version) answer, so it includes that read's round trip"
    );
    out.push_str(&memory::cpu_table(&run.cpu, run.machine.cpus));
    let verdicts: Vec<String> = run
        .regions
        .iter()
        .map(|r| format!("{} {}", r.region, against_targets(r.lag.as_ref())))
        .collect();
    let _ = write!(
        out,
        "target at 500 orders/s (reported, not asserted): p50 <= {TARGET_P50_MS} ms, p99 <= {TARGET_P99_MS} ms: {}",
        verdicts.join("; ")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(answered_ms: u64, seen: Result<u64, &str>) -> Sample {
        Sample {
            answered_at: Duration::from_millis(answered_ms),
            seen: seen.map(Duration::from_millis).map_err(str::to_owned),
        }
    }

    #[test]
    fn buckets_by_the_second_the_order_was_answered() {
        let samples = [
            sample(10, Ok(2)),
            sample(990, Ok(4)),
            // Answered in second 2, seen well after: it still belongs to second 2.
            sample(2_500, Ok(1_700)),
            sample(2_600, Err(NOT_VISIBLE)),
        ];
        let buckets = over_time(&samples);
        assert_eq!(buckets.len(), 3);
        let first = buckets[0].lag.as_ref().expect("second 0 has samples");
        assert_eq!((first.samples, first.p50_ms, first.max_ms), (2, 2.0, 4.0));
        // A second without orders is kept, empty, so a stall shows as a gap.
        assert_eq!(
            buckets[1],
            LagBucket {
                second: 1,
                lag: None,
                not_visible: 0
            }
        );
        let third = &buckets[2];
        assert_eq!(third.second, 2);
        assert_eq!(third.lag.as_ref().map(|l| l.samples), Some(1));
        assert_eq!(third.not_visible, 1);
    }

    #[test]
    fn no_samples_no_buckets() {
        assert!(over_time(&[]).is_empty());
    }

    #[test]
    fn orders_never_seen_are_counted_by_reason_not_as_lag() {
        let region = Region {
            name: "eu".into(),
            addr: "127.0.0.1:50061".into(),
        };
        let samples = [
            sample(0, Ok(3)),
            sample(1, Err(NOT_VISIBLE)),
            sample(2, Err("Unavailable")),
            sample(3, Err(NOT_VISIBLE)),
        ];
        let summary = summarize(&region, None, &samples);
        let lag = summary.lag.as_ref().expect("one order was seen");
        assert_eq!((lag.samples, lag.max_ms), (1, 3.0));
        assert_eq!(summary.not_visible_count(), 3);
        assert_eq!(summary.not_visible.get(NOT_VISIBLE), Some(&2));
        assert_eq!(summary.not_visible.get("Unavailable"), Some(&1));
    }

    #[test]
    fn targets_need_both_percentiles() {
        let latency = |p50_ms, p99_ms| Latency {
            samples: 1,
            mean_ms: p50_ms,
            p50_ms,
            p90_ms: p50_ms,
            p99_ms,
            max_ms: p99_ms,
        };
        assert_eq!(against_targets(Some(&latency(4.0, 20.0))), "met");
        assert!(against_targets(Some(&latency(4.0, 30.0))).starts_with("missed"));
        assert!(against_targets(Some(&latency(6.0, 20.0))).starts_with("missed"));
        assert_eq!(against_targets(None), "no samples");
    }
}

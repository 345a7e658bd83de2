//! `status`: the stack on one screen, refreshed live: each component's health, which relay
//! holds the lease, each stream's backlog, how far each read region is behind the write model,
//! and each service's own metrics (its `GET /metrics`): request, error and shed rates and p99
//! latency since the last refresh, the outbox's backlog, the relay's, each projection's.
//!
//! A region's lag is the age of the oldest enriched event it has not applied yet (0 when it
//! has applied everything the hub holds): the hub's `PORTFOLIO_EVENTS` is what the relay
//! made of every committed change, the region's mirror keeps the hub's sequence numbers, and
//! the region acknowledges an event on its durable consumer only once Redis holds it. So the
//! region has applied everything up to its consumer's acknowledgement floor, and the event after
//! that, read back from the hub, carries the time the relay published it.

use std::{
    collections::BTreeMap,
    fmt::Write,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull};
use platform::names;
use serde::Serialize;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{admin, grpc, timefmt};

/// How long one probe of one component may take before it counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the stack listens (`infra/.run/endpoints.env`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// gRPC services by component name (write-region, relay, relay-2, read-region-eu, ...).
    pub services: Vec<(String, String)>,
    pub nats_hub_url: String,
    /// Per read region: its name, leaf NATS URL and Redis URL.
    pub regions: Vec<RegionEndpoints>,
    /// The CQL address of each store node.
    pub cassandra: Vec<String>,
    /// Each service's metrics endpoint (`host:port`), by component name.
    pub metrics: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct RegionEndpoints {
    pub name: String,
    pub nats_url: String,
    pub redis_url: String,
}

/// One look at the stack.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub taken_at: String,
    pub components: Vec<Component>,
    /// The relay instance holding the lease (`None`: no relay runs the pipeline).
    pub relay_leader: Option<String>,
    pub streams: Vec<Backlog>,
    pub regions: Vec<RegionLag>,
    pub services: Vec<ServiceMetrics>,
}

/// What one service's metrics say, rates over the time since the previous look.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceMetrics {
    pub component: String,
    /// `None` until two looks were taken (rates need an interval), or when unreachable.
    pub requests_per_second: Option<f64>,
    pub server_errors_per_second: Option<f64>,
    pub shed_per_second: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The service's own gauges and counters, by name, as the endpoint showed them.
    pub figures: Vec<(String, f64)>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Component {
    pub name: String,
    pub healthy: bool,
    /// SERVING, the error, or what the check saw.
    pub detail: String,
}

/// A stream and the consumer that works it off.
#[derive(Debug, Clone, Serialize)]
pub struct Backlog {
    pub stream: String,
    pub last_sequence: u64,
    pub consumer: String,
    /// Messages the consumer has not acknowledged yet (`None`: the consumer does not exist).
    pub pending: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegionLag {
    pub region: String,
    /// The last hub sequence the region has applied.
    pub applied: Option<u64>,
    /// Enriched events on the hub the region has not applied.
    pub behind: Option<u64>,
    /// Age of the oldest of those (0: none), in milliseconds.
    pub lag_ms: Option<u64>,
    /// Why a figure is missing.
    pub error: Option<String>,
}

impl Status {
    pub fn region(&self, name: &str) -> Option<&RegionLag> {
        self.regions.iter().find(|region| region.region == name)
    }

    pub fn service(&self, component: &str) -> Option<&ServiceMetrics> {
        self.services
            .iter()
            .find(|service| service.component == component)
    }
}

impl ServiceMetrics {
    /// One of `figures`.
    pub fn figure(&self, name: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|(figure, _)| figure == name)
            .map(|(_, value)| *value)
    }
}

/// One sample of a Prometheus text page: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(label, _)| label == name)
            .map(|(_, value)| value.as_str())
    }
}

/// The samples of a Prometheus text page (what `platform::metrics` serves); comments and lines
/// that do not parse are skipped.
fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                other => other.parse().ok()?,
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
                None => (series, Vec::new()),
            };
            Some(Sample {
                name: name.to_owned(),
                labels,
                value,
            })
        })
        .collect()
}

/// `a="1",b="x\"y"` -> [(a, 1), (b, x"y)].
fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (index, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break index,
                other => value.push(other),
            }
        };
        labels.push((name.trim_start_matches(',').to_owned(), value));
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

/// Sum of the samples named `name` that `keep` accepts.
fn total(samples: &[Sample], name: &str, keep: impl Fn(&Sample) -> bool) -> f64 {
    samples
        .iter()
        .filter(|sample| sample.name == name && keep(sample))
        .map(|sample| sample.value)
        .sum()
}

/// Codes that say the server (or what it depends on) failed.
const SERVER_FAULTS: [&str; 4] = ["INTERNAL", "UNKNOWN", "DATA_LOSS", "UNAVAILABLE"];

/// The latency under which 99 % of the requests between `before` and `now` were answered, from
/// the histogram's buckets summed over every method; `None` without requests.
fn p99_ms(before: &[Sample], now: &[Sample]) -> Option<f64> {
    let buckets = |samples: &[Sample]| {
        let mut by_bound: BTreeMap<u64, f64> = BTreeMap::new();
        for sample in samples {
            if sample.name == "rpc_server_duration_seconds_bucket"
                && let Some(bound) = sample.label("le").and_then(|le| le.parse::<f64>().ok())
            {
                // Bounds as integer nanoseconds, so they order and compare exactly.
                *by_bound.entry((bound * 1e9) as u64).or_default() += sample.value;
            }
        }
        by_bound
    };
    let (before, now) = (buckets(before), buckets(now));
    let delta: Vec<(u64, f64)> = now
        .iter()
        .map(|(bound, count)| (*bound, count - before.get(bound).copied().unwrap_or(0.0)))
        .collect();
    let requests = delta.last().map(|(_, count)| *count)?;
    if requests <= 0.0 {
        return None;
    }
    delta
        .iter()
        .find(|(_, count)| *count >= requests * 0.99)
        .map(|(bound, _)| *bound as f64 / 1e6)
}

/// The figures the status shows from a service's page besides its request rates.
const FIGURES: [&str; 12] = [
    "outbox_backlog_events",
    "outbox_oldest_unpublished_age_seconds",
    "outbox_events_published_total",
    "relay_lease_held",
    "relay_backlog_events",
    "relay_raw_events_processed_total",
    "projection_pending",
    "projection_newest_applied_age_seconds",
    "projection_staleness_seconds",
    "projection_gaps_repaired_total",
    "dependency_errors_total",
    "rpc_server_denied_total",
];

fn service_metrics(
    component: &str,
    previous: Option<&(Instant, Vec<Sample>)>,
    now: &(Instant, Vec<Sample>),
) -> ServiceMetrics {
    let samples = &now.1;
    let rate = |name: &str, keep: &dyn Fn(&Sample) -> bool| {
        previous.map(|(at, before)| {
            let elapsed = now.0.duration_since(*at).as_secs_f64().max(1e-3);
            (total(samples, name, keep) - total(before, name, keep)).max(0.0) / elapsed
        })
    };
    let requests = "rpc_server_requests_total";
    ServiceMetrics {
        component: component.to_owned(),
        requests_per_second: rate(requests, &|_| true),
        server_errors_per_second: rate(requests, &|sample| {
            sample
                .label("rpc_grpc_status_code")
                .is_some_and(|code| SERVER_FAULTS.contains(&code))
        }),
        shed_per_second: rate("rpc_server_shed_total", &|_| true),
        p99_ms: previous.and_then(|(_, before)| p99_ms(before, samples)),
        figures: FIGURES
            .iter()
            .filter(|name| samples.iter().any(|sample| sample.name == **name))
            .map(|name| ((*name).to_owned(), total(samples, name, |_| true)))
            .collect(),
        error: None,
    }
}

/// The connections a live view keeps between refreshes, and each service's last metrics.
pub struct Probe {
    settings: Settings,
    hub: Option<jetstream::Context>,
    leaves: Vec<Option<jetstream::Context>>,
    http: reqwest::Client,
    scraped: BTreeMap<String, (Instant, Vec<Sample>)>,
}

impl Probe {
    pub fn new(settings: Settings) -> anyhow::Result<Self> {
        let leaves = vec![None; settings.regions.len()];
        let http = reqwest::Client::builder()
            .timeout(PROBE_TIMEOUT)
            .build()
            .context("cannot build an HTTP client")?;
        Ok(Self {
            settings,
            hub: None,
            leaves,
            http,
            scraped: BTreeMap::new(),
        })
    }

    /// Each service's metrics now, with rates since the previous call.
    async fn scrape(&mut self) -> Vec<ServiceMetrics> {
        let mut services = Vec::new();
        for (component, addr) in &self.settings.metrics {
            let url = format!("http://{addr}/metrics");
            let page = match self.http.get(&url).send().await {
                Ok(response) if response.status().is_success() => {
                    response.text().await.map_err(|error| error.to_string())
                }
                Ok(response) => Err(format!("{url} answered {}", response.status())),
                Err(error) => Err(format!("no answer from {url}: {error}")),
            };
            match page {
                Ok(page) => {
                    let now = (Instant::now(), parse_samples(&page));
                    services.push(service_metrics(
                        component,
                        self.scraped.get(component),
                        &now,
                    ));
                    self.scraped.insert(component.clone(), now);
                }
                Err(error) => {
                    self.scraped.remove(component);
                    services.push(ServiceMetrics {
                        component: component.clone(),
                        requests_per_second: None,
                        server_errors_per_second: None,
                        shed_per_second: None,
                        p99_ms: None,
                        figures: Vec::new(),
                        error: Some(error),
                    });
                }
            }
        }
        services
    }

    /// Two looks a second apart, so the second has rates: what a single look prints.
    pub async fn take_with_rates(&mut self) -> Status {
        self.scrape().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.take().await
    }

    /// Looks at every component, stream and region once.
    pub async fn take(&mut self) -> Status {
        let mut components = Vec::new();
        for (name, addr) in &self.settings.services {
            components.push(grpc_health(name, addr).await);
        }
        let hub = connect(&mut self.hub, &self.settings.nats_hub_url, None).await;
        components.push(nats_component("nats-hub", &hub));
        for (index, region) in self.settings.regions.iter().enumerate() {
            let leaf = connect(
                &mut self.leaves[index],
                &region.nats_url,
                Some(&region.name),
            )
            .await;
            components.push(nats_component(&format!("nats-{}", region.name), &leaf));
            components.push(redis_component(&region.name, &region.redis_url).await);
        }
        // One line per store node: a cluster with a node down still serves, and shows which.
        for addr in &self.settings.cassandra {
            components.push(tcp_component("cassandra", addr).await);
        }

        let (relay_leader, streams, hub_stream) = match &self.hub {
            Some(hub) => (
                relay_leader(hub).await,
                hub_backlogs(hub).await,
                hub.get_stream(names::ENRICHED_STREAM).await.ok(),
            ),
            None => (None, Vec::new(), None),
        };
        let mut regions = Vec::new();
        for (index, region) in self.settings.regions.iter().enumerate() {
            let lag = match (&self.leaves[index], &hub_stream) {
                (Some(leaf), Some(hub_stream)) => region_lag(leaf, hub_stream).await,
                (None, _) => Err(format!("no connection to nats-{}", region.name)),
                (_, None) => Err("no enriched stream on the hub".into()),
            };
            regions.push(match lag {
                Ok((applied, behind, lag_ms)) => RegionLag {
                    region: region.name.clone(),
                    applied: Some(applied),
                    behind: Some(behind),
                    lag_ms: Some(lag_ms),
                    error: None,
                },
                Err(error) => RegionLag {
                    region: region.name.clone(),
                    applied: None,
                    behind: None,
                    lag_ms: None,
                    error: Some(error),
                },
            });
        }
        Status {
            taken_at: timefmt::rfc3339(SystemTime::now()),
            components,
            relay_leader,
            streams,
            regions,
            services: self.scrape().await,
        }
    }
}

/// The JetStream context in `slot`, connecting (as admin) if there is none; `domain` for a
/// leaf's own JetStream.
async fn connect<'a>(
    slot: &'a mut Option<jetstream::Context>,
    url: &str,
    domain: Option<&str>,
) -> Result<&'a jetstream::Context, String> {
    if slot.is_none() {
        let client = tokio::time::timeout(PROBE_TIMEOUT, admin::nats(url))
            .await
            .map_err(|_| format!("no answer from {url}"))?
            .map_err(|error| format!("{error:#}"))?;
        *slot = Some(match domain {
            Some(domain) => jetstream::with_domain(client, domain),
            None => jetstream::new(client),
        });
    }
    slot.as_ref().ok_or_else(|| "not connected".to_owned())
}

fn nats_component(name: &str, connected: &Result<&jetstream::Context, String>) -> Component {
    match connected {
        Ok(context) => {
            let state = context.client().connection_state();
            Component {
                name: name.to_owned(),
                healthy: state == async_nats::connection::State::Connected,
                detail: state.to_string(),
            }
        }
        Err(error) => Component {
            name: name.to_owned(),
            healthy: false,
            detail: error.clone(),
        },
    }
}

async fn grpc_health(name: &str, addr: &str) -> Component {
    let checked = tokio::time::timeout(PROBE_TIMEOUT, async {
        let channel = grpc::connect(addr, 1).await?.remove(0);
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await?;
        Ok::<_, anyhow::Error>(answer.into_inner().status())
    })
    .await;
    let (healthy, detail) = match checked {
        Ok(Ok(ServingStatus::Serving)) => (true, "SERVING".to_owned()),
        Ok(Ok(status)) => (false, status.as_str_name().to_owned()),
        Ok(Err(error)) => (false, format!("{error:#}")),
        Err(_) => (false, format!("no answer within {PROBE_TIMEOUT:?}")),
    };
    Component {
        name: name.to_owned(),
        healthy,
        detail,
    }
}

async fn redis_component(region: &str, url: &str) -> Component {
    let pinged = tokio::time::timeout(PROBE_TIMEOUT, async {
        let client = admin::redis(url)?;
        let mut redis = client.get_multiplexed_async_connection().await?;
        let pong: String = redis::cmd("PING").query_async(&mut redis).await?;
        Ok::<_, anyhow::Error>(pong)
    })
    .await;
    let (healthy, detail) = match pinged {
        Ok(Ok(pong)) => (pong == "PONG", pong),
        Ok(Err(error)) => (false, format!("{error:#}")),
        Err(_) => (false, format!("no answer within {PROBE_TIMEOUT:?}")),
    };
    Component {
        name: format!("redis-{region}"),
        healthy,
        detail,
    }
}

async fn tcp_component(name: &str, addr: &str) -> Component {
    let connected = tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await;
    let (healthy, detail) = match connected {
        Ok(Ok(_)) => (true, format!("accepts connections on {addr}")),
        Ok(Err(error)) => (false, error.to_string()),
        Err(_) => (false, format!("no answer within {PROBE_TIMEOUT:?}")),
    };
    Component {
        name: name.to_owned(),
        healthy,
        detail,
    }
}

async fn relay_leader(hub: &jetstream::Context) -> Option<String> {
    let bucket = hub.get_key_value(names::RELAY_LEASE_BUCKET).await.ok()?;
    let value = bucket.get(relay::lease::KEY).await.ok()??;
    let holder = relay::lease::Holder::decode(&value)?;
    Some(format!("{} (pid {})", holder.instance, holder.pid))
}

/// The raw streams and the relay's consumers of them, and the enriched stream.
async fn hub_backlogs(hub: &jetstream::Context) -> Vec<Backlog> {
    let mut backlogs = Vec::new();
    for stream in [names::RAW_ACCOUNTS_STREAM, names::RAW_MARKET_STREAM] {
        let Ok(mut handle) = hub.get_stream(stream).await else {
            continue;
        };
        let last_sequence = handle.info().await.map_or(0, |i| i.state.last_sequence);
        let consumer = relay::consumer_name(stream);
        let pending = match handle.consumer_info(&consumer).await {
            Ok(info) => Some(info.num_pending + info.num_ack_pending as u64),
            Err(_) => None,
        };
        backlogs.push(Backlog {
            stream: stream.to_owned(),
            last_sequence,
            consumer,
            pending,
        });
    }
    backlogs
}

/// (applied, behind, lag in ms) of the region whose leaf is `leaf`.
async fn region_lag(
    leaf: &jetstream::Context,
    hub_stream: &jetstream::stream::Stream,
) -> Result<(u64, u64, u64), String> {
    let mirror = leaf
        .get_stream(names::ENRICHED_MIRROR_STREAM)
        .await
        .map_err(|error| format!("no mirror: {error}"))?;
    let consumer: jetstream::consumer::Consumer<pull::Config> = mirror
        .get_consumer(READ_REGION_CONSUMER)
        .await
        .map_err(|error| format!("no consumer {READ_REGION_CONSUMER}: {error}"))?;
    let applied = consumer.cached_info().ack_floor.stream_sequence;
    let mut hub_stream = hub_stream.clone();
    let last = hub_stream
        .info()
        .await
        .map_err(|error| format!("cannot read the hub's enriched stream: {error}"))?
        .state
        .last_sequence;
    if applied >= last {
        return Ok((applied, 0, 0));
    }
    let oldest = hub_stream
        .get_raw_message(applied + 1)
        .await
        .map_err(|error| format!("cannot read event {}: {error}", applied + 1))?;
    let published = UNIX_EPOCH
        + Duration::from_nanos(u64::try_from(oldest.time.unix_timestamp_nanos()).unwrap_or(0));
    let lag = SystemTime::now()
        .duration_since(published)
        .unwrap_or_default();
    Ok((applied, last - applied, lag.as_millis() as u64))
}

/// The read region's durable consumer on its mirror (its `consumer_name` setting's default).
const READ_REGION_CONSUMER: &str = "read-region";

/// The status as one screen of text.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "trading backend status at {}\n", status.taken_at);
    let _ = writeln!(out, "{:<16} {:<6} detail", "component", "state");
    for component in &status.components {
        let mut detail = component.detail.clone();
        detail.truncate(70);
        let _ = writeln!(
            out,
            "{:<16} {:<6} {detail}",
            component.name,
            if component.healthy { "up" } else { "DOWN" }
        );
    }
    let _ = writeln!(
        out,
        "\nrelay lease: {}",
        status
            .relay_leader
            .as_deref()
            .unwrap_or("NOBODY (no relay runs the pipeline)")
    );
    let _ = writeln!(
        out,
        "\n{:<18} {:>12} {:<22} {:>9}",
        "stream", "last seq", "consumer", "backlog"
    );
    for backlog in &status.streams {
        let _ = writeln!(
            out,
            "{:<18} {:>12} {:<22} {:>9}",
            backlog.stream,
            backlog.last_sequence,
            backlog.consumer,
            backlog
                .pending
                .map_or_else(|| "absent".to_owned(), |p| p.to_string())
        );
    }
    let _ = writeln!(
        out,
        "\n{:<8} {:>12} {:>10} {:>10}",
        "region", "applied", "behind", "lag ms"
    );
    for region in &status.regions {
        let figure = |value: Option<u64>| value.map_or_else(|| "?".to_owned(), |v| v.to_string());
        let _ = write!(
            out,
            "{:<8} {:>12} {:>10} {:>10}",
            region.region,
            figure(region.applied),
            figure(region.behind),
            figure(region.lag_ms)
        );
        if let Some(error) = &region.error {
            let _ = write!(out, "  {error}");
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "\n{:<16} {:>9} {:>9} {:>9} {:>9}  figures",
        "service", "req/s", "errors/s", "shed/s", "p99 ms"
    );
    for service in &status.services {
        let rate = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        let _ = write!(
            out,
            "{:<16} {:>9} {:>9} {:>9} {:>9} ",
            service.component,
            rate(service.requests_per_second),
            rate(service.server_errors_per_second),
            rate(service.shed_per_second),
            rate(service.p99_ms)
        );
        for (name, value) in &service.figures {
            let _ = write!(out, " {name}={value}");
        }
        if let Some(error) = &service.error {
            let _ = write!(out, " {error}");
        }
        out.push('\n');
    }
    out
}

/// Prints the status every `interval` (clearing the terminal between), or once.
pub async fn watch(settings: Settings, interval: Option<Duration>) -> anyhow::Result<()> {
    let mut probe = Probe::new(settings)?;
    let Some(interval) = interval else {
        print!("{}", render(&probe.take_with_rates().await));
        return Ok(());
    };
    loop {
        let started = Instant::now();
        let screen = render(&probe.take().await);
        // Clear the screen and home the cursor, then draw: one screen, redrawn in place.
        print!("\x1b[2J\x1b[H{screen}\n(every {interval:?}; Ctrl-C to stop)\n");
        std::io::Write::flush(&mut std::io::stdout()).context("cannot write the screen")?;
        tokio::time::sleep(interval.saturating_sub(started.elapsed())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_samples_read_back_with_their_labels() {
        let page = "# HELP x y\n# TYPE rpc_server_requests_total counter\n\
            rpc_server_requests_total{rpc_method=\"/a.B/C\",rpc_grpc_status_code=\"OK\"} 12\n\
            odd{v=\"q\\\"uote\",w=\"\"} 1.5\n\
            plain 3\n\
            rpc_server_duration_seconds_bucket{le=\"+Inf\"} 4\n";
        let samples = parse_samples(page);
        assert_eq!(samples.len(), 4, "{samples:?}");
        assert_eq!(samples[0].label("rpc_method"), Some("/a.B/C"));
        assert_eq!(samples[0].label("rpc_grpc_status_code"), Some("OK"));
        assert_eq!(samples[0].value, 12.0);
        assert_eq!(samples[1].label("v"), Some("q\"uote"));
        assert_eq!(samples[1].label("w"), Some(""));
        assert_eq!(samples[2].name, "plain");
        assert_eq!(samples[3].label("le"), Some("+Inf"));
    }

    #[test]
    fn rates_and_p99_come_from_the_difference_of_two_pages() {
        let page = |ok: u32, failed: u32, fast: u32, slow: u32| {
            parse_samples(&format!(
                "rpc_server_requests_total{{rpc_grpc_status_code=\"OK\"}} {ok}\n\
                 rpc_server_requests_total{{rpc_grpc_status_code=\"UNAVAILABLE\"}} {failed}\n\
                 rpc_server_duration_seconds_bucket{{le=\"0.001\"}} {fast}\n\
                 rpc_server_duration_seconds_bucket{{le=\"0.1\"}} {}\n\
                 rpc_server_duration_seconds_bucket{{le=\"+Inf\"}} {}\n\
                 outbox_backlog_events 7\n",
                fast + slow,
                fast + slow
            ))
        };
        let start = Instant::now();
        let before = (start, page(100, 0, 100, 0));
        let now = (start + Duration::from_secs(2), page(300, 10, 205, 5));
        let metrics = service_metrics("write-region", Some(&before), &now);
        assert_eq!(metrics.requests_per_second, Some(105.0));
        assert_eq!(metrics.server_errors_per_second, Some(5.0));
        // 105 of 110 new requests under 1 ms: 95 %, so the 99th percentile is in the 100 ms bucket.
        assert_eq!(metrics.p99_ms, Some(100.0));
        assert_eq!(metrics.figure("outbox_backlog_events"), Some(7.0));
        let first = service_metrics("write-region", None, &now);
        assert_eq!(first.requests_per_second, None);
        assert_eq!(first.p99_ms, None);
    }
}

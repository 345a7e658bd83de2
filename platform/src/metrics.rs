//! Metrics a person can act on, read where they are: every instrument a service creates from
//! `opentelemetry::global::meter` is exported over OTLP when a collector is configured (see
//! `telemetry`) and, on the service's `metrics_addr`, served as Prometheus text on
//! `GET /metrics`, collected at the moment of the request.
//!
//! The instruments every server shares live here too: requests by method and status code,
//! their latency, and the requests shed at the concurrency limit.

use std::{
    collections::BTreeMap,
    fmt::Write,
    net::SocketAddr,
    sync::{Arc, OnceLock, Weak},
    time::Duration,
};

use opentelemetry::{
    KeyValue, Value,
    metrics::{Counter, Histogram},
};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    metrics::{
        InstrumentKind, ManualReader, Pipeline, Temporality,
        data::{AggregatedMetrics, MetricData, ResourceMetrics},
        reader::MetricReader,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tokio_util::sync::CancellationToken;

/// The reader `GET /metrics` collects from; installed with the meter provider.
#[derive(Debug, Clone, Default)]
pub struct Scrape(Arc<ManualReader>);

impl MetricReader for Scrape {
    fn register_pipeline(&self, pipeline: Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }

    fn collect(&self, metrics: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(metrics)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

static SCRAPE: OnceLock<Scrape> = OnceLock::new();

/// The process's scrape reader (one per process, as the meter provider is).
pub(crate) fn scrape() -> Scrape {
    SCRAPE.get_or_init(Scrape::default).clone()
}

impl Scrape {
    /// Everything the meter provider holds now, as Prometheus text (format 0.0.4).
    pub fn render(&self) -> String {
        let mut metrics = ResourceMetrics::default();
        if let Err(error) = self.0.collect(&mut metrics) {
            return format!("# collection failed: {error}\n");
        }
        render(&metrics)
    }
}

/// A metric name as Prometheus spells it: `rpc.server.requests` -> `rpc_server_requests`.
fn prometheus_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn label_value(value: &Value) -> String {
    value
        .as_str()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `{a="1",b="2"}` (empty for no labels), with `extra` appended (a histogram's `le`).
fn labels<'a>(
    attributes: impl Iterator<Item = &'a KeyValue>,
    extra: Option<(&str, &str)>,
) -> String {
    let mut pairs: Vec<String> = attributes
        .map(|kv| {
            format!(
                "{}=\"{}\"",
                prometheus_name(kv.key.as_str()),
                label_value(&kv.value)
            )
        })
        .collect();
    if let Some((key, value)) = extra {
        pairs.push(format!("{key}=\"{value}\""));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

/// A sample value: integers as integers, floats with Prometheus's spellings of the specials.
trait Sample: Copy {
    fn text(self) -> String;
}

impl Sample for u64 {
    fn text(self) -> String {
        self.to_string()
    }
}

impl Sample for i64 {
    fn text(self) -> String {
        self.to_string()
    }
}

impl Sample for f64 {
    fn text(self) -> String {
        if self.is_nan() {
            "NaN".into()
        } else if self.is_infinite() {
            if self > 0.0 { "+Inf" } else { "-Inf" }.into()
        } else {
            self.to_string()
        }
    }
}

fn render_data<T: Sample>(out: &mut String, name: &str, help: &str, data: &MetricData<T>) {
    let _ = writeln!(out, "# HELP {name} {}", help.replace('\n', " "));
    match data {
        MetricData::Gauge(gauge) => {
            let _ = writeln!(out, "# TYPE {name} gauge");
            for point in gauge.data_points() {
                let _ = writeln!(
                    out,
                    "{name}{} {}",
                    labels(point.attributes(), None),
                    point.value().text()
                );
            }
        }
        MetricData::Sum(sum) => {
            // Prometheus counters end in `_total`; an up-down sum is a gauge.
            let (kind, name) = if sum.is_monotonic() {
                ("counter", format!("{name}_total"))
            } else {
                ("gauge", name.to_owned())
            };
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for point in sum.data_points() {
                let _ = writeln!(
                    out,
                    "{name}{} {}",
                    labels(point.attributes(), None),
                    point.value().text()
                );
            }
        }
        MetricData::Histogram(histogram) => {
            let _ = writeln!(out, "# TYPE {name} histogram");
            for point in histogram.data_points() {
                let mut cumulative = 0;
                let bounds: Vec<f64> = point.bounds().collect();
                for (index, count) in point.bucket_counts().enumerate() {
                    cumulative += count;
                    let le = bounds
                        .get(index)
                        .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {cumulative}",
                        labels(point.attributes(), Some(("le", &le)))
                    );
                }
                let plain = labels(point.attributes(), None);
                let _ = writeln!(out, "{name}_sum{plain} {}", point.sum().text());
                let _ = writeln!(out, "{name}_count{plain} {}", point.count());
            }
        }
        // No instrument of ours aggregates exponentially.
        MetricData::ExponentialHistogram(_) => {}
    }
}

fn render(metrics: &ResourceMetrics) -> String {
    // By name, so the page reads the same from one scrape to the next.
    let mut by_name = BTreeMap::new();
    for scope in metrics.scope_metrics() {
        for metric in scope.metrics() {
            by_name.insert(prometheus_name(metric.name()), metric);
        }
    }
    let mut out = String::new();
    for (name, metric) in by_name {
        match metric.data() {
            AggregatedMetrics::F64(data) => {
                render_data(&mut out, &name, metric.description(), data)
            }
            AggregatedMetrics::U64(data) => {
                render_data(&mut out, &name, metric.description(), data)
            }
            AggregatedMetrics::I64(data) => {
                render_data(&mut out, &name, metric.description(), data)
            }
        }
    }
    out
}

/// The largest request head the endpoint reads; a scrape's is a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `listener` until `shutdown`: HTTP/1.1, one request per connection.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    let scrape = scrape();
    loop {
        let (mut stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "metrics endpoint cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            let Ok(Some(head)) =
                tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await
            else {
                return;
            };
            let (status, body) =
                if head.starts_with("GET /metrics ") || head.starts_with("GET /metrics?") {
                    ("200 OK", scrape.render())
                } else {
                    (
                        "404 Not Found",
                        "only GET /metrics is served here\n".to_owned(),
                    )
                };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// The request head (up to the blank line), or `None` for a connection that sends none.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buffer = [0; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).await.ok()?;
        if read == 0 || head.len() + read > MAX_REQUEST {
            return None;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8(head).ok()
}

/// Binds `addr` and serves metrics there in the background (a service's `metrics_addr`).
pub async fn spawn(addr: SocketAddr, shutdown: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "serving metrics on GET /metrics");
    tokio::spawn(serve(listener, shutdown));
    Ok(bound)
}

/// A store or broker this process depends on, as the `dependency` label spells it.
#[derive(Debug, Clone, Copy)]
pub enum Dependency {
    Cassandra,
    Nats,
    Redis,
}

impl Dependency {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Cassandra => "cassandra",
            Self::Nats => "nats",
            Self::Redis => "redis",
        }
    }
}

/// Counts one failed request to `dependency` (`dependency.errors`): the figure to alert on
/// before callers see `UNAVAILABLE`.
pub fn dependency_error(dependency: Dependency) {
    static COUNTER: OnceLock<Counter<u64>> = OnceLock::new();
    COUNTER
        .get_or_init(|| {
            opentelemetry::global::meter("platform")
                .u64_counter("dependency.errors")
                .with_description("Failed requests to a store or broker, by dependency")
                .build()
        })
        .add(1, &[KeyValue::new("dependency", dependency.as_str())]);
}

/// The instruments of the server skeleton, created once per process.
pub(crate) struct RpcInstruments {
    pub requests: Counter<u64>,
    pub duration: Histogram<f64>,
    pub shed: Counter<u64>,
}

/// Latency bucket bounds in seconds: 0.5 ms to 10 s.
const LATENCY_BOUNDS: [f64; 16] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

pub(crate) fn rpc() -> &'static RpcInstruments {
    static INSTRUMENTS: OnceLock<RpcInstruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter("platform");
        RpcInstruments {
            requests: meter
                .u64_counter("rpc.server.requests")
                .with_description("Requests answered, by method and gRPC status code")
                .build(),
            duration: meter
                .f64_histogram("rpc.server.duration.seconds")
                .with_description("Time to answer a request, by method")
                .with_unit("s")
                .with_boundaries(LATENCY_BOUNDS.to_vec())
                .build(),
            shed: meter
                .u64_counter("rpc.server.shed")
                .with_description(
                    "Requests refused at once with RESOURCE_EXHAUSTED at the concurrency limit",
                )
                .build(),
        }
    })
}

#[cfg(test)]
mod tests {
    use opentelemetry::metrics::MeterProvider;
    use opentelemetry_sdk::metrics::SdkMeterProvider;

    use super::*;

    #[test]
    fn counters_gauges_and_histograms_render_as_prometheus_text() {
        let scrape = Scrape::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(scrape.clone())
            .build();
        let meter = provider.meter("test");
        let counter = meter
            .u64_counter("orders.placed")
            .with_description("Orders")
            .build();
        counter.add(3, &[KeyValue::new("rpc.method", "Place\"Order")]);
        let histogram = meter
            .f64_histogram("latency.seconds")
            .with_boundaries(vec![0.1, 1.0])
            .build();
        histogram.record(0.05, &[]);
        histogram.record(0.5, &[]);
        histogram.record(5.0, &[]);
        let _gauge = meter
            .i64_observable_gauge("backlog")
            .with_callback(|observer| observer.observe(-2, &[]))
            .build();

        let text = scrape.render();
        assert!(
            text.contains("# TYPE orders_placed_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("orders_placed_total{rpc_method=\"Place\\\"Order\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("latency_seconds_bucket{le=\"0.1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("latency_seconds_bucket{le=\"1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("latency_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("latency_seconds_count 3\n"), "{text}");
        assert!(text.contains("latency_seconds_sum 5.55\n"), "{text}");
        assert!(
            text.contains("# TYPE backlog gauge\nbacklog -2\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_endpoint_answers_get_metrics_and_nothing_else() -> anyhow::Result<()> {
        let shutdown = CancellationToken::new();
        let addr = spawn(SocketAddr::from(([127, 0, 0, 1], 0)), shutdown.clone()).await?;
        let ask = |request: &'static str| async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            stream.write_all(request.as_bytes()).await?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await?;
            Ok::<_, anyhow::Error>(answer)
        };
        let answer = ask("GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await?;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains("content-type: text/plain; version=0.0.4"),
            "{answer}"
        );
        let answer = ask("GET /secrets HTTP/1.1\r\n\r\n").await?;
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
        shutdown.cancel();
        Ok(())
    }
}

//! Tracing for every service: structured logs on stderr, spans and metrics exported over OTLP
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (spans alone with `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! as `infra/up` points them at Jaeger), metrics also served on `GET /metrics` (`crate::metrics`),
//! and the W3C trace context carried in gRPC metadata and NATS headers so one trace follows an
//! order from the write region through the outbox and the relay to every read region. Spans go
//! through a batch exporter with a bounded queue: a collector that is slow or down costs the
//! request path nothing but dropped spans.
//!
//! A tracer provider is installed even without an exporter: spans still get real trace ids,
//! which the write region stamps into each event's headers for the relay to continue.

use std::collections::HashMap;

use opentelemetry::{
    Context,
    propagation::{Extractor, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_sdk::{
    Resource, metrics::SdkMeterProvider, propagation::TraceContextPropagator,
    trace::SdkTracerProvider,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the otlp exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("cannot install the tracing subscriber: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// Flushes and shuts the exporters down when dropped (at the end of `main`).
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    meters: SdkMeterProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("telemetry shutdown failed: {error}");
        }
        if let Err(error) = self.meters.shutdown() {
            eprintln!("metrics shutdown failed: {error}");
        }
    }
}

/// Installs the global subscriber for a service binary. `RUST_LOG` filters (default `info`);
/// `LOG_FORMAT=json` switches to JSON lines.
pub fn init(service_name: &str) -> Result<TelemetryGuard, TelemetryError> {
    let provider = tracer_provider(service_name)?;
    let meters = meter_provider(service_name)?;
    let tracer = provider.tracer(service_name.to_owned());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|format| format == "json");
    // Colour only for a person at a terminal; log files stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_opentelemetry::layer().with_tracer(tracer));
    if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init()?;
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .try_init()?;
    }
    Ok(TelemetryGuard { provider, meters })
}

/// The global meter provider; instruments created from `opentelemetry::global::meter` are
/// exported every minute (`OTEL_METRIC_EXPORT_INTERVAL`) when an OTLP endpoint is set.
fn meter_provider(service_name: &str) -> Result<SdkMeterProvider, TelemetryError> {
    let resource = Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    // Always readable on the service's metrics endpoint (`crate::metrics`).
    let mut builder = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(crate::metrics::scrape());
    if otlp_configured("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .build()?;
        builder = builder.with_periodic_exporter(exporter);
    }
    let provider = builder.build();
    opentelemetry::global::set_meter_provider(provider.clone());
    Ok(provider)
}

/// Whether spans (or metrics) go anywhere: an endpoint for all signals, or for this one (a
/// trace viewer such as Jaeger takes spans only).
fn otlp_configured(signal_endpoint: &str) -> bool {
    std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || std::env::var_os(signal_endpoint).is_some()
}

fn tracer_provider(service_name: &str) -> Result<SdkTracerProvider, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if otlp_configured("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(provider)
}

/// An error followed by its causes, `error: cause: inner cause`, the way the binary prints
/// them; logs use it so a cause is never dropped.
pub struct Causes<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// The W3C trace context (`traceparent`, `tracestate`) of the current span, as header pairs.
pub fn current_trace_context() -> HashMap<String, String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut carrier);
    carrier
}

/// Makes `span` a child of the remote context found in `carrier` (gRPC metadata, NATS headers
/// or an event's metadata map). A carrier without a valid context leaves the span a root.
pub fn continue_trace(span: &tracing::Span, carrier: &dyn Extractor) {
    let parent: Context = TraceContextPropagator::new().extract(carrier);
    // Only fails when the span is disabled by the filter; then there is nothing to link.
    let _ = span.set_parent(parent);
}

/// Reads a trace context from NATS headers.
pub struct NatsHeaderExtractor<'a>(pub &'a async_nats::HeaderMap);

impl Extractor for NatsHeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// Reads a trace context from HTTP/2 request headers (gRPC metadata).
pub struct HttpHeaderExtractor<'a>(pub &'a tonic::codegen::http::HeaderMap);

impl Extractor for HttpHeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

/// The span of one incoming gRPC request, continuing the caller's trace when its headers carry
/// one (for `tonic::transport::Server::trace_fn`). Its `trace_id` field puts the trace id in
/// every log line written while the request is served, so a log line can be found from a trace.
pub fn grpc_request_span(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!(
        "grpc.request",
        path = %request.uri().path(),
        trace_id = tracing::field::Empty
    );
    continue_trace(&span, &HttpHeaderExtractor(request.headers()));
    let trace_id = span.context().span().span_context().trace_id();
    span.record("trace_id", tracing::field::display(trace_id));
    span
}

//! Beside the flow, metrics: what the stages count, exported as OpenTelemetry metrics (over
//! OTLP when an endpoint is configured, see `platform::telemetry`) and logged while they move.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry::KeyValue;
use platform::names::Aggregate;
use tokio_util::sync::CancellationToken;

use crate::Pipeline;

/// What the relay counts, each one exported metric. Declared in `ALL` (and `snapshot`) order:
/// a count's discriminant is its index.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Count {
    Processed,
    Published,
    Duplicates,
    DeadLettered,
    Retries,
    Recovered,
}

impl Count {
    const ALL: [Self; 6] = [
        Self::Processed,
        Self::Published,
        Self::Duplicates,
        Self::DeadLettered,
        Self::Retries,
        Self::Recovered,
    ];

    /// The metric's name and description.
    const fn metric(self) -> (&'static str, &'static str) {
        match self {
            Self::Processed => (
                "relay.raw_events.processed",
                "Raw events consumed and acknowledged",
            ),
            Self::Published => (
                "relay.enriched_events.published",
                "Enriched events published",
            ),
            Self::Duplicates => (
                "relay.raw_events.duplicates",
                "Raw events already applied, skipped",
            ),
            Self::DeadLettered => (
                "relay.raw_events.dead_lettered",
                "Raw events sent to the dead-letter stream",
            ),
            Self::Retries => (
                "relay.loop.retries",
                "Consume loop failures retried with backoff",
            ),
            Self::Recovered => (
                "relay.journal.recovered",
                "Journal entries finished after a crash",
            ),
        }
    }
}

/// The counts since start, one per `Count`, and the gauges beside them.
#[derive(Debug, Default)]
pub struct Counters {
    counts: [AtomicU64; Count::ALL.len()],
    /// Raw events stored but not yet enriched, per raw stream (accounts, market), as last seen.
    backlog: [AtomicU64; 2],
    /// 1 while this process holds the lease and runs the pipeline.
    pub(crate) leading: AtomicU64,
}

/// The raw streams in `Counters::backlog` order.
const BACKLOG_STREAMS: [Aggregate; 2] = [Aggregate::Account, Aggregate::Instrument];

impl Counters {
    pub(crate) fn add(&self, count: Count, amount: u64) {
        self.counts[count as usize].fetch_add(amount, Ordering::Relaxed);
    }

    fn get(&self, count: Count) -> u64 {
        self.counts[count as usize].load(Ordering::Relaxed)
    }

    /// Processed, published, duplicates, dead-lettered, retries, recovered.
    pub fn snapshot(&self) -> [u64; 6] {
        Count::ALL.map(|count| self.get(count))
    }
}

/// Registers one observable counter per `Count` and the gauges, read whenever the meter
/// provider collects; once per process, however many times it takes the lease.
pub(crate) fn export(counters: &Arc<Counters>) {
    let meter = opentelemetry::global::meter("relay");
    for count in Count::ALL {
        let (name, description) = count.metric();
        let counters = counters.clone();
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |observer| observer.observe(counters.get(count), &[]))
            .build();
    }
    let gauges = counters.clone();
    meter
        .u64_observable_gauge("relay.backlog.events")
        .with_description("Raw events stored on a raw stream and not yet enriched (consumer lag)")
        .with_callback(move |observer| {
            for (aggregate, backlog) in BACKLOG_STREAMS.iter().zip(&gauges.backlog) {
                observer.observe(
                    backlog.load(Ordering::Relaxed),
                    &[KeyValue::new("aggregate", aggregate.as_str())],
                );
            }
        })
        .build();
    let gauges = counters.clone();
    meter
        .u64_observable_gauge("relay.lease.held")
        .with_description("1 while this process holds the lease and runs the pipeline")
        .with_callback(move |observer| {
            observer.observe(gauges.leading.load(Ordering::Relaxed), &[])
        })
        .build();
}

/// Every `interval`, how far each raw stream runs ahead of the pipeline's checkpoint.
pub(crate) async fn watch_backlog(
    pipeline: Arc<Pipeline>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        for (aggregate, backlog) in BACKLOG_STREAMS.iter().zip(&pipeline.counters.backlog) {
            let stream = pipeline.config.raw_stream(*aggregate);
            let Ok(mut handle) = pipeline.jetstream.get_stream(stream).await else {
                continue;
            };
            let Ok(info) = handle.info().await else {
                continue;
            };
            let Ok(checkpoint) = pipeline.lock_state().map(|state| state.checkpoint(stream)) else {
                return;
            };
            backlog.store(
                info.state.last_sequence.saturating_sub(checkpoint),
                Ordering::Relaxed,
            );
        }
    }
}

/// Logs the counters every `interval` while they move.
pub(crate) async fn report(
    pipeline: Arc<Pipeline>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut last = [0; 6];
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let now = pipeline.counters.snapshot();
        if now != last {
            let count = |count: Count| now[count as usize];
            tracing::info!(
                processed = count(Count::Processed),
                published = count(Count::Published),
                duplicates = count(Count::Duplicates),
                dead_lettered = count(Count::DeadLettered),
                retries = count(Count::Retries),
                recovered = count(Count::Recovered),
                "relay progress"
            );
            last = now;
        }
    }
}

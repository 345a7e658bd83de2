//! Beside the flow, metrics: what the stages count, exported as OpenTelemetry metrics (over
//! OTLP when an endpoint is configured, see `platform::telemetry`) and logged while they move.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

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

/// The counts since start, one per `Count`.
#[derive(Debug, Default)]
pub struct Counters([AtomicU64; Count::ALL.len()]);

impl Counters {
    pub(crate) fn add(&self, count: Count, amount: u64) {
        self.0[count as usize].fetch_add(amount, Ordering::Relaxed);
    }

    fn get(&self, count: Count) -> u64 {
        self.0[count as usize].load(Ordering::Relaxed)
    }

    /// Processed, published, duplicates, dead-lettered, retries, recovered.
    pub fn snapshot(&self) -> [u64; 6] {
        Count::ALL.map(|count| self.get(count))
    }
}

/// Registers one observable counter per `Count`, read whenever the meter provider collects;
/// once per process, however many times it takes the lease.
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

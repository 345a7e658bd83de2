//! The transactional outbox: every committed event is published, after its commit, to the
//! hub's JetStream (`<prefix>.account.<id>` or `<prefix>.market.<symbol>`), with
//! `Nats-Msg-Id` = `event_id` and in per-aggregate order.
//!
//! Each aggregate belongs to one worker (by hash), which publishes from the aggregate's last
//! published version onwards, in order, and only once the hub acknowledged them clears the
//! aggregate's pending markers up to the last one published. The markers are the only record
//! of progress: a worker meeting an aggregate for the first time takes everything below its
//! lowest marker as published (see `store::outbox`), and otherwise remembers what it published.
//! A worker takes every aggregate waiting in its queue (up to `MAX_BATCH`) at once: their
//! events go out back to back and the acks are awaited together, so under load one fsync wait
//! on the hub serves many commits instead of one. The marker deletes of every worker's batches
//! go to one lingering group (see `group`) while the workers go on: it gathers them for
//! `CLEAR_LINGER` and sends them as a few unlogged batches, so at a steady rate one store
//! request clears the markers of many commits rather than one each, and the store's latency is
//! not on the way to the stream. A marker that lives those milliseconds longer costs nothing:
//! a sweep that meets it finds its events published and clears it again. Commands write a
//! marker before they commit, so a crash between commit and publish, or a NATS outage, leaves
//! markers that the periodic sweep finds; the worker then reloads the unpublished events from
//! the store. Republishing after a crash is harmless: JetStream drops a repeated `Nats-Msg-Id`
//! inside its duplicate window and every consumer checks versions.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_nats::{HeaderMap, jetstream};
use platform::{
    metrics::Dependency,
    names::{Aggregate, aggregate_subject},
};
use prost::Message;
use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use trading_proto::events::v1::RawEvent;

use crate::{
    group::Group,
    store::{AggregateKey, Clear, NewEvent, Store, StoreError},
};

/// A marker older than this, for a version that was never committed, is a lost race's leftover.
const STALE_MARKER_AGE: Duration = Duration::from_secs(120);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Aggregates a worker publishes in one go.
const MAX_BATCH: usize = 256;
/// How long published batches' marker deletes wait for others to share their store request.
const CLEAR_LINGER: Duration = Duration::from_millis(20);
/// Marker deletes (of one published batch each) in one store request, and such requests out at
/// once.
const CLEARS_PER_REQUEST: usize = 256;
const CLEAR_REQUESTS_IN_FLIGHT: usize = 2;
/// Published batches whose markers one worker may have waiting to be cleared while it
/// publishes on: past that, a slow store slows the worker instead of piling deletes up.
const BOOKKEEPING_IN_FLIGHT: usize = 32;

#[derive(Debug, Clone)]
pub struct OutboxConfig {
    pub subject_prefix: String,
    pub account_stream: String,
    pub market_stream: String,
    pub workers: usize,
    pub sweep_interval: Duration,
    pub duplicate_window: Duration,
}

impl OutboxConfig {
    fn subject(&self, key: &AggregateKey) -> String {
        aggregate_subject(&self.subject_prefix, key.kind, &key.id)
    }
}

enum Job {
    /// Events just committed, in version order.
    Committed(AggregateKey, Vec<NewEvent>),
    /// A sweep found markers up to `version`, the oldest written at `marked_at`.
    Pending {
        key: AggregateKey,
        version: u64,
        marked_at: SystemTime,
    },
}

impl Job {
    fn key(&self) -> &AggregateKey {
        match self {
            Self::Committed(key, _) | Self::Pending { key, .. } => key,
        }
    }
}

/// The handle commands use to report commits.
#[derive(Clone)]
pub struct Outbox {
    workers: Vec<mpsc::UnboundedSender<Job>>,
    backlog: Arc<Backlog>,
}

/// What the outbox holds unpublished, for its metrics.
#[derive(Default)]
struct Backlog {
    /// Committed events reported in-process and not yet published.
    events: AtomicI64,
    published: AtomicU64,
    /// Per worker, when the oldest event of the batch it is publishing committed (Unix
    /// milliseconds; 0: idle). A busy worker's batch holds its oldest work: what waits in its
    /// queue arrived later.
    oldest_ms: Vec<AtomicI64>,
}

impl Backlog {
    /// Age of the oldest unpublished event the workers hold, in seconds (0: none).
    fn oldest_age_seconds(&self) -> f64 {
        let oldest = self
            .oldest_ms
            .iter()
            .map(|at| at.load(Ordering::Relaxed))
            .filter(|&at| at > 0)
            .min();
        oldest.map_or(0.0, |at| {
            (unix_ms(SystemTime::now()).saturating_sub(at)).max(0) as f64 / 1_000.0
        })
    }

    /// Registers the outbox's instruments; they read this backlog whenever metrics are collected.
    fn export(self: &Arc<Self>) {
        let meter = opentelemetry::global::meter("write-region");
        let backlog = self.clone();
        meter
            .i64_observable_gauge("outbox.backlog.events")
            .with_description("Committed events not yet published to the raw streams")
            .with_callback(move |observer| {
                observer.observe(backlog.events.load(Ordering::Relaxed).max(0), &[]);
            })
            .build();
        let backlog = self.clone();
        meter
            .f64_observable_gauge("outbox.oldest_unpublished.age.seconds")
            .with_description("Age of the oldest committed event not yet published (0: none)")
            .with_unit("s")
            .with_callback(move |observer| observer.observe(backlog.oldest_age_seconds(), &[]))
            .build();
        let backlog = self.clone();
        meter
            .u64_observable_counter("outbox.events.published")
            .with_description("Events published to the raw streams and acknowledged")
            .with_callback(move |observer| {
                observer.observe(backlog.published.load(Ordering::Relaxed), &[]);
            })
            .build();
    }
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    })
}

impl Outbox {
    /// Starts the workers and the sweeper; they stop when `shutdown` is cancelled, after
    /// publishing what they already hold.
    pub fn start(
        config: OutboxConfig,
        store: Arc<Store>,
        client: async_nats::Client,
        shutdown: CancellationToken,
        tasks: &mut JoinSet<()>,
    ) -> Self {
        let config = Arc::new(config);
        let jetstream = jetstream::new(client);
        let count = config.workers.max(1);
        let backlog = Arc::new(Backlog {
            oldest_ms: (0..count).map(|_| AtomicI64::new(0)).collect(),
            ..Backlog::default()
        });
        backlog.export();
        let clears = Arc::new(clear_group(store.clone()));
        let mut workers = Vec::with_capacity(count);
        for index in 0..count {
            let (sender, receiver) = mpsc::unbounded_channel();
            workers.push(sender);
            let worker = Worker {
                config: config.clone(),
                store: store.clone(),
                jetstream: jetstream.clone(),
                published: HashMap::new(),
                queue: VecDeque::new(),
                queued: HashMap::new(),
                streams_ready: false,
                backlog: backlog.clone(),
                index,
                bookkeeping: Arc::new(Semaphore::new(BOOKKEEPING_IN_FLIGHT)),
                clears: clears.clone(),
            };
            tasks.spawn(worker.run(receiver, shutdown.clone()));
        }
        let outbox = Self { workers, backlog };
        tasks.spawn(outbox.clone().sweep(store, config.sweep_interval, shutdown));
        outbox
    }

    fn dispatch(&self, job: Job) {
        // The worker count fits usize, so the remainder does too.
        let index = job.key().stable_hash() % self.workers.len() as u64;
        let worker = &self.workers[index as usize];
        if worker.send(job).is_err() {
            // Only after shutdown; the marker stays and the next start publishes the events.
            tracing::warn!("outbox worker gone; events stay pending until the next start");
        }
    }

    /// Hands freshly committed events to their aggregate's worker.
    pub fn committed(&self, key: AggregateKey, events: Vec<NewEvent>) {
        self.backlog
            .events
            .fetch_add(events.len() as i64, Ordering::Relaxed);
        self.dispatch(Job::Committed(key, events));
    }

    /// Finds pending markers now and every `interval`, and hands them to the workers.
    async fn sweep(self, store: Arc<Store>, interval: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = shutdown.cancelled() => return,
            }
            match store.pending().await {
                Ok(markers) => {
                    let mut newest: HashMap<AggregateKey, (u64, SystemTime)> = HashMap::new();
                    for marker in markers {
                        let entry = newest
                            .entry(marker.key)
                            .or_insert((marker.version, marker.marked_at));
                        entry.0 = entry.0.max(marker.version);
                        entry.1 = entry.1.min(marker.marked_at);
                    }
                    if !newest.is_empty() {
                        tracing::debug!(aggregates = newest.len(), "outbox sweep found pending");
                    }
                    for (key, (version, marked_at)) in newest {
                        self.dispatch(Job::Pending {
                            key,
                            version,
                            marked_at,
                        });
                    }
                }
                Err(error) => tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "outbox sweep failed; retrying later"
                ),
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Creating a stream, publishing or awaiting an ack: each has its own error type.
    #[error("jetstream request failed")]
    JetStream(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("stored event is unreadable")]
    Corrupt(#[from] prost::DecodeError),
}

impl PublishError {
    fn jetstream(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::JetStream(Box::new(error))
    }
}

struct Worker {
    config: Arc<OutboxConfig>,
    store: Arc<Store>,
    jetstream: jetstream::Context,
    /// Last published version per aggregate, as far as this worker knows.
    published: HashMap<AggregateKey, u64>,
    /// Aggregates with work, in arrival order, each once.
    queue: VecDeque<AggregateKey>,
    queued: HashMap<AggregateKey, Queued>,
    streams_ready: bool,
    backlog: Arc<Backlog>,
    /// This worker's slot in `backlog.oldest_ms`.
    index: usize,
    /// Published batches whose markers this worker may have waiting to be cleared.
    bookkeeping: Arc<Semaphore>,
    clears: Arc<Group<Vec<Clear>, ()>>,
}

/// What a worker knows about an aggregate waiting in its queue.
#[derive(Default)]
struct Queued {
    /// Committed events reported in-process (saves a store read when contiguous).
    events: Vec<NewEvent>,
    /// Highest version a sweep saw marked, and when the oldest of those markers was written.
    marker: Option<(u64, SystemTime)>,
}

impl Worker {
    async fn run(mut self, mut jobs: mpsc::UnboundedReceiver<Job>, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        loop {
            // Take everything already waiting so commits to one aggregate are published as one
            // run; then wait for more only when idle.
            while let Ok(job) = jobs.try_recv() {
                self.enqueue(job);
            }
            let Some(key) = self.queue.pop_front() else {
                tokio::select! {
                    job = jobs.recv() => match job {
                        Some(job) => { self.enqueue(job); continue; }
                        None => return,
                    },
                    () = shutdown.cancelled() => return,
                }
            };
            let mut batch = vec![(key.clone(), self.queued.remove(&key).unwrap_or_default())];
            while batch.len() < MAX_BATCH
                && let Some(key) = self.queue.pop_front()
            {
                let queued = self.queued.remove(&key).unwrap_or_default();
                batch.push((key, queued));
            }
            self.backlog.oldest_ms[self.index].store(oldest_ms(&batch), Ordering::Relaxed);
            match self.publish(&batch).await {
                Ok(()) => {
                    backoff = Duration::from_millis(50);
                    self.backlog.oldest_ms[self.index].store(0, Ordering::Relaxed);
                    let reported: usize = batch.iter().map(|(_, queued)| queued.events.len()).sum();
                    self.backlog
                        .events
                        .fetch_sub(reported as i64, Ordering::Relaxed);
                }
                Err(error) => {
                    platform::metrics::dependency_error(match error {
                        PublishError::Store(_) => Dependency::Cassandra,
                        PublishError::JetStream(_) | PublishError::Corrupt(_) => Dependency::Nats,
                    });
                    tracing::warn!(
                        aggregates = batch.len(),
                        error = &error as &dyn std::error::Error,
                        retry_in_ms = backoff.as_millis() as u64,
                        "outbox publish failed"
                    );
                    // The whole batch again, in its order: what did go out is republished,
                    // which JetStream's duplicate window and every consumer's version check
                    // make harmless.
                    // Nothing new was taken meanwhile (jobs are read only at the top of the loop),
                    // so the batch goes back as it was.
                    for (key, queued) in batch.into_iter().rev() {
                        self.queued.insert(key.clone(), queued);
                        self.queue.push_front(key);
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn enqueue(&mut self, job: Job) {
        let key = job.key().clone();
        let entry = match self.queued.get_mut(&key) {
            Some(entry) => entry,
            None => {
                self.queue.push_back(key.clone());
                self.queued.entry(key).or_default()
            }
        };
        match job {
            Job::Committed(_, events) => entry.events.extend(events),
            Job::Pending {
                version, marked_at, ..
            } => {
                let (newest, oldest) = entry.marker.get_or_insert((version, marked_at));
                *newest = (*newest).max(version);
                *oldest = (*oldest).min(marked_at);
            }
        }
    }

    async fn ensure_streams(&mut self) -> Result<(), PublishError> {
        if self.streams_ready {
            return Ok(());
        }
        let prefix = &self.config.subject_prefix;
        for (name, aggregate) in [
            (&self.config.account_stream, Aggregate::Account),
            (&self.config.market_stream, Aggregate::Instrument),
        ] {
            let subject = aggregate_subject(prefix, aggregate, ">");
            self.jetstream
                .get_or_create_stream(jetstream::stream::Config {
                    name: name.clone(),
                    subjects: vec![subject],
                    storage: jetstream::stream::StorageType::File,
                    duplicate_window: self.config.duplicate_window,
                    ..Default::default()
                })
                .await
                .map_err(PublishError::jetstream)?;
        }
        self.streams_ready = true;
        Ok(())
    }

    /// Publishes every unpublished event of each aggregate of `batch`, each in version order,
    /// then clears the markers of all of them.
    async fn publish(&mut self, batch: &[(AggregateKey, Queued)]) -> Result<(), PublishError> {
        self.ensure_streams().await?;
        let plans =
            futures::future::try_join_all(batch.iter().map(|(key, queued)| self.plan(key, queued)))
                .await?;
        let mut acks = Vec::new();
        // One span per event, continuing the trace of the command that committed it (its
        // context travels in the event's metadata), ended once the event is published and
        // recorded: the outbox's hop in the order's trace.
        let mut spans = Vec::new();
        let mut lasts = Vec::with_capacity(plans.len());
        for (key, plan) in batch.iter().map(|(key, _)| key).zip(&plans) {
            let mut last = plan.published;
            for payload in &plan.payloads {
                let event = RawEvent::decode(payload.as_slice())?;
                let envelope = event.envelope.unwrap_or_default();
                let span = tracing::info_span!(
                    "outbox.publish",
                    aggregate = %key.id,
                    version = envelope.version,
                    event_type = %envelope.event_type
                );
                platform::telemetry::continue_trace(&span, &envelope.metadata);
                spans.push(span);
                let mut headers = HeaderMap::new();
                headers.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    envelope.event_id.as_str(),
                );
                headers.insert("event-type", envelope.event_type.as_str());
                for (name, value) in &envelope.metadata {
                    if name == "traceparent" || name == "tracestate" {
                        headers.insert(name.as_str(), value.as_str());
                    }
                }
                // Publishes go out in order on one connection, so the stream stores each
                // aggregate's events in order; the acks are awaited together below.
                let ack = self
                    .jetstream
                    .publish_with_headers(self.config.subject(key), headers, payload.clone().into())
                    .await
                    .map_err(PublishError::jetstream)?;
                acks.push(ack);
                last = envelope.version;
            }
            lasts.push(last);
        }
        for ack in acks {
            ack.await.map_err(PublishError::jetstream)?;
        }
        let cleared: Vec<Clear> = batch
            .iter()
            .zip(&plans)
            .zip(&lasts)
            .flat_map(|(((key, queued), plan), &last)| clears(key, queued, plan.published, last))
            .collect();
        self.clear_markers(cleared).await;
        let published: usize = plans.iter().map(|plan| plan.payloads.len()).sum();
        self.backlog
            .published
            .fetch_add(published as u64, Ordering::Relaxed);
        for ((key, _), last) in batch.iter().zip(lasts) {
            self.published.insert(key.clone(), last);
        }
        drop(spans);
        Ok(())
    }

    /// Clears a published batch's markers while the worker goes on: its events are on the
    /// stream, and this worker knows their versions in memory. At most
    /// `BOOKKEEPING_IN_FLIGHT` batches wait to be cleared at once (see `clear_group`).
    async fn clear_markers(&self, cleared: Vec<Clear>) {
        if cleared.is_empty() {
            return;
        }
        let Ok(slot) = self.bookkeeping.clone().acquire_owned().await else {
            return;
        };
        let clears = self.clears.clone();
        tokio::spawn(async move {
            // A failure is reported by the group, once per request.
            let _ = clears.call(cleared).await;
            drop(slot);
        });
    }

    /// What to publish of `key`: the events reported in-process when they follow the last
    /// published version without a hole, else the unpublished events read from the store.
    async fn plan(&self, key: &AggregateKey, queued: &Queued) -> Result<Plan, PublishError> {
        let published = match self.published.get(key) {
            Some(version) => *version,
            None => self.first_published(key, queued).await?,
        };
        let hinted: Vec<&NewEvent> = queued
            .events
            .iter()
            .filter(|event| event.version > published)
            .collect();
        let contiguous = hinted
            .iter()
            .zip(published + 1..)
            .all(|(event, expected)| event.version == expected);
        let payloads = if contiguous && queued.marker.is_none() {
            hinted.iter().map(|event| event.payload.clone()).collect()
        } else {
            let stored = self.store.load(key, false).await?;
            self.store
                .load_events(key, published, stored.version)
                .await?
        };
        Ok(Plan {
            published,
            payloads,
        })
    }

    /// How far `key` is published, for an aggregate this worker has not published yet. Markers
    /// are written before each commit and cleared only once their version is on the stream, so
    /// everything below the lowest marker is published, and with no marker left every
    /// committed event is, including the ones `queued` reports.
    async fn first_published(
        &self,
        key: &AggregateKey,
        queued: &Queued,
    ) -> Result<u64, PublishError> {
        if let Some(first) = self.store.first_pending(key).await? {
            return Ok(first.saturating_sub(1));
        }
        Ok(
            match queued.events.iter().map(|event| event.version).max() {
                Some(version) => version,
                None => self.store.load(key, false).await?.version,
            },
        )
    }
}

/// The group that deletes published markers for every worker. A delete that fails only leaves
/// markers behind; the sweep finds them and their worker clears them again, publishing nothing
/// twice.
fn clear_group(store: Arc<Store>) -> Group<Vec<Clear>, ()> {
    Group::lingering(
        CLEARS_PER_REQUEST,
        CLEAR_REQUESTS_IN_FLIGHT,
        CLEAR_LINGER,
        move |batches: Vec<Vec<Clear>>| {
            let store = store.clone();
            async move {
                let answers = vec![(); batches.len()];
                let cleared = merged(batches.into_iter().flatten());
                if let Err(error) = store.clear_pending(&cleared).await {
                    platform::metrics::dependency_error(Dependency::Cassandra);
                    tracing::warn!(
                        aggregates = cleared.len(),
                        error = &error as &dyn std::error::Error,
                        "outbox markers not cleared; the sweep finds them and they are cleared \
                         again"
                    );
                }
                Ok(answers)
            }
        },
    )
}

/// The deletes of several batches, an aggregate's published markers once, up to the highest
/// version (one worker publishes each aggregate, in order, so the highest is the latest).
fn merged(clears: impl Iterator<Item = Clear>) -> Vec<Clear> {
    let mut published: HashMap<AggregateKey, u64> = HashMap::new();
    let mut merged = Vec::new();
    for clear in clears {
        match clear {
            Clear::Published(key, version) => {
                let highest = published.entry(key).or_insert(version);
                *highest = (*highest).max(version);
            }
            stale @ Clear::Stale { .. } => merged.push(stale),
        }
    }
    merged.extend(
        published
            .into_iter()
            .map(|(key, version)| Clear::Published(key, version)),
    );
    merged
}

/// Which of `key`'s markers go once the batch took it from `published` to `last`: those up to
/// `last` when the batch published something of it or a sweep found its markers, and beyond it
/// those a sweep found old enough to be a lost race's leftovers (their commands never
/// committed, so there is nothing to publish for them). The leftovers go only as far as they
/// were written long ago: a command in flight may have just written a marker at one of their
/// versions, and that marker must outlive a crash.
fn clears(key: &AggregateKey, queued: &Queued, published: u64, last: u64) -> Vec<Clear> {
    let mut clears = Vec::new();
    if last > published || queued.marker.is_some() {
        clears.push(Clear::Published(key.clone(), last));
    }
    if let Some((marked, oldest)) = queued.marker
        && marked > last
        && oldest.elapsed().unwrap_or_default() > STALE_MARKER_AGE
    {
        clears.push(Clear::Stale {
            key: key.clone(),
            version: marked,
            written_before: SystemTime::now()
                .checked_sub(STALE_MARKER_AGE / 2)
                .unwrap_or(UNIX_EPOCH),
        });
    }
    clears
}

/// When the oldest work of `batch` was committed (or its marker written), in Unix milliseconds.
fn oldest_ms(batch: &[(AggregateKey, Queued)]) -> i64 {
    batch
        .iter()
        .flat_map(|(_, queued)| {
            let committed = queued.events.iter().map(|event| event.occurred_at);
            committed.chain(queued.marker.map(|(_, marked_at)| marked_at))
        })
        .min()
        .map_or(0, unix_ms)
}

/// One aggregate's share of a batch.
struct Plan {
    /// Its last published version before the batch.
    published: u64,
    /// Its unpublished events, in version order.
    payloads: Vec<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn swept(version: u64, age: Duration) -> Queued {
        Queued {
            events: Vec::new(),
            marker: Some((version, SystemTime::now() - age)),
        }
    }

    fn versions(clears: &[Clear]) -> Vec<(&'static str, u64)> {
        clears
            .iter()
            .map(|clear| match clear {
                Clear::Published(_, version) => ("published", *version),
                Clear::Stale { version, .. } => ("stale", *version),
            })
            .collect()
    }

    #[test]
    fn markers_go_up_to_what_was_published_and_old_leftovers_beyond_it() {
        let key = AggregateKey::account("a");
        let quiet = Queued::default();
        assert!(clears(&key, &quiet, 4, 4).is_empty(), "nothing happened");
        assert_eq!(versions(&clears(&key, &quiet, 4, 6)), [("published", 6)]);
        // A sweep's markers beyond what is committed: a command in flight while young, a lost
        // race's leftovers once old.
        let young = swept(8, Duration::from_secs(5));
        assert_eq!(versions(&clears(&key, &young, 6, 6)), [("published", 6)]);
        let old = swept(8, STALE_MARKER_AGE * 2);
        assert_eq!(
            versions(&clears(&key, &old, 6, 6)),
            [("published", 6), ("stale", 8)]
        );
        let Clear::Stale { written_before, .. } = &clears(&key, &old, 6, 6)[1] else {
            unreachable!("checked above");
        };
        assert!(
            written_before.elapsed().unwrap_or_default() >= STALE_MARKER_AGE / 2,
            "a leftover delete must spare markers written in the last minute"
        );
    }

    #[test]
    fn batches_cleared_together_delete_each_aggregate_once_up_to_its_latest() {
        let (a, b) = (AggregateKey::account("a"), AggregateKey::account("b"));
        let old = swept(9, STALE_MARKER_AGE * 2);
        let batches = [
            clears(&a, &Queued::default(), 0, 3),
            clears(&b, &Queued::default(), 0, 1),
            clears(&a, &old, 3, 5),
        ];
        let mut merged = merged(batches.into_iter().flatten());
        merged.sort_by_key(|clear| match clear {
            Clear::Published(key, _) => (key.id.clone(), 0),
            Clear::Stale { key, .. } => (key.id.clone(), 1),
        });
        assert_eq!(
            versions(&merged),
            [("published", 5), ("stale", 9), ("published", 1)]
        );
    }
}

//! Projection: the region's leaf mirror of the hub's enriched stream, consumed in stream order
//! by a durable pull consumer and applied to the Redis views one Lua script per event.
//!
//! Messages are acknowledged only after their script succeeded. An event at or below its
//! aggregate's cursor is acknowledged and skipped; one beyond the successor (its predecessor
//! has not arrived) is not applied but negatively acknowledged with a delay, so it comes back
//! after the predecessor. The stream sequence recorded with every apply tells a rebuild how
//! far a generation has got.
//!
//! An acknowledged event is only as durable as Redis (`appendfsync everysec` loses the last
//! second on a crash; an older RDB loses more), and the durable consumer never delivers it
//! again, so its aggregate's next event would be a gap forever. Two repairs keep it whole:
//! every second the consumer's ack floor is recorded in the served generation as applied, and
//! whenever the projector meets a Redis process it has not caught up with (at start, after a
//! Redis restart) it replays the mirror from that record through what the consumer delivered;
//! and an aggregate gapped longer than `gap_repair_ms` has its events re-read from the mirror
//! (an ordered consumer filtered by its subject). Both apply through the same script, which
//! skips what is there.
//!
//! Rebuild replays the mirror from sequence 1 with an ordered consumer into a fresh generation
//! and switches the served pointer only once it has seen everything the live generation
//! applied. The live projector runs the same rebuild when Redis comes back empty.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{self, pull},
    context::CreateStreamError,
    stream,
};
use futures::{FutureExt, StreamExt};
use platform::names::Aggregate;
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use trading_proto::events::v1::EnrichedEvent;

use crate::{
    announce::Announcer,
    config::Config,
    model::Book,
    now_ms,
    prepare::{self, PreparedEvent},
    views::{ApplyOutcome, SwitchOutcome, Target, ViewError, Views},
};
use platform::{metrics::Dependency, telemetry::Causes};

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("cannot connect to nats")]
    Connect(#[from] async_nats::ConnectError),
    #[error("cannot create the mirror stream")]
    Stream(#[from] CreateStreamError),
    #[error("cannot read the mirror stream's state")]
    StreamInfo(#[from] stream::InfoError),
    #[error("cannot create the consumer")]
    Consumer(#[from] stream::ConsumerError),
    #[error("cannot start reading the mirror")]
    Messages(#[from] consumer::StreamError),
    #[error("cannot read the mirror")]
    Read(#[from] pull::OrderedError),
    #[error("a mirror message has no jetstream metadata")]
    Metadata(#[source] async_nats::Error),
    #[error("cannot read the consumer's state")]
    ConsumerInfo(#[from] jetstream::context::ConsumerInfoError),
    #[error("the mirror consumer ended")]
    ConsumerEnded,
    #[error(transparent)]
    Views(#[from] ViewError),
    #[error("redis lost the generation being rebuilt")]
    GenerationLost,
    #[error("stopped by shutdown")]
    Stopped,
}

/// How fresh the region's view is, fed by the projector and the mirror monitor.
#[derive(Debug)]
pub struct Freshness {
    started_ms: i64,
    /// When the mirror last had contact with the hub (0: never observed).
    last_contact_ms: AtomicI64,
    /// `occurred_at` of the last event applied.
    last_applied_ms: AtomicI64,
    /// Messages the consumer still had to deliver after the last batch.
    pending: AtomicU64,
    /// Aggregates re-read from the mirror after a gap outlived `gap_repair_ms`.
    gaps_repaired: AtomicU64,
}

impl Default for Freshness {
    fn default() -> Self {
        Self {
            started_ms: now_ms(),
            last_contact_ms: AtomicI64::new(0),
            last_applied_ms: AtomicI64::new(0),
            pending: AtomicU64::new(0),
            gaps_repaired: AtomicU64::new(0),
        }
    }
}

impl Freshness {
    /// Milliseconds since the region last heard from the write region: the time since the
    /// leaf's mirror last had contact with the hub (it grows while the link is cut), and,
    /// while the consumer still has a backlog, at least the age of the last applied event
    /// (the view lags what the mirror already holds).
    pub fn staleness_ms(&self) -> u64 {
        let now = now_ms();
        let contact = match self.last_contact_ms.load(Ordering::Relaxed) {
            0 => self.started_ms,
            at => at,
        };
        let mut staleness = now.saturating_sub(contact);
        if self.pending.load(Ordering::Relaxed) > 0 {
            let applied = self.last_applied_ms.load(Ordering::Relaxed);
            if applied > 0 {
                staleness = staleness.max(now.saturating_sub(applied));
            }
        }
        u64::try_from(staleness).unwrap_or(0)
    }

    /// Registers the projection's instruments; they read this whenever metrics are collected.
    pub fn export(self: &Arc<Self>) {
        let meter = opentelemetry::global::meter("read-region");
        let freshness = self.clone();
        meter
            .u64_observable_gauge("projection.pending")
            .with_description("Mirror messages the region's consumer has yet to deliver")
            .with_callback(move |observer| {
                observer.observe(freshness.pending.load(Ordering::Relaxed), &[]);
            })
            .build();
        let freshness = self.clone();
        meter
            .f64_observable_gauge("projection.newest_applied.age.seconds")
            .with_description("Age of the newest event applied to the region's views")
            .with_unit("s")
            .with_callback(move |observer| {
                let applied = freshness.last_applied_ms.load(Ordering::Relaxed);
                if applied > 0 {
                    observer.observe(now_ms().saturating_sub(applied) as f64 / 1_000.0, &[]);
                }
            })
            .build();
        let freshness = self.clone();
        meter
            .f64_observable_gauge("projection.staleness.seconds")
            .with_description("How long since the region last heard from the write region")
            .with_unit("s")
            .with_callback(move |observer| {
                observer.observe(freshness.staleness_ms() as f64 / 1_000.0, &[]);
            })
            .build();
        let freshness = self.clone();
        meter
            .u64_observable_counter("projection.gaps.repaired")
            .with_description("Aggregates re-read from the mirror after a gap outlived its bound")
            .with_callback(move |observer| {
                observer.observe(freshness.gaps_repaired.load(Ordering::Relaxed), &[]);
            })
            .build();
    }

    fn record_contact(&self, ago: Duration) {
        let ago = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
        self.last_contact_ms
            .store(now_ms().saturating_sub(ago), Ordering::Relaxed);
    }
}

/// Connects to the region's leaf server and its JetStream domain, with `options` carrying the
/// region's credentials.
pub async fn connect(
    config: &Config,
    options: async_nats::ConnectOptions,
) -> Result<jetstream::Context, ProjectError> {
    let client = options
        .name(format!("read-region-{}", config.region))
        .retry_on_initial_connect()
        .connect(&config.nats_url)
        .await?;
    Ok(jetstream::with_domain(client, &config.js_domain))
}

/// Creates (idempotently) the leaf-local mirror of the hub's enriched stream.
pub async fn ensure_mirror(
    jetstream: &jetstream::Context,
    config: &Config,
) -> Result<stream::Stream, ProjectError> {
    jetstream
        .get_or_create_stream(stream::Config {
            name: config.mirror_stream.clone(),
            mirror: Some(stream::Source {
                name: config.hub_stream.clone(),
                external: Some(stream::External {
                    api_prefix: config.hub_api_prefix.clone(),
                    delivery_prefix: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map_err(ProjectError::from)
}

/// The durable consumer of the live projection. Created from the start of the mirror: what
/// an existing generation already holds is skipped by the cursor check.
async fn ensure_consumer(
    mirror: &stream::Stream,
    config: &Config,
) -> Result<jetstream::consumer::Consumer<pull::Config>, ProjectError> {
    mirror
        .get_or_create_consumer(
            &config.consumer_name,
            pull::Config {
                durable_name: Some(config.consumer_name.clone()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 20_000,
                ..Default::default()
            },
        )
        .await
        .map_err(ProjectError::from)
}

/// The next message of an ordered read of the mirror, or `None` once it has been idle for two
/// seconds (it has nothing more to give).
async fn next_or_idle<T>(
    messages: &mut (impl futures::Stream<Item = T> + Unpin),
    shutdown: &CancellationToken,
) -> Result<Option<T>, ProjectError> {
    tokio::select! {
        _ = shutdown.cancelled() => Err(ProjectError::Stopped),
        next = tokio::time::timeout(Duration::from_secs(2), messages.next()) => match next {
            Ok(Some(message)) => Ok(Some(message)),
            Ok(None) => Err(ProjectError::ConsumerEnded),
            Err(_) => Ok(None),
        },
    }
}

/// `first` and whatever else `messages` holds ready now, up to `limit`: what arrived together
/// goes to Redis in one round trip, without waiting for more.
fn ready_batch<T>(
    first: T,
    messages: &mut (impl futures::Stream<Item = T> + Unpin),
    limit: usize,
) -> Vec<T> {
    let mut batch = vec![first];
    while batch.len() < limit {
        match messages.next().now_or_never() {
            Some(Some(item)) => batch.push(item),
            _ => break,
        }
    }
    batch
}

/// Decodes a message into the apply script's arguments; `None` when it can never apply
/// (logged; the caller terminates it so it is not redelivered forever).
fn decode(payload: &[u8], stream_sequence: u64) -> Option<PreparedEvent> {
    let event = match EnrichedEvent::decode(payload) {
        Ok(event) => event,
        Err(error) => {
            tracing::error!(stream_sequence, %error, "undecodable enriched event dropped");
            return None;
        }
    };
    let event_id = event
        .envelope
        .as_ref()
        .map(|e| e.event_id.clone())
        .unwrap_or_default();
    match prepare::prepare(&event, stream_sequence) {
        Ok((prepared, None)) => Some(prepared),
        Ok((prepared, Some(problem))) => {
            // The cursor still advances past it so the aggregate is not blocked forever.
            tracing::error!(
                stream_sequence,
                event_id,
                aggregate = %prepared.aggregate_id,
                problem = %Causes(&problem),
                "enriched event body unusable; skipped"
            );
            Some(prepared)
        }
        Err(problem) => {
            tracing::error!(stream_sequence, event_id, problem = %Causes(&problem), "enriched event cannot be placed on a cursor; dropped");
            None
        }
    }
}

/// Progress of a rebuild, reported about once a second and at the end.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub generation: u64,
    pub events: u64,
    pub stream_sequence: u64,
    pub target_sequence: u64,
    pub elapsed: Duration,
}

impl Progress {
    pub fn rate_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.events as f64 / secs
        } else {
            0.0
        }
    }
}

#[derive(Debug, Clone)]
pub struct RebuildReport {
    pub progress: Progress,
    pub previous_generation: Option<u64>,
    /// Events still waiting for a predecessor the stream does not hold yet.
    pub waiting: usize,
}

/// Events that arrived before their predecessor, per aggregate, by (version, part).
type Waiting = HashMap<(Aggregate, String), BTreeMap<(u64, u32), PreparedEvent>>;

/// Applies events read in stream order to `target`; one that comes before its predecessor
/// waits in `waiting` and goes in once that one did. Books of completed account versions go
/// to `book` (only asked for on the served generation). Returns how many applied.
async fn apply_in_order(
    views: &Views,
    target: Target,
    prepared: Vec<PreparedEvent>,
    waiting: &mut Waiting,
    book: &mut (dyn FnMut(Book) + Send),
) -> Result<u64, ProjectError> {
    let snapshots = target == Target::Current;
    let mut events = 0_u64;
    let outcomes = views.apply_batch(target, &prepared, snapshots).await?;
    let mut unblocked = Vec::new();
    for (event, outcome) in prepared.into_iter().zip(outcomes) {
        match outcome {
            ApplyOutcome::Applied { book: applied } => {
                events += 1;
                applied.into_iter().for_each(&mut *book);
                unblocked.push((event.aggregate, event.aggregate_id.clone()));
            }
            ApplyOutcome::Duplicate => {}
            ApplyOutcome::Gap(_) => {
                waiting
                    .entry((event.aggregate, event.aggregate_id.clone()))
                    .or_default()
                    .insert((event.version, event.part), event);
            }
            ApplyOutcome::NoGeneration => return Err(ProjectError::GenerationLost),
        }
    }
    // Rare: an event that came before its predecessor can go in once that one did.
    for aggregate in unblocked {
        while let Some(queue) = waiting.get_mut(&aggregate) {
            let Some((_, event)) = queue.pop_first() else {
                waiting.remove(&aggregate);
                break;
            };
            match views
                .apply_batch(target, std::slice::from_ref(&event), snapshots)
                .await?
                .pop()
            {
                Some(ApplyOutcome::Applied { book: applied }) => {
                    events += 1;
                    applied.into_iter().for_each(&mut *book);
                }
                Some(ApplyOutcome::Duplicate) => {}
                Some(ApplyOutcome::Gap(_)) => {
                    queue.insert((event.version, event.part), event);
                    break;
                }
                _ => return Err(ProjectError::GenerationLost),
            }
        }
    }
    Ok(events)
}

/// What the rebuild's reader hands the applier: one batch read from the mirror, or word that
/// nothing more came in time.
enum Read {
    Batch {
        events: Vec<PreparedEvent>,
        /// The highest stream sequence in the batch.
        seen: u64,
        /// The sequence read when the mirror said nothing more was pending, if it did.
        drained_at: Option<u64>,
    },
    Idle,
}

/// Batches read ahead of the one being applied: Redis applies one while the next is read and
/// decoded, so neither waits for the other.
const READ_AHEAD: usize = 16;
/// Events the rebuild sends to Redis in one round trip at most.
const MERGED_EVENTS: usize = 8192;

/// Reads the mirror in batches of up to `batch_size` into `batches` until the receiver goes.
async fn read_ahead(
    mut messages: impl futures::Stream<Item = Result<jetstream::Message, pull::OrderedError>> + Unpin,
    batch_size: usize,
    shutdown: CancellationToken,
    batches: tokio::sync::mpsc::Sender<Result<Read, ProjectError>>,
) {
    loop {
        let read = async {
            let Some(first) = next_or_idle(&mut messages, &shutdown).await? else {
                return Ok(Read::Idle);
            };
            let batch = ready_batch(first, &mut messages, batch_size);
            let mut events = Vec::with_capacity(batch.len());
            let (mut seen, mut drained_at) = (0, None);
            for message in batch {
                let message = message?;
                let info = message.info().map_err(ProjectError::Metadata)?;
                seen = seen.max(info.stream_sequence);
                if info.pending == 0 && drained_at.is_none() {
                    drained_at = Some(seen);
                }
                if let Some(event) = decode(&message.payload, info.stream_sequence) {
                    events.push(event);
                }
            }
            Ok(Read::Batch {
                events,
                seen,
                drained_at,
            })
        }
        .await;
        let failed = read.is_err();
        if batches.send(read).await.is_err() || failed {
            return;
        }
    }
}

/// Rebuilds the views from the mirror into a fresh generation and switches to it. A rebuild
/// that fails removes what it built (a retry starts another generation).
pub async fn rebuild(
    views: &Views,
    mirror: &stream::Stream,
    batch_size: usize,
    shutdown: &CancellationToken,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<RebuildReport, ProjectError> {
    let generation = views.begin_generation().await?;
    let built = fill_and_switch(views, mirror, generation, batch_size, shutdown, progress).await;
    if built.is_err()
        && let Err(error) = views.drop_generation(generation).await
    {
        tracing::warn!(generation, error = %Causes(&error), "cannot remove a failed rebuild's generation");
    }
    built
}

async fn fill_and_switch(
    views: &Views,
    mirror: &stream::Stream,
    generation: u64,
    batch_size: usize,
    shutdown: &CancellationToken,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<RebuildReport, ProjectError> {
    let started = Instant::now();
    let mut target = mirror.get_info().await?.state.last_sequence;
    let consumer = mirror
        .create_consumer(pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let (sender, mut batches) = tokio::sync::mpsc::channel(READ_AHEAD);
    // Ends when `batches` is dropped, with this function.
    tokio::spawn(read_ahead(
        consumer.messages().await?,
        batch_size,
        shutdown.clone(),
        sender,
    ));
    let mut seen = 0_u64;
    let mut events = 0_u64;
    let mut waiting = Waiting::new();
    // A read taken from the channel while merging batches, for the next turn.
    let mut held = None;
    let mut last_report = Instant::now();
    let report = |seen, events, target| Progress {
        generation,
        events,
        stream_sequence: seen,
        target_sequence: target,
        elapsed: started.elapsed(),
    };
    loop {
        if seen >= target {
            // What the switch compares; only needed now, as a generation left half built is
            // never served.
            views.mark_seen(generation, seen).await?;
            match views.switch_to(generation).await? {
                SwitchOutcome::Switched { previous } => {
                    let done = report(seen, events, target);
                    progress(&done);
                    return Ok(RebuildReport {
                        progress: done,
                        previous_generation: previous,
                        waiting: waiting.values().map(BTreeMap::len).sum(),
                    });
                }
                // The live generation applied more meanwhile: read on to at least there.
                SwitchOutcome::Behind(sequence) => target = sequence,
                SwitchOutcome::NoGeneration => return Err(ProjectError::GenerationLost),
            }
        }
        let read = match held.take() {
            Some(read) => read,
            None => batches.recv().await.ok_or(ProjectError::Stopped)?,
        }?;
        let Read::Batch {
            events: mut prepared,
            seen: batch_seen,
            mut drained_at,
        } = read
        else {
            // Nothing more to read: the target was a sequence the mirror no longer holds.
            target = seen;
            continue;
        };
        seen = seen.max(batch_seen);
        // Batches read while the last one was applied go to Redis together: fewer round trips,
        // each of which leaves Redis idle.
        while prepared.len() < MERGED_EVENTS {
            match batches.try_recv() {
                Ok(Ok(Read::Batch {
                    events,
                    seen: batch_seen,
                    drained_at: batch_drained_at,
                })) => {
                    prepared.extend(events);
                    seen = seen.max(batch_seen);
                    drained_at = drained_at.or(batch_drained_at);
                }
                Ok(other) => {
                    held = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        if let Some(drained_at) = drained_at {
            target = target.min(drained_at);
        }
        events += apply_in_order(
            views,
            Target::Generation(generation),
            prepared,
            &mut waiting,
            &mut |_| {},
        )
        .await?;
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            progress(&report(seen, events, target));
        }
    }
}

/// An aggregate whose next event is waiting for a predecessor.
struct Gap {
    /// When its first event was found ahead of the cursor.
    since: Instant,
    /// The latest such event's stream sequence: the re-read goes up to it.
    sequence: u64,
}

/// Gapped aggregates re-read from the mirror at once.
const REPAIRS_IN_FLIGHT: usize = 16;

/// What the live projector tracks between batches to keep Redis whole.
#[derive(Default)]
struct Upkeep {
    /// The Redis process caught up with the consumer (None: not yet, as at start).
    redis_run_id: Option<String>,
    /// Gapped aggregates by their subject on the mirror.
    gaps: HashMap<String, Gap>,
}

/// Removes a generation a switch replaced, once the reads that picked it just before the
/// switch have finished.
pub async fn retire(views: &Views, generation: u64) -> Result<(), ViewError> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    views.drop_generation(generation).await?;
    Ok(())
}

/// The live projector: what the server runs in the background.
pub struct Projector {
    pub views: Views,
    pub mirror: stream::Stream,
    pub config: Config,
    pub freshness: Arc<Freshness>,
    /// Each account's book after every version applied, in apply order.
    pub announcer: Arc<Announcer>,
}

impl Projector {
    /// Rebuilds into a fresh generation when Redis holds none this code can use (first start,
    /// restarted empty, or views of an older key layout, which are then removed); keeps
    /// retrying while Redis is unreachable.
    async fn heal(&self, shutdown: &CancellationToken) -> Result<(), ProjectError> {
        match self.views.current_generation().await? {
            Some(_) => Ok(()),
            None => {
                tracing::warn!(region = %self.config.region, "no views in redis; rebuilding from the mirror");
                let report = rebuild(
                    &self.views,
                    &self.mirror,
                    self.config.batch_size,
                    shutdown,
                    &mut |progress| {
                        tracing::info!(
                            generation = progress.generation,
                            events = progress.events,
                            stream_sequence = progress.stream_sequence,
                            rate = progress.rate_per_second() as u64,
                            "rebuilding"
                        );
                    },
                )
                .await?;
                tracing::info!(
                    generation = report.progress.generation,
                    events = report.progress.events,
                    elapsed_ms = report.progress.elapsed.as_millis() as u64,
                    "views rebuilt"
                );
                // What was served before is a generation of an older layout, if anything.
                if let Some(previous) = report.previous_generation {
                    retire(&self.views, previous).await?;
                }
                Ok(())
            }
        }
    }

    /// Keeps Redis holding every event the consumer acknowledged, run every second:
    /// - when Redis is a process not yet caught up with (this projector just started, or Redis
    ///   restarted, possibly from an older RDB/AOF that lacks applies already acknowledged),
    ///   replays the mirror from the last position recorded as applied through what the
    ///   consumer has delivered (the cursor rule skips what is there);
    /// - otherwise records the consumer's ack floor as applied;
    /// - re-reads from the mirror the events of every aggregate gapped for longer than
    ///   `gap_repair_ms`: its predecessor may have been acknowledged and lost since.
    async fn keep_whole(
        &self,
        consumer: &jetstream::consumer::Consumer<pull::Config>,
        upkeep: &mut Upkeep,
        shutdown: &CancellationToken,
    ) -> Result<(), ProjectError> {
        let run_id = self.views.server_run_id().await?;
        if upkeep.redis_run_id.as_deref() != Some(run_id.as_str()) {
            if let Some(applied) = self.views.applied_through().await? {
                let delivered = consumer.get_info().await?.delivered.stream_sequence;
                if delivered > applied {
                    tracing::info!(
                        region = %self.config.region,
                        from = applied + 1,
                        through = delivered,
                        "catching redis up with what the consumer acknowledged"
                    );
                    let events = self.replay("", applied + 1, delivered, shutdown).await?;
                    if events > 0 {
                        tracing::warn!(
                            region = %self.config.region,
                            events,
                            "redis had lost acknowledged events; applied them again"
                        );
                    }
                }
            }
            // The run id read before the replay: a restart meanwhile shows at the next check.
            upkeep.redis_run_id = Some(run_id);
            return Ok(());
        }
        let floor = consumer.get_info().await?.ack_floor.stream_sequence;
        self.views.record_acked(floor, &run_id).await?;

        let bound = self.config.gap_repair();
        let due: Vec<String> = upkeep
            .gaps
            .iter()
            .filter(|(_, gap)| gap.since.elapsed() >= bound)
            .map(|(subject, _)| subject.clone())
            .collect();
        let repairs: Vec<(String, Gap)> = due
            .into_iter()
            .filter_map(|subject| upkeep.gaps.remove(&subject).map(|gap| (subject, gap)))
            .collect();
        // Every event of each aggregate up to the gapped one, from the start of the mirror: where
        // the lost predecessor sits is not known, the filter keeps each read small. Several at
        // once: each read is mostly waiting for its consumer, and a Redis that lost the last
        // events of many accounts (a crash, an older snapshot) gaps them all at the same time.
        let mut repaired =
            futures::stream::iter(repairs.into_iter().map(|(subject, gap)| async move {
                let events = self.replay(&subject, 1, gap.sequence, shutdown).await;
                (subject, gap, events)
            }))
            .buffer_unordered(REPAIRS_IN_FLIGHT);
        while let Some((subject, gap, events)) = repaired.next().await {
            let events = events?;
            self.freshness.gaps_repaired.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                region = %self.config.region,
                subject,
                waited_ms = gap.since.elapsed().as_millis() as u64,
                events,
                "aggregate gapped too long; re-read its events from the mirror"
            );
        }
        Ok(())
    }

    /// Reads the mirror's `filter` subject (all when empty) from `start` through `end` with an
    /// ordered consumer and applies it to the served generation through the apply script,
    /// which skips what is there. Returns how many events applied.
    async fn replay(
        &self,
        filter: &str,
        start: u64,
        end: u64,
        shutdown: &CancellationToken,
    ) -> Result<u64, ProjectError> {
        let consumer = self
            .mirror
            .create_consumer(pull::OrderedConfig {
                filter_subject: filter.to_owned(),
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start.max(1),
                },
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        let mut waiting = Waiting::new();
        let mut applied = 0_u64;
        let mut done = false;
        while !done {
            let Some(first) = next_or_idle(&mut messages, shutdown).await? else {
                // Nothing more to read: the mirror no longer holds (or never held) the rest.
                break;
            };
            let batch = ready_batch(first, &mut messages, self.config.batch_size);
            let mut prepared = Vec::with_capacity(batch.len());
            for message in batch {
                let message = message?;
                let info = message.info().map_err(ProjectError::Metadata)?;
                if info.stream_sequence > end {
                    done = true;
                    break;
                }
                done |= info.stream_sequence == end || info.pending == 0;
                if let Some(event) = decode(&message.payload, info.stream_sequence) {
                    prepared.push(event);
                }
            }
            applied += apply_in_order(
                &self.views,
                Target::Current,
                prepared,
                &mut waiting,
                // Whoever waits for this version hears of it as from the live consumer.
                &mut |book| self.announcer.announce(book),
            )
            .await?;
        }
        Ok(applied)
    }

    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ProjectError> {
        let consumer = ensure_consumer(&self.mirror, &self.config).await?;
        let mut messages = loop {
            match consumer
                .stream()
                .max_messages_per_batch(self.config.batch_size)
                .heartbeat(Duration::from_secs(5))
                .messages()
                .await
            {
                Ok(messages) => break messages,
                Err(error) => {
                    tracing::warn!(%error, "cannot start consuming the mirror; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let mut healthy_check = Instant::now() - Duration::from_secs(10);
        let mut upkeep = Upkeep::default();
        loop {
            // Redis restarted empty shows as a missing generation, restarted with fewer writes
            // than were acknowledged as a new run id, a lost predecessor as an old gap; checked
            // every second and whenever a script reports a missing generation.
            if healthy_check.elapsed() >= Duration::from_secs(1) {
                healthy_check = Instant::now();
                let checked = match self.heal(&shutdown).await {
                    Ok(()) => self.keep_whole(&consumer, &mut upkeep, &shutdown).await,
                    Err(error) => Err(error),
                };
                match checked {
                    Ok(()) => {}
                    Err(ProjectError::Stopped) => return Ok(()),
                    Err(error) => {
                        tracing::warn!(error = %Causes(&error), "cannot check or rebuild the views; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                        continue;
                    }
                }
            }
            let first = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                next = tokio::time::timeout(Duration::from_secs(1), messages.next()) => next,
            };
            let first = match first {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(error))) => {
                    // Missed heartbeats while the leaf is away, and similar: the stream
                    // keeps trying by itself.
                    tracing::debug!(%error, "mirror consumer hiccup");
                    continue;
                }
                Ok(None) => return Err(ProjectError::ConsumerEnded),
                Err(_) => continue,
            };
            // A consumer error ends the batch; the consumer retries by itself.
            let batch = ready_batch(Ok(first), &mut messages, self.config.batch_size)
                .into_iter()
                .map_while(Result::ok)
                .collect();
            if self.process(batch, &mut upkeep.gaps).await {
                healthy_check = Instant::now() - Duration::from_secs(10);
            }
        }
    }

    /// Applies one batch and acknowledges each message by its outcome. Returns whether the
    /// views were found missing (the caller rebuilds at once).
    async fn process(
        &self,
        batch: Vec<jetstream::Message>,
        gaps: &mut HashMap<String, Gap>,
    ) -> bool {
        let mut messages = Vec::with_capacity(batch.len());
        let mut prepared = Vec::with_capacity(batch.len());
        // One span per event, continuing the relay's (its context travels in the message's
        // headers), ended once the event is applied and acknowledged: this region's hop in the
        // trace of the order that caused it.
        let mut spans = Vec::with_capacity(batch.len());
        let mut pending = 0;
        for message in batch {
            let (sequence, left) = match message.info() {
                Ok(info) => (info.stream_sequence, info.pending),
                Err(error) => {
                    tracing::error!(%error, "message without jetstream metadata ignored");
                    continue;
                }
            };
            pending = left;
            match decode(&message.payload, sequence) {
                Some(event) => {
                    let span = tracing::info_span!(
                        "read_region.project",
                        region = %self.config.region,
                        aggregate = %event.aggregate_id,
                        version = event.version,
                        outcome = tracing::field::Empty
                    );
                    if let Some(headers) = &message.headers {
                        platform::telemetry::continue_trace(
                            &span,
                            &platform::telemetry::NatsHeaderExtractor(headers),
                        );
                    }
                    spans.push(span);
                    prepared.push(event);
                    messages.push(message);
                }
                None => {
                    if let Err(error) = message.ack_with(AckKind::Term).await {
                        tracing::warn!(%error, "cannot terminate an unusable message");
                    }
                }
            }
        }
        self.freshness.pending.store(pending, Ordering::Relaxed);
        let outcomes = match self
            .views
            .apply_batch(Target::Current, &prepared, true)
            .await
        {
            Ok(outcomes) => outcomes,
            Err(error) => {
                platform::metrics::dependency_error(Dependency::Redis);
                tracing::warn!(error = %Causes(&error), events = prepared.len(), "cannot apply to redis; redelivering later");
                for message in &messages {
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                return false;
            }
        };
        let mut missing = false;
        for (((message, event), outcome), span) in
            messages.iter().zip(&prepared).zip(outcomes).zip(&spans)
        {
            span.record("outcome", outcome.name());
            let ack = match outcome {
                ApplyOutcome::Applied { book, .. } => {
                    // The aggregate moved: whatever it waited for has arrived.
                    gaps.remove(message.subject.as_str());
                    self.freshness
                        .last_applied_ms
                        .store(event.occurred_ms, Ordering::Relaxed);
                    if let Some(book) = book {
                        self.announcer.announce(book);
                    }
                    message.ack().await
                }
                ApplyOutcome::Duplicate => {
                    tracing::debug!(aggregate = %event.aggregate_id, version = event.version, part = event.part, "duplicate skipped");
                    message.ack().await
                }
                ApplyOutcome::Gap(cursor) => {
                    tracing::warn!(
                        aggregate_type = event.aggregate.as_str(),
                        aggregate = %event.aggregate_id,
                        version = event.version,
                        part = event.part,
                        cursor_version = cursor.version,
                        cursor_part = cursor.part,
                        cursor_parts = cursor.parts,
                        stream_sequence = event.stream_sequence,
                        "event ahead of its predecessor; retrying later"
                    );
                    gaps.entry(message.subject.to_string())
                        .or_insert(Gap {
                            since: Instant::now(),
                            sequence: 0,
                        })
                        .sequence = event.stream_sequence;
                    message
                        .ack_with(AckKind::Nak(Some(self.config.gap_retry())))
                        .await
                }
                ApplyOutcome::NoGeneration => {
                    missing = true;
                    message.ack_with(AckKind::Nak(None)).await
                }
            };
            if let Err(error) = ack {
                tracing::warn!(%error, stream_sequence = event.stream_sequence, "ack failed; the event will be redelivered and skipped");
            }
        }
        missing
    }
}

/// Watches the mirror's contact with the hub and the health of Redis and the leaf, every
/// quarter second, for `staleness_ms` and the health service.
pub async fn monitor(
    views: Views,
    mirror: stream::Stream,
    freshness: Arc<Freshness>,
    health: tonic_health::server::HealthReporter,
    services: Vec<&'static str>,
    shutdown: CancellationToken,
) {
    let mut serving = None;
    loop {
        let redis_ok = views.ping().await.is_ok();
        let leaf_ok = match mirror.get_info().await {
            Ok(info) => {
                if let Some(active) = info.mirror.and_then(|mirror| mirror.active) {
                    freshness.record_contact(active);
                }
                true
            }
            Err(_) => false,
        };
        let now_serving = redis_ok && leaf_ok;
        if serving != Some(now_serving) {
            serving = Some(now_serving);
            let status = if now_serving {
                tonic_health::ServingStatus::Serving
            } else {
                tracing::warn!(redis_ok, leaf_ok, "dependencies not answering");
                tonic_health::ServingStatus::NotServing
            };
            for service in std::iter::once("").chain(services.iter().copied()) {
                health.set_service_status(service, status).await;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

//! consume -> enrich -> journal -> publish. One loop per raw stream (accounts, market), each
//! strictly in stream order, so per-aggregate order holds by construction. A loop takes a
//! batch, enriches it in memory, stores the batch's outputs and state as one journal entry,
//! publishes every output (awaiting the acks), stores its state and checkpoint, and only then
//! acknowledges the batch. A crash before the journal entry is stored replays from the
//! checkpoint (nothing of the batch was published); a crash after it finishes the entry on
//! restart, republishing exactly what was enriched, under the same ids, which JetStream
//! de-duplicates and version-checking consumers skip.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::{
    HeaderMap,
    jetstream::{self, consumer::pull, stream},
};
use futures::StreamExt;
use prost::Message;
use tokio_util::sync::CancellationToken;
use trading_proto::events::v1::{EnrichedEvent, EventEnvelope, RawEvent, enriched_event};

use crate::{
    config::Config,
    enrich::{self, EnrichError, Holder, RiskRules},
    state::{Dirty, Journal, JournalDeadLetter, JournalOutput, RelayState, StateStore},
    upcast::upcast,
};

const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Namespace of the deterministic ids of enriched events (UUID v5).
const ENRICHED_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6c1f_7c2e_0f4b_4d0e_9a57_3b8e_2d11_a001);

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("jetstream: {0}")]
    JetStream(String),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

fn js_error(error: impl std::fmt::Display) -> PipelineError {
    PipelineError::JetStream(error.to_string())
}

/// Counts, exported as metrics (`export_metrics`) and logged (`report`).
#[derive(Debug, Default)]
pub struct Counters {
    pub processed: AtomicU64,
    pub published: AtomicU64,
    pub duplicates: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub retries: AtomicU64,
    /// Journal entries finished after a crash.
    pub recovered: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> [u64; 6] {
        [
            self.processed.load(Ordering::Relaxed),
            self.published.load(Ordering::Relaxed),
            self.duplicates.load(Ordering::Relaxed),
            self.dead_lettered.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
            self.recovered.load(Ordering::Relaxed),
        ]
    }
}

/// Which raw stream a loop consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Accounts,
    Market,
}

impl Source {
    fn aggregate_type(self) -> &'static str {
        match self {
            Self::Accounts => "account",
            Self::Market => "instrument",
        }
    }
}

/// Shared by both loops.
pub struct Pipeline {
    pub config: Config,
    pub rules: RiskRules,
    pub jetstream: jetstream::Context,
    pub store: StateStore,
    pub state: Mutex<RelayState>,
    pub counters: Counters,
}

impl Pipeline {
    /// Creates the enriched and dead-letter streams if they are missing.
    pub async fn ensure_streams(&self) -> Result<(), PipelineError> {
        for (name, subjects) in [
            (
                &self.config.enriched_stream,
                vec![format!("{}.>", self.config.enriched_prefix)],
            ),
            (
                &self.config.dead_letter_stream,
                vec![format!("deadletter.{}.>", self.config.dead_letter_stream)],
            ),
        ] {
            self.jetstream
                .get_or_create_stream(stream::Config {
                    name: name.clone(),
                    subjects,
                    storage: stream::StorageType::File,
                    duplicate_window: self.config.duplicate_window(),
                    ..Default::default()
                })
                .await
                .map_err(js_error)?;
        }
        Ok(())
    }

    fn stream_name(&self, source: Source) -> &str {
        match source {
            Source::Accounts => &self.config.account_stream,
            Source::Market => &self.config.market_stream,
        }
    }

    /// The durable consumer of `source`, positioned right after the stored checkpoint. It is
    /// recreated at every start: redeliveries of a previous run could otherwise arrive after
    /// newer messages and break per-account order.
    async fn consumer(&self, source: Source) -> Result<pull::Stream, PipelineError> {
        let stream_name = self.stream_name(source).to_owned();
        let stream = loop {
            match self.jetstream.get_stream(&stream_name).await {
                Ok(stream) => break stream,
                Err(error) => {
                    tracing::info!(stream = %stream_name, %error, "waiting for the raw stream");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let checkpoint = self.state.lock().map_or(0, |state| {
            state.checkpoints.get(&stream_name).copied().unwrap_or(0)
        });
        let durable = format!("relay-{stream_name}");
        // Absent on the first start; any other failure shows up when creating it below.
        let _ = stream.delete_consumer(&durable).await;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(durable),
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: checkpoint + 1,
                },
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(60),
                max_ack_pending: 20_000,
                ..Default::default()
            })
            .await
            .map_err(js_error)?;
        tracing::info!(stream = %stream_name, from_sequence = checkpoint + 1, "consuming");
        consumer
            .stream()
            .max_messages_per_batch(self.config.batch_size)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(js_error)
    }

    /// Consumes `source` until `shutdown`; failures are retried with backoff, never skipped.
    pub async fn run(self: Arc<Self>, source: Source, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = tokio::select! {
                result = self.consume(source, &shutdown) => result,
                () = shutdown.cancelled() => return,
            };
            match result {
                Ok(()) => return,
                Err(error) => {
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(?source, %error, retry_in_ms = backoff.as_millis() as u64, "relay loop failed; restarting from the checkpoint");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    // Back to the last stored state of this loop's own entries: the failed
                    // batch may have half-applied them. The other loop's entries stay: it may be
                    // mid-batch, and rolled back under its feet it would store them older than
                    // its checkpoint, and refuse every later event of those aggregates.
                    match self.store.load().await {
                        Ok(stored) => {
                            if let Ok(mut current) = self.state.lock() {
                                self.restore(source, &mut current, stored);
                            }
                        }
                        Err(error) => tracing::warn!(%error, "cannot reload relay state"),
                    }
                }
            }
        }
    }

    /// Replaces the entries `source`'s loop owns (and its checkpoint) with `stored`'s.
    fn restore(&self, source: Source, current: &mut RelayState, mut stored: RelayState) {
        match source {
            Source::Accounts => {
                current.books = stored.books;
                current.holders = stored.holders;
            }
            Source::Market => {
                current.instruments = stored.instruments;
                current.stop_loss = stored.stop_loss;
            }
        }
        let stream = self.stream_name(source);
        let checkpoint = stored.checkpoints.remove(stream).unwrap_or(0);
        current.checkpoints.insert(stream.to_owned(), checkpoint);
    }

    async fn consume(
        &self,
        source: Source,
        shutdown: &CancellationToken,
    ) -> Result<(), PipelineError> {
        self.recover(source).await?;
        let mut messages = self.consumer(source).await?;
        loop {
            // Take what is ready, up to a batch, waiting only for the first message.
            let first = tokio::select! {
                message = messages.next() => message,
                () = shutdown.cancelled() => return Ok(()),
            };
            let Some(first) = first else {
                return Err(PipelineError::JetStream("consumer stream ended".into()));
            };
            let mut batch = vec![first.map_err(js_error)?];
            while batch.len() < self.config.batch_size {
                match tokio::time::timeout(Duration::ZERO, messages.next()).await {
                    Ok(Some(message)) => batch.push(message.map_err(js_error)?),
                    _ => break,
                }
            }
            self.process(source, batch).await?;
        }
    }

    async fn process(
        &self,
        source: Source,
        batch: Vec<jetstream::Message>,
    ) -> Result<(), PipelineError> {
        if source == Source::Accounts {
            self.await_instruments(&batch).await;
        }
        let journal = self.enrich_batch(source, &batch)?;
        // Nothing to publish is nothing a replay could publish differently.
        if !journal.outputs.is_empty() || !journal.dead_letters.is_empty() {
            self.store
                .write_journal(self.stream_name(source), &journal)
                .await?;
        }
        self.finish(source, &journal).await?;
        for message in &batch {
            message.ack().await.map_err(js_error)?;
        }
        self.counters
            .processed
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Enriches a batch in memory: its outputs, dead letters and the state entries it changed.
    fn enrich_batch(
        &self,
        source: Source,
        batch: &[jetstream::Message],
    ) -> Result<Journal, PipelineError> {
        let mut journal = Journal::default();
        let mut dirty = HashSet::new();
        let mut state = self.lock_state()?;
        for message in batch {
            let sequence = message.info().map_or(0, |info| info.stream_sequence);
            journal.last_sequence = journal.last_sequence.max(sequence);
            let span =
                tracing::info_span!("relay.enrich", sequence, aggregate = tracing::field::Empty);
            if let Some(headers) = &message.headers {
                platform::telemetry::continue_trace(
                    &span,
                    &platform::telemetry::NatsHeaderExtractor(headers),
                );
            }
            let _entered = span.enter();
            match self.enrich_one(source, &mut state, &message.payload, &mut dirty) {
                Ok(Some(events)) => journal.outputs.extend(events),
                Ok(None) => {
                    self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                Err(reason) => {
                    tracing::warn!(sequence, %reason, "raw event sent to the dead-letter stream");
                    journal.dead_letters.push(JournalDeadLetter {
                        payload: message.payload.clone(),
                        sequence,
                        reason: reason.to_string(),
                    });
                }
            }
        }
        journal.writes = state.writes(dirty);
        Ok(journal)
    }

    fn lock_state(&self) -> Result<std::sync::MutexGuard<'_, RelayState>, PipelineError> {
        self.state
            .lock()
            .map_err(|_| PipelineError::JetStream("state lock poisoned".into()))
    }

    /// Carries out a journal entry: dead letters, outputs, state and checkpoint. Safe to repeat:
    /// messages are de-duplicated by id and state writes are whole values.
    async fn finish(&self, source: Source, journal: &Journal) -> Result<(), PipelineError> {
        let stream = self.stream_name(source);
        self.dead_letter(stream, &journal.dead_letters).await?;
        self.publish(&journal.outputs).await?;
        self.store
            .save(&journal.writes, stream, journal.last_sequence)
            .await?;
        self.lock_state()?
            .checkpoints
            .insert(stream.to_owned(), journal.last_sequence);
        Ok(())
    }

    /// Finishes the journal entry a crash interrupted, before consuming anything new, so its
    /// raw events are never enriched a second time.
    async fn recover(&self, source: Source) -> Result<(), PipelineError> {
        let stream = self.stream_name(source);
        let checkpoint = self
            .lock_state()?
            .checkpoints
            .get(stream)
            .copied()
            .unwrap_or(0);
        let Some(journal) = self.store.unfinished_journal(stream, checkpoint).await? else {
            return Ok(());
        };
        tracing::info!(
            stream,
            checkpoint,
            last_sequence = journal.last_sequence,
            outputs = journal.outputs.len(),
            "finishing the batch a crash interrupted"
        );
        {
            // The other loop reads these entries: it must see the batch's state, as it did
            // before the crash.
            let mut state = self.lock_state()?;
            for write in &journal.writes {
                state.set(&write.key, &write.value)?;
            }
        }
        self.finish(source, &journal).await?;
        self.counters.recovered.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Trades name their instrument; its reference data comes from the market stream, which
    /// may lag a little. Wait briefly for it rather than publish a trade without a name.
    async fn await_instruments(&self, batch: &[jetstream::Message]) {
        let symbols: HashSet<String> = batch
            .iter()
            .filter_map(|message| RawEvent::decode(message.payload.as_ref()).ok())
            .filter_map(|raw| match raw.body {
                Some(trading_proto::events::v1::raw_event::Body::TradeExecuted(trade)) => {
                    Some(trade.symbol)
                }
                _ => None,
            })
            .collect();
        for _ in 0..40 {
            let missing = self.state.lock().is_ok_and(|state| {
                symbols
                    .iter()
                    .any(|symbol| !state.instruments.contains_key(symbol))
            });
            if !missing {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!(
            ?symbols,
            "enriching trades before their instrument's reference data"
        );
    }

    /// Enriches one raw event: `Ok(None)` for an event already applied, `Err` for one that can
    /// never be processed.
    fn enrich_one(
        &self,
        source: Source,
        state: &mut RelayState,
        payload: &[u8],
        dirty: &mut HashSet<Dirty>,
    ) -> Result<Option<Vec<JournalOutput>>, EnrichError> {
        let mut raw = RawEvent::decode(payload).map_err(|error| EnrichError::BadField {
            field: "payload",
            problem: format!("undecodable: {error}"),
        })?;
        upcast(&mut raw)?;
        let envelope = raw.envelope.clone().ok_or(EnrichError::NoEnvelope)?;
        if envelope.aggregate_type != source.aggregate_type() {
            return Err(EnrichError::WrongStream(
                envelope.event_type,
                source.aggregate_type(),
            ));
        }
        tracing::Span::current().record("aggregate", envelope.aggregate_id.as_str());
        let id = envelope.aggregate_id.clone();
        let bodies = match source {
            Source::Accounts => {
                let book = state.books.entry(id.clone()).or_default();
                let current = book.version;
                if envelope.version <= current {
                    return Ok(None);
                }
                check_next(current, envelope.version)?;
                let mut next = book.clone();
                let bodies =
                    enrich::enrich_account(&mut next, &state.instruments, self.rules, &raw)?;
                let symbols: Vec<String> = next.positions.keys().cloned().collect();
                state.books.insert(id.clone(), next);
                for symbol in symbols {
                    state.reindex(&id, &symbol);
                }
                dirty.insert(Dirty::Book(id.clone()));
                bodies
            }
            Source::Market => {
                let current = state.instruments.get(&id).map_or(0, |i| i.version);
                if envelope.version <= current {
                    return Ok(None);
                }
                check_next(current, envelope.version)?;
                let mut instrument = state.instruments.get(&id).cloned().unwrap_or_default();
                let flagged = state.stop_loss.get(&id).cloned().unwrap_or_default();
                let holders = state
                    .holders
                    .get(&id)
                    .into_iter()
                    .flatten()
                    .filter_map(|account| state.books.get(account))
                    .map(|book| Holder {
                        book,
                        flagged: flagged.contains(&book.account_id),
                    });
                let (bodies, flags) =
                    enrich::enrich_instrument(&mut instrument, holders, self.rules, &raw)?;
                state.instruments.insert(id.clone(), instrument);
                dirty.insert(Dirty::Instrument(id.clone()));
                if !flags.is_empty() {
                    let entry = state.stop_loss.entry(id.clone()).or_default();
                    for (account, on) in flags {
                        if on {
                            entry.insert(account);
                        } else {
                            entry.remove(&account);
                        }
                    }
                    dirty.insert(Dirty::StopLoss(id.clone()));
                }
                bodies
            }
        };
        Ok(Some(self.stamp(&envelope, source, bodies)))
    }

    /// Wraps bodies in envelopes: the raw event's aggregate and version, parts 1..n, and ids
    /// derived from the raw event id so a replay produces the same messages.
    fn stamp(
        &self,
        raw: &EventEnvelope,
        source: Source,
        bodies: Vec<enriched_event::Body>,
    ) -> Vec<JournalOutput> {
        let parts = u32::try_from(bodies.len()).unwrap_or(u32::MAX);
        let kind = match source {
            Source::Accounts => "account",
            Source::Market => "market",
        };
        let subject = format!(
            "{}.{kind}.{}",
            self.config.enriched_prefix, raw.aggregate_id
        );
        let mut metadata = platform::telemetry::current_trace_context();
        metadata.insert("region".into(), self.config.region.clone());
        bodies
            .into_iter()
            .zip(1..)
            .map(|(body, part)| {
                let event_id = uuid::Uuid::new_v5(
                    &ENRICHED_NAMESPACE,
                    format!("{}/{part}", raw.event_id).as_bytes(),
                )
                .to_string();
                let event = EnrichedEvent {
                    envelope: Some(EventEnvelope {
                        event_id: event_id.clone(),
                        event_type: body.event_type().to_owned(),
                        schema_version: 1,
                        aggregate_type: raw.aggregate_type.clone(),
                        aggregate_id: raw.aggregate_id.clone(),
                        version: raw.version,
                        occurred_at: raw.occurred_at,
                        correlation_id: raw.correlation_id.clone(),
                        causation_id: raw.event_id.clone(),
                        metadata: metadata.clone(),
                    }),
                    part,
                    parts,
                    body: Some(body),
                };
                JournalOutput {
                    subject: subject.clone(),
                    event: event.encode_to_vec().into(),
                    message_id: event_id,
                    traceparent: metadata.get("traceparent").cloned().unwrap_or_default(),
                }
            })
            .collect()
    }

    /// Publishes in order on one connection and awaits every ack.
    async fn publish(&self, outputs: &[JournalOutput]) -> Result<(), PipelineError> {
        // In chunks: async-nats stalls with more than 5,000 acknowledgements pending.
        for chunk in outputs.chunks(4_096) {
            let mut acks = Vec::with_capacity(chunk.len());
            for output in chunk {
                let mut headers = HeaderMap::new();
                headers.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    output.message_id.as_str(),
                );
                if !output.traceparent.is_empty() {
                    headers.insert("traceparent", output.traceparent.as_str());
                }
                let ack = self
                    .jetstream
                    .publish_with_headers(output.subject.clone(), headers, output.event.clone())
                    .await
                    .map_err(js_error)?;
                acks.push(ack);
            }
            for ack in acks {
                ack.await.map_err(js_error)?;
            }
        }
        self.counters
            .published
            .fetch_add(outputs.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn dead_letter(
        &self,
        stream: &str,
        dead: &[JournalDeadLetter],
    ) -> Result<(), PipelineError> {
        for letter in dead {
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("{stream}/{}", letter.sequence).as_str(),
            );
            headers.insert("reason", letter.reason.as_str());
            headers.insert("source-stream", stream);
            headers.insert("source-sequence", letter.sequence.to_string().as_str());
            self.jetstream
                .publish_with_headers(
                    format!("deadletter.{}.{stream}", self.config.dead_letter_stream),
                    headers,
                    letter.payload.clone(),
                )
                .await
                .map_err(js_error)?
                .await
                .map_err(js_error)?;
            self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Events of one aggregate arrive in version order; anything but the next version is a
/// corrupt stream, not something to wait for.
fn check_next(current: u64, found: u64) -> Result<(), EnrichError> {
    if found == current + 1 {
        Ok(())
    } else {
        Err(EnrichError::BadField {
            field: "version",
            problem: format!("version {found} cannot follow version {current}"),
        })
    }
}

/// Picks one counter out of `Counters`.
type CounterOf = fn(&Counters) -> &AtomicU64;

/// Exports the counters as OpenTelemetry metrics, read whenever the meter provider collects
/// (exported over OTLP when an endpoint is configured, see `platform::telemetry`).
pub fn export_metrics(pipeline: &Arc<Pipeline>) {
    let meter = opentelemetry::global::meter("relay");
    let counters: [(&str, &str, CounterOf); 6] = [
        (
            "relay.raw_events.processed",
            "Raw events consumed and acknowledged",
            |c| &c.processed,
        ),
        (
            "relay.enriched_events.published",
            "Enriched events published",
            |c| &c.published,
        ),
        (
            "relay.raw_events.duplicates",
            "Raw events already applied, skipped",
            |c| &c.duplicates,
        ),
        (
            "relay.raw_events.dead_lettered",
            "Raw events sent to the dead-letter stream",
            |c| &c.dead_lettered,
        ),
        (
            "relay.loop.retries",
            "Consume loop failures retried with backoff",
            |c| &c.retries,
        ),
        (
            "relay.journal.recovered",
            "Journal entries finished after a crash",
            |c| &c.recovered,
        ),
    ];
    for (name, description, counter) in counters {
        let pipeline = pipeline.clone();
        meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |observer| {
                observer.observe(counter(&pipeline.counters).load(Ordering::Relaxed), &[]);
            })
            .build();
    }
}

/// Logs the counters every `interval` while they move.
pub async fn report(pipeline: Arc<Pipeline>, interval: Duration, shutdown: CancellationToken) {
    let mut last = [0; 6];
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let now = pipeline.counters.snapshot();
        if now != last {
            let [
                processed,
                published,
                duplicates,
                dead_lettered,
                retries,
                recovered,
            ] = now;
            tracing::info!(
                processed,
                published,
                duplicates,
                dead_lettered,
                retries,
                recovered,
                "relay progress"
            );
            last = now;
        }
    }
}

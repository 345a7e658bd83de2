//! One command on one aggregate: take its state, decide, stamp envelopes, and commit events,
//! state and idempotency record in one conditional batch; then hand the committed events to the
//! outbox.
//!
//! Commands on one aggregate are serialized inside this process (striped async locks) so they
//! do not fight each other in Paxos. Because of that, the state a command committed is a good
//! guess of the state the next command on that aggregate starts from, so each stripe keeps it:
//! the usual command costs no read at all, only its conditional batch. The guess is never
//! trusted: the batch commits only `IF version = v` (another process may have moved on) and only
//! if the idempotency record does not exist yet (`IF NOT EXISTS`: a retry of a request already
//! committed). A batch that does not apply reloads with a SERIAL read, which completes any Paxos
//! round in flight, checks the record, and decides again; so two processes on one store are
//! exactly as correct as one, only slower when they write the same aggregates.
//!
//! Reads the driver retries on another node by itself (the store marks them idempotent). A
//! commit whose outcome the store could not tell (its coordinator died mid-request, or heard from
//! too few replicas in time) is settled like a lost race when the command has an idempotency
//! key: the next attempt's SERIAL read completes the round if it was accepted, and the record
//! then answers the request as committed; otherwise the command commits now. A store node lost
//! under load then costs the client latency, not an error. Without a key a second commit could
//! not be told from the first, so that error goes back to the caller.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use ledger::Instrument;
use prost::Message;
use trading_proto::events::v1::{EventEnvelope, RawEvent, raw_event::Body};

use super::{
    CommandError, Commands, RequestContext,
    aggregate::{self, Aggregate, Effects},
};
use crate::{
    domain::DomainError,
    store::{AggregateKey, Append, BookEntry, NewEvent, RecordKind, StoreError, Stored},
};

/// How often a command retries after losing a race to another writer.
pub(super) const MAX_ATTEMPTS: u32 = 16;
/// Commits of unknown outcome a command settles and tries again (see the module documentation),
/// pausing so the driver can notice a dead node and send the next try elsewhere.
const UNKNOWN_OUTCOMES: u32 = 3;
const UNKNOWN_OUTCOME_PAUSE: Duration = Duration::from_millis(50);
pub(super) const LOCK_STRIPES: usize = 1024;
/// Aggregates whose last committed state a stripe keeps (about 64k in all).
const CACHED_PER_STRIPE: usize = 64;

/// One lock stripe: held while a command runs on any of its aggregates, and their last states.
#[derive(Default)]
pub(super) struct Stripe {
    cached: HashMap<AggregateKey, Stored>,
}

impl Stripe {
    fn remember(&mut self, key: AggregateKey, stored: Stored) {
        if self.cached.len() >= CACHED_PER_STRIPE
            && !self.cached.contains_key(&key)
            && let Some(evicted) = self.cached.keys().next().cloned()
        {
            // Any entry will do: a state not cached is one read away.
            self.cached.remove(&evicted);
        }
        self.cached.insert(key, stored);
    }
}

/// An idempotency key and what the request under it must look like.
pub(super) struct Idempotency<'a> {
    pub kind: RecordKind,
    pub key: &'a str,
    pub fingerprint: String,
}

/// What a request stored under an idempotency key: its shape and its first response.
#[derive(Clone, PartialEq, Message)]
struct IdempotencyRecord {
    #[prost(string, tag = "1")]
    fingerprint: String,
    #[prost(bytes = "vec", tag = "2")]
    response: Vec<u8>,
}

impl Commands {
    /// The current state of an aggregate, `None` if it was never written.
    pub(super) async fn current<A: Aggregate>(&self, id: &str) -> Result<Option<A>, CommandError> {
        let key = AggregateKey {
            kind: A::KIND,
            id: id.to_owned(),
        };
        let stored = self.store.load(&key, false).await?;
        decode_stored(&key, &stored)
    }

    /// The current state of an instrument, read together with the other placements' (see
    /// `group`): the read starts after this call, so it sees every price committed before it.
    pub(super) async fn instrument_now(
        &self,
        symbol: &str,
    ) -> Result<Option<Instrument>, CommandError> {
        let key = AggregateKey {
            kind: Instrument::KIND,
            id: symbol.to_owned(),
        };
        let stored = self.instruments.call(key.clone()).await?;
        decode_stored(&key, &stored)
    }

    /// The first response to the request under `idempotency`'s key, if one was committed (read
    /// with SERIAL consistency, so a commit in flight is seen); a different request under the
    /// same key is a conflict.
    async fn replay<M: Message + Default>(
        &self,
        key: &AggregateKey,
        idempotency: &Idempotency<'_>,
    ) -> Result<Option<M>, CommandError> {
        match self
            .store
            .load_record(key, idempotency.kind, idempotency.key)
            .await?
        {
            Some(bytes) => replay_record(key, &bytes, idempotency).map(Some),
            None => Ok(None),
        }
    }

    /// The response recorded under an idempotency key, if any.
    pub(super) async fn recorded<M: Message + Default>(
        &self,
        key: &AggregateKey,
        kind: RecordKind,
        record_key: &str,
    ) -> Result<Option<M>, CommandError> {
        let Some(bytes) = self.store.load_record(key, kind, record_key).await? else {
            return Ok(None);
        };
        let record = decode::<IdempotencyRecord>(key, &bytes)?;
        decode(key, &record.response).map(Some)
    }

    /// Runs one command on aggregate `id`: `decide` turns the current state (`None` if the
    /// aggregate does not exist yet) into event bodies, `respond` builds the response from the
    /// new state and the stamped events. A replayed idempotency key returns the first response.
    pub(super) async fn execute<A, M>(
        &self,
        id: &str,
        idempotency: Option<Idempotency<'_>>,
        context: &RequestContext,
        decide: impl Fn(Option<&A>) -> Result<Vec<Body>, DomainError>,
        respond: impl Fn(&A, &[RawEvent]) -> M,
    ) -> Result<M, CommandError>
    where
        A: Aggregate,
        M: Message + Default,
    {
        let key = AggregateKey {
            kind: A::KIND,
            id: id.to_owned(),
        };
        // The stripe count fits usize, so the remainder does too.
        let stripe = (key.stable_hash() % LOCK_STRIPES as u64) as usize;
        let mut stripe = self.locks[stripe].lock().await;
        let mut unknown_outcomes = 0;
        // Index entries written by attempts that did not commit. Each attempt stamps its own time,
        // and a resting order's entry is keyed by it, so a lost attempt's entry would otherwise
        // stay on the book beside the committed one: an earlier place in the queue, and shares of
        // a sized price allotted to a row whose fill then does nothing.
        let mut superseded: Vec<BookEntry> = Vec::new();
        for attempt in 0..MAX_ATTEMPTS {
            let stored = match stripe.cached.remove(&key) {
                Some(stored) if attempt == 0 => stored,
                _ => {
                    let serial = attempt > 0;
                    let (stored, replay) = tokio::join!(self.store.load(&key, serial), async {
                        // A first attempt without a cached state leaves the record to the batch's
                        // `IF NOT EXISTS`; after a lost race, it may be what made the batch lose.
                        match &idempotency {
                            Some(idempotency) if serial => self.replay(&key, idempotency).await,
                            _ => Ok(None),
                        }
                    });
                    if let Some(response) = replay? {
                        return Ok(response);
                    }
                    stored?
                }
            };
            let current: Option<A> = decode_stored(&key, &stored)?;
            let bodies = match decide(current.as_ref()) {
                Ok(bodies) => bodies,
                Err(refused) => {
                    // A retry of a request that was committed is answered as it was the first
                    // time, not judged again against the state its own commit produced.
                    if let Some(idempotency) = &idempotency
                        && let Some(response) = self.replay(&key, idempotency).await?
                    {
                        return Ok(response);
                    }
                    // Refused now, and no attempt of it committed (no record): nothing it indexed
                    // names an order.
                    self.unindex_best_effort(&superseded).await;
                    stripe.remember(key, stored);
                    return Err(refused.into());
                }
            };
            if bodies.is_empty() {
                // Nothing to record (a fill whose order closed meanwhile): no commit, no answer.
                stripe.remember(key, stored);
                return Ok(M::default());
            }
            let events = stamp(&key, stored.version, bodies, context);
            let mut state = current.unwrap_or_default();
            let mut effects = Effects::default();
            for event in &events {
                let before = state.clone();
                state.apply(event).map_err(CommandError::corrupt(&key))?;
                effects.extend(state.effects(&before, event));
            }
            let response = respond(&state, &events);
            let record = idempotency.as_ref().map(|idempotency| {
                let record = IdempotencyRecord {
                    fingerprint: idempotency.fingerprint.clone(),
                    response: response.encode_to_vec(),
                };
                (idempotency.kind, idempotency.key, record.encode_to_vec())
            });
            let occurred_at = SystemTime::now();
            let rows: Vec<NewEvent> = events
                .iter()
                .map(|event| NewEvent {
                    version: event
                        .envelope
                        .as_ref()
                        .map_or(0, |envelope| envelope.version),
                    payload: event.encode_to_vec(),
                    occurred_at,
                })
                .collect();
            let last_version = stored.version + rows.len() as u64;
            let encoded = aggregate::encode(&state);
            let outcome = async {
                // The markers go first: if this process dies after the commit, a sweep finds
                // the events to publish, the resting order to fill, the price to fill at.
                self.before_commit(&key, last_version, &effects).await?;
                self.store
                    .append(Append {
                        key: &key,
                        expected_version: stored.version,
                        state: encoded.clone(),
                        events: &rows,
                        record,
                        rows: effects.rows.clone(),
                    })
                    .await
            }
            .await;
            let committed = match outcome {
                Ok(committed) => committed,
                // Settled by the next attempt (see the module documentation). If it did commit,
                // its marker is there and the outbox's sweep publishes it.
                Err(error)
                    if idempotency.is_some()
                        && error.is_transient()
                        && unknown_outcomes < UNKNOWN_OUTCOMES =>
                {
                    unknown_outcomes += 1;
                    tracing::warn!(
                        aggregate = %key.id,
                        error = &error as &dyn std::error::Error,
                        "commit of unknown outcome; settling it under the idempotency key"
                    );
                    // If it did commit, the next attempt replays its record and never drops
                    // these; if not, and a later attempt commits, they are leftovers.
                    superseded.extend(effects.index);
                    tokio::time::sleep(UNKNOWN_OUTCOME_PAUSE).await;
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            if committed {
                stripe.remember(
                    key.clone(),
                    Stored {
                        state: Some(encoded),
                        version: last_version,
                    },
                );
                if let Some(hook) = &self.after_commit {
                    hook();
                }
                // Sent while the aggregate is still locked, so the outbox hears of its commits
                // in version order.
                self.outbox.committed(key, rows);
                // The request committed here, under its idempotency record, so no other attempt
                // of it (in this process or another) committed: what they indexed is a leftover,
                // unless it is the very row this commit indexed.
                superseded.retain(|entry| !effects.index.iter().any(|kept| kept.same_row(entry)));
                effects.unindex.append(&mut superseded);
                self.after_commit_index(&effects).await;
                return Ok(response);
            }
            superseded.extend(effects.index);
            tracing::debug!(aggregate = %key.id, attempt, "lost a commit race, retrying");
            tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 2)).await;
        }
        Err(CommandError::Contention)
    }
}

impl Commands {
    /// Everything that must be on record before a commit can land: the outbox marker, a resting
    /// order's index entry, a price's fill marker.
    async fn before_commit(
        &self,
        key: &AggregateKey,
        last_version: u64,
        effects: &Effects,
    ) -> Result<(), StoreError> {
        let marker = self.markers.call((key.clone(), last_version));
        let index = futures::future::try_join_all(
            effects
                .index
                .iter()
                .map(|entry| self.store.index_resting(entry)),
        );
        let price = async {
            match &effects.price {
                Some((symbol, version)) => self.store.mark_price(symbol, *version).await,
                None => Ok(()),
            }
        };
        tokio::try_join!(marker, index, price)?;
        Ok(())
    }

    /// Brings the book's index up to date with a commit. A failure only leaves an entry the
    /// fill engine checks against the account when it meets it, so it is logged, not returned.
    async fn after_commit_index(&self, effects: &Effects) {
        let unindex = effects
            .unindex
            .iter()
            .map(|entry| self.store.unindex_resting(entry));
        let requantify = effects
            .requantify
            .iter()
            .map(|(entry, leaves)| self.store.requantify_resting(entry, *leaves));
        let (unindexed, requantified) = tokio::join!(
            futures::future::join_all(unindex),
            futures::future::join_all(requantify)
        );
        log_index_errors(unindexed.into_iter().chain(requantified));
    }

    /// Drops index entries that name no order; a failure is logged (see `after_commit_index`).
    async fn unindex_best_effort(&self, entries: &[BookEntry]) {
        let unindexed = futures::future::join_all(
            entries
                .iter()
                .map(|entry| self.store.unindex_resting(entry)),
        )
        .await;
        log_index_errors(unindexed.into_iter());
    }
}

fn log_index_errors(results: impl Iterator<Item = Result<(), StoreError>>) {
    for error in results.filter_map(Result::err) {
        tracing::warn!(
            error = &error as &dyn std::error::Error,
            "book index not updated; the fill engine drops an entry naming no open order"
        );
    }
}

/// Decodes a message stored for `key`; a failure is corrupt data.
fn decode<M: Message + Default>(key: &AggregateKey, bytes: &[u8]) -> Result<M, CommandError> {
    M::decode(bytes).map_err(CommandError::corrupt(key))
}

fn decode_stored<A: Aggregate>(
    key: &AggregateKey,
    stored: &Stored,
) -> Result<Option<A>, CommandError> {
    match (&stored.state, stored.version) {
        (Some(bytes), version) if version > 0 => aggregate::decode(bytes)
            .map(Some)
            .map_err(CommandError::corrupt(key)),
        _ => Ok(None),
    }
}

fn replay_record<M: Message + Default>(
    key: &AggregateKey,
    bytes: &[u8],
    idempotency: &Idempotency<'_>,
) -> Result<M, CommandError> {
    let record = decode::<IdempotencyRecord>(key, bytes)?;
    if record.fingerprint != idempotency.fingerprint {
        return Err(DomainError::Conflict {
            reason: "IDEMPOTENCY_KEY_REUSED",
            detail: format!(
                "key {:?} was already used for a different request on {}",
                idempotency.key, key.id
            ),
        }
        .into());
    }
    decode(key, &record.response)
}

/// Wraps decided bodies in envelopes with the next versions of `key`.
fn stamp(
    key: &AggregateKey,
    current_version: u64,
    bodies: Vec<Body>,
    context: &RequestContext,
) -> Vec<RawEvent> {
    let now = prost_types::Timestamp::from(SystemTime::now());
    bodies
        .into_iter()
        .zip(current_version + 1..)
        .map(|(body, version)| {
            let mut metadata = context.trace.clone();
            metadata.insert("region".to_owned(), context.region.clone());
            RawEvent {
                envelope: Some(EventEnvelope {
                    // One instant for every event of a command.
                    occurred_at: Some(now),
                    correlation_id: context.correlation_id.clone(),
                    causation_id: context.causation_id.clone(),
                    metadata,
                    ..EventEnvelope::stamp(key.kind.as_str(), &key.id, version, &body)
                }),
                body: Some(body),
            }
        })
        .collect()
}

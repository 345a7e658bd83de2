//! One command on one aggregate: load its state, check the idempotency record, decide, stamp
//! envelopes, and commit events, state and record in one conditional batch; then hand the
//! committed events to the outbox.
//!
//! Commands on one aggregate are serialized inside this process (striped async locks) so they
//! do not fight each other in Paxos; the conditional batch still guards against any other
//! process, and a lost race reloads with a SERIAL read and decides again.

use std::time::{Duration, SystemTime};

use prost::Message;
use trading_proto::events::v1::{EventEnvelope, RawEvent, raw_event::Body};

use super::{
    CommandError, Commands, RequestContext,
    aggregate::{self, Aggregate},
};
use crate::{
    domain::DomainError,
    store::{AggregateKey, Append, NewEvent, RecordKind, Stored},
};

/// How often a command retries after losing a race to another writer.
pub(super) const MAX_ATTEMPTS: u32 = 16;
pub(super) const LOCK_STRIPES: usize = 1024;

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
        let _serialized = self.locks[stripe].lock().await;
        for attempt in 0..MAX_ATTEMPTS {
            let serial = attempt > 0;
            let (stored, replay) = tokio::join!(self.store.load(&key, serial), async {
                match &idempotency {
                    Some(idempotency) => self
                        .store
                        .load_record(&key, idempotency.kind, idempotency.key)
                        .await
                        .map(|record| record.map(|bytes| (bytes, idempotency))),
                    None => Ok(None),
                }
            });
            if let Some((bytes, idempotency)) = replay? {
                return replay_record(&key, &bytes, idempotency);
            }
            let stored = stored?;
            let current: Option<A> = decode_stored(&key, &stored)?;
            let bodies = decide(current.as_ref())?;
            let events = stamp(&key, stored.version, bodies, context);
            let mut state = current.unwrap_or_default();
            for event in &events {
                state.apply(event).map_err(CommandError::corrupt(&key))?;
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
            // The marker goes first: if this process dies after the commit, a sweep finds it.
            self.store.mark_pending(&key, last_version).await?;
            let committed = self
                .store
                .append(Append {
                    key: &key,
                    expected_version: stored.version,
                    state: aggregate::encode(&state),
                    events: &rows,
                    record,
                })
                .await?;
            if committed {
                if let Some(hook) = &self.after_commit {
                    hook();
                }
                // Sent while the aggregate is still locked, so the outbox hears of its commits
                // in version order.
                self.outbox.committed(key, rows);
                return Ok(response);
            }
            tracing::debug!(aggregate = %key.id, attempt, "lost a commit race, retrying");
            tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 2)).await;
        }
        Err(CommandError::Contention)
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

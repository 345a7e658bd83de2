//! Stage 2, enrich: a batch of raw events against the relay's state, in memory. Each event is
//! decoded, brought up to the current schema (`upcast`), checked to be its aggregate's next
//! version, enriched by the pure rules (`enrich`) and stamped (`publish`); the batch becomes one
//! journal entry: its outputs, its dead letters and the state entries it changed.

use std::collections::HashSet;

use async_nats::jetstream;
use platform::names::Aggregate;
use prost::Message;
use trading_proto::events::v1::{EventEnvelope, RawEvent};

use crate::{
    Pipeline, PipelineError,
    enrich::{self, Bodies, EnrichError, Holder, RiskRules},
    journal::{Journal, JournalDeadLetter},
    metrics::Count,
    state::{Dirty, RelayState},
    upcast::upcast,
};

impl Pipeline {
    /// Enriches a batch in memory: its outputs, dead letters and the state entries it changed.
    pub(crate) fn enrich_batch(
        &self,
        aggregate: Aggregate,
        batch: &[jetstream::Message],
    ) -> Result<Journal, PipelineError> {
        let mut journal = Journal::default();
        let mut state = self.lock_state()?;
        let mut enriching = Enriching {
            state: &mut state,
            rules: self.rules,
            dirty: HashSet::new(),
        };
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
            match enriching.event(aggregate, &message.payload) {
                Ok(Some((envelope, bodies))) => {
                    journal
                        .outputs
                        .extend(self.stamp(&envelope, aggregate, bodies));
                }
                Ok(None) => self.counters.add(Count::Duplicates, 1),
                Err(reason) => {
                    // An alert: money the regions will not show until someone looks (the
                    // metric relay.raw_events.dead_lettered counts these too).
                    tracing::error!(
                        sequence,
                        subject = %message.subject,
                        %reason,
                        "raw event sent to the dead-letter stream"
                    );
                    journal.dead_letters.push(JournalDeadLetter {
                        payload: message.payload.clone(),
                        sequence,
                        reason: reason.to_string(),
                    });
                }
            }
        }
        let dirty = enriching.dirty;
        journal.writes = state.writes(dirty);
        Ok(journal)
    }
}

/// A batch being enriched: the state it reads and changes, and the entries it changed.
struct Enriching<'a> {
    state: &'a mut RelayState,
    rules: RiskRules,
    dirty: HashSet<Dirty>,
}

impl Enriching<'_> {
    /// Enriches one raw event of `aggregate`'s stream into its envelope and bodies: `Ok(None)`
    /// for an event already applied, `Err` for one that can never be processed.
    fn event(
        &mut self,
        aggregate: Aggregate,
        payload: &[u8],
    ) -> Result<Option<(EventEnvelope, Bodies)>, EnrichError> {
        let mut raw = RawEvent::decode(payload).map_err(EnrichError::Undecodable)?;
        upcast(&mut raw)?;
        let envelope = raw.envelope.clone().ok_or(EnrichError::NoEnvelope)?;
        if Aggregate::parse(&envelope.aggregate_type) != Some(aggregate) {
            return Err(EnrichError::WrongStream {
                event_type: envelope.event_type,
                aggregate,
            });
        }
        tracing::Span::current().record("aggregate", envelope.aggregate_id.as_str());
        let id = envelope.aggregate_id.as_str();
        let current = match aggregate {
            Aggregate::Account => self.state.books.get(id).map_or(0, |book| book.version),
            Aggregate::Instrument => self.state.instruments.get(id).map_or(0, |i| i.version),
        };
        if envelope.version <= current {
            return Ok(None);
        }
        if envelope.version != current + 1 {
            // Events of one aggregate arrive in version order; anything but the next version
            // is a corrupt stream, not something to wait for.
            return Err(EnrichError::OutOfOrder {
                current,
                found: envelope.version,
            });
        }
        let bodies = match aggregate {
            Aggregate::Account => self.account(id, &raw)?,
            Aggregate::Instrument => self.instrument(id, &raw)?,
        };
        Ok(Some((envelope, bodies)))
    }

    /// A raw account event against the account's book.
    fn account(&mut self, id: &str, raw: &RawEvent) -> Result<Bodies, EnrichError> {
        let state = &mut *self.state;
        let mut book = state.books.get(id).cloned().unwrap_or_default();
        let bodies = enrich::enrich_account(&mut book, &state.instruments, self.rules, raw)?;
        let symbols: Vec<String> = book.positions.keys().cloned().collect();
        state.books.insert(id.to_owned(), book);
        for symbol in symbols {
            state.reindex(id, &symbol);
        }
        self.dirty.insert(Dirty::Book(id.to_owned()));
        Ok(bodies)
    }

    /// A raw instrument event against the instrument and the accounts holding it.
    fn instrument(&mut self, id: &str, raw: &RawEvent) -> Result<Bodies, EnrichError> {
        let state = &mut *self.state;
        let mut instrument = state.instruments.get(id).cloned().unwrap_or_default();
        let flagged = state.stop_loss.get(id).cloned().unwrap_or_default();
        let holders = state
            .holders
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|account| state.books.get(account))
            .map(|book| Holder {
                book,
                flagged: flagged.contains(&book.account_id),
            });
        let (bodies, flags) = enrich::enrich_instrument(&mut instrument, holders, self.rules, raw)?;
        state.instruments.insert(id.to_owned(), instrument);
        self.dirty.insert(Dirty::Instrument(id.to_owned()));
        if !flags.is_empty() {
            let entry = state.stop_loss.entry(id.to_owned()).or_default();
            for (account, on) in flags {
                if on {
                    entry.insert(account);
                } else {
                    entry.remove(&account);
                }
            }
            self.dirty.insert(Dirty::StopLoss(id.to_owned()));
        }
        Ok(bodies)
    }
}

//! Stage 1, consume: one loop per raw stream (accounts, market), each strictly in stream order,
//! so per-aggregate order holds by construction. A loop takes a batch, enriches it in memory
//! (`enrich_batch`), stores the batch's outputs and state as one journal entry (`journal`),
//! publishes every output awaiting the acks while it stores the state, then the checkpoint
//! (`publish`), and only then acknowledges the batch. A crash before the journal entry is stored replays
//! from the checkpoint (nothing of the batch was published); a crash after it finishes the
//! entry on restart, republishing exactly what was enriched, under the same ids, which
//! JetStream de-duplicates and version-checking consumers skip.

use std::{collections::HashSet, sync::Arc, time::Duration};

use async_nats::jetstream;
use futures::StreamExt;
use platform::{names::Aggregate, telemetry::Causes};
use prost::Message;
use tokio_util::sync::CancellationToken;
use trading_proto::events::v1::{RawEvent, raw_event::Body as Raw};

use crate::{Pipeline, PipelineError, metrics::Count};

const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Pipeline {
    /// Consumes `aggregate`'s raw stream until `shutdown`; failures are retried with backoff,
    /// never skipped.
    pub(crate) async fn run(self: Arc<Self>, aggregate: Aggregate, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = tokio::select! {
                result = self.consume(aggregate, &shutdown) => result,
                () = shutdown.cancelled() => return,
            };
            let Err(error) = result else {
                return;
            };
            self.counters.add(Count::Retries, 1);
            tracing::warn!(
                stream = self.config.raw_stream(aggregate),
                error = %Causes(&error),
                retry_in_ms = backoff.as_millis() as u64,
                "relay loop failed; restarting from the checkpoint"
            );
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            if let Err(error) = self.reload(aggregate).await {
                tracing::warn!(error = %Causes(&error), "cannot reload relay state");
            }
        }
    }

    /// Back to the last stored state of this loop's own entries: the failed batch may have
    /// half-applied them. The other loop's entries stay: it may be mid-batch, and rolled back
    /// under its feet it would store them older than its checkpoint, and refuse every later
    /// event of those aggregates.
    async fn reload(&self, aggregate: Aggregate) -> Result<(), PipelineError> {
        let stored = self.store.load().await?;
        self.lock_state()?
            .restore(aggregate, self.config.raw_stream(aggregate), stored);
        Ok(())
    }

    async fn consume(
        &self,
        aggregate: Aggregate,
        shutdown: &CancellationToken,
    ) -> Result<(), PipelineError> {
        self.recover(aggregate).await?;
        let stream = self.config.raw_stream(aggregate);
        let received = |source| PipelineError::Receive {
            stream: stream.to_owned(),
            source,
        };
        let mut messages = self.consumer(aggregate).await?;
        loop {
            // Take what is ready, up to a batch, waiting only for the first message.
            let first = tokio::select! {
                message = messages.next() => message,
                () = shutdown.cancelled() => return Ok(()),
            };
            let Some(first) = first else {
                return Err(PipelineError::ConsumerEnded {
                    stream: stream.to_owned(),
                });
            };
            let mut batch = vec![first.map_err(received)?];
            while batch.len() < self.config.batch_size {
                match tokio::time::timeout(Duration::ZERO, messages.next()).await {
                    Ok(Some(message)) => batch.push(message.map_err(received)?),
                    _ => break,
                }
            }
            self.process(aggregate, batch).await?;
        }
    }

    /// Enrich, journal, publish, then acknowledge.
    async fn process(
        &self,
        aggregate: Aggregate,
        batch: Vec<jetstream::Message>,
    ) -> Result<(), PipelineError> {
        if aggregate == Aggregate::Account {
            self.await_instruments(&batch).await?;
        }
        let journal = self.enrich_batch(aggregate, &batch)?;
        // Nothing to publish is nothing a replay could publish differently.
        if !journal.outputs.is_empty() || !journal.dead_letters.is_empty() {
            self.may_write()?;
            self.store
                .write_journal(self.config.raw_stream(aggregate), &journal)
                .await?;
        }
        self.finish(aggregate, &journal).await?;
        for message in &batch {
            message.ack().await.map_err(|source| PipelineError::Ack {
                stream: self.config.raw_stream(aggregate).to_owned(),
                source,
            })?;
        }
        self.counters.add(Count::Processed, batch.len() as u64);
        Ok(())
    }

    /// Trades name their instrument; its reference data comes from the market stream, which
    /// may lag a little. Wait briefly for it rather than publish a trade without a name.
    async fn await_instruments(&self, batch: &[jetstream::Message]) -> Result<(), PipelineError> {
        let symbols: HashSet<String> = batch
            .iter()
            .filter_map(|message| RawEvent::decode(message.payload.as_ref()).ok())
            .filter_map(|raw| match raw.body {
                Some(Raw::TradeExecuted(trade)) => Some(trade.symbol),
                _ => None,
            })
            .collect();
        for _ in 0..40 {
            let known = {
                let state = self.lock_state()?;
                symbols
                    .iter()
                    .all(|symbol| state.instruments.contains_key(symbol))
            };
            if known {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!(
            ?symbols,
            "enriching trades before their instrument's reference data"
        );
        Ok(())
    }
}

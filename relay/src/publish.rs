//! Stage 4, publish: enriched events stamped with envelopes and deterministic ids, published
//! in order with every ack awaited while the batch's state is stored, dead letters before them,
//! and only then the checkpoint (`finish`, which carries out a journal entry).

use async_nats::{HeaderMap, header::NATS_MESSAGE_ID, jetstream::context::PublishAckFuture};
use bytes::Bytes;
use platform::names::{Aggregate, aggregate_subject};
use prost::Message;
use trading_proto::events::v1::{EnrichedEvent, EventEnvelope};

use crate::{
    Pipeline, PipelineError,
    enrich::Bodies,
    journal::{Journal, JournalDeadLetter, JournalOutput},
    metrics::Count,
    streams::dead_letter_subject,
};

/// Namespace of the deterministic ids of enriched events (UUID v5).
const ENRICHED_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6c1f_7c2e_0f4b_4d0e_9a57_3b8e_2d11_a001);

/// Outputs are published in chunks of this many: async-nats stalls with more than 5,000
/// acknowledgements pending.
const PUBLISH_CHUNK: usize = 4_096;

impl Pipeline {
    /// Wraps bodies in envelopes: the raw event's aggregate and version, parts 1..n, and ids
    /// derived from the raw event id so a replay produces the same messages.
    pub(crate) fn stamp(
        &self,
        raw: &EventEnvelope,
        aggregate: Aggregate,
        bodies: Bodies,
    ) -> Vec<JournalOutput> {
        let parts = u32::try_from(bodies.len()).unwrap_or(u32::MAX);
        let subject = aggregate_subject(&self.config.enriched_prefix, aggregate, &raw.aggregate_id);
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

    /// Carries out a journal entry: dead letters, outputs, state and checkpoint. Safe to repeat:
    /// messages are de-duplicated by id and state writes are whole values.
    pub(crate) async fn finish(
        &self,
        aggregate: Aggregate,
        journal: &Journal,
    ) -> Result<(), PipelineError> {
        let stream = self.config.raw_stream(aggregate);
        self.may_write()?;
        self.dead_letter(stream, &journal.dead_letters).await?;
        // The state goes out beside the outputs, not after them: until the checkpoint moves,
        // a restart takes the batch's state from its journal entry and writes it again, so
        // state stored ahead of the checkpoint is always covered by the entry.
        tokio::try_join!(self.publish(&journal.outputs), async {
            Ok(self.store.save_state(&journal.writes).await?)
        })?;
        self.store
            .save_checkpoint(stream, journal.last_sequence)
            .await?;
        self.lock_state()?
            .checkpoints
            .insert(stream.to_owned(), journal.last_sequence);
        Ok(())
    }

    /// Publishes in order on one connection and awaits every ack.
    async fn publish(&self, outputs: &[JournalOutput]) -> Result<(), PipelineError> {
        for chunk in outputs.chunks(PUBLISH_CHUNK) {
            let mut acks = Vec::with_capacity(chunk.len());
            for output in chunk {
                let mut headers = HeaderMap::new();
                headers.insert(NATS_MESSAGE_ID, output.message_id.as_str());
                if !output.traceparent.is_empty() {
                    headers.insert("traceparent", output.traceparent.as_str());
                }
                let ack = self
                    .send(&output.subject, headers, output.event.clone())
                    .await?;
                acks.push((&output.subject, ack));
            }
            for (subject, ack) in acks {
                acked(subject, ack).await?;
            }
        }
        self.counters.add(Count::Published, outputs.len() as u64);
        Ok(())
    }

    /// Sends raw stream `stream`'s messages that can never be processed, with why, to the
    /// dead-letter stream, one at a time.
    async fn dead_letter(
        &self,
        stream: &str,
        dead: &[JournalDeadLetter],
    ) -> Result<(), PipelineError> {
        let subject = dead_letter_subject(&self.config, stream);
        for letter in dead {
            let mut headers = HeaderMap::new();
            headers.insert(
                NATS_MESSAGE_ID,
                format!("{stream}/{}", letter.sequence).as_str(),
            );
            headers.insert("reason", letter.reason.as_str());
            headers.insert("source-stream", stream);
            headers.insert("source-sequence", letter.sequence.to_string().as_str());
            let ack = self.send(&subject, headers, letter.payload.clone()).await?;
            acked(&subject, ack).await?;
            self.counters.add(Count::DeadLettered, 1);
        }
        Ok(())
    }

    /// Publishes one message; the returned future resolves with its ack.
    async fn send(
        &self,
        subject: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<PublishAckFuture, PipelineError> {
        self.jetstream
            .publish_with_headers(subject.to_owned(), headers, payload)
            .await
            .map_err(|source| PipelineError::Publish {
                subject: subject.to_owned(),
                source,
            })
    }
}

/// Waits for the ack of a message sent to `subject`.
async fn acked(subject: &str, ack: PublishAckFuture) -> Result<(), PipelineError> {
    match ack.await {
        Ok(_ack) => Ok(()),
        Err(source) => Err(PipelineError::Publish {
            subject: subject.to_owned(),
            source,
        }),
    }
}

//! Setup: the streams the relay writes (enriched events, dead letters) and the durable
//! consumer of each raw stream it reads, positioned at the stored checkpoint.

use std::time::Duration;

use async_nats::jetstream::{
    consumer::{self, pull},
    stream,
};
use platform::names::Aggregate;

use crate::{Config, Pipeline, PipelineError};

/// Dead letters travel on `deadletter.<dead-letter stream>.<raw stream>`.
const DEAD_LETTER_SUBJECT_PREFIX: &str = "deadletter";

/// The subject of the dead letters of raw stream `stream` (`>`: of every raw stream).
pub(crate) fn dead_letter_subject(config: &Config, stream: &str) -> String {
    format!(
        "{DEAD_LETTER_SUBJECT_PREFIX}.{}.{stream}",
        config.dead_letter_stream
    )
}

impl Pipeline {
    /// Creates the enriched and dead-letter streams if they are missing.
    pub(crate) async fn ensure_streams(&self) -> Result<(), PipelineError> {
        for (name, subject) in [
            (
                &self.config.enriched_stream,
                format!("{}.>", self.config.enriched_prefix),
            ),
            (
                &self.config.dead_letter_stream,
                dead_letter_subject(&self.config, ">"),
            ),
        ] {
            self.jetstream
                .get_or_create_stream(stream::Config {
                    name: name.clone(),
                    subjects: vec![subject],
                    storage: stream::StorageType::File,
                    duplicate_window: self.config.duplicate_window(),
                    ..Default::default()
                })
                .await
                .map_err(|source| PipelineError::CreateStream {
                    stream: name.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// The durable consumer of `aggregate`'s raw stream, positioned right after the stored
    /// checkpoint. It is recreated at every start: redeliveries of a previous run could
    /// otherwise arrive after newer messages and break per-account order.
    pub(crate) async fn consumer(
        &self,
        aggregate: Aggregate,
    ) -> Result<pull::Stream, PipelineError> {
        let stream_name = self.config.raw_stream(aggregate);
        let stream = loop {
            match self.jetstream.get_stream(stream_name).await {
                Ok(stream) => break stream,
                Err(error) => {
                    tracing::info!(stream = %stream_name, %error, "waiting for the raw stream");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let checkpoint = self.lock_state()?.checkpoint(stream_name);
        let durable = crate::consumer_name(stream_name);
        // Absent on the first start; any other failure shows up when creating it below.
        let _ = stream.delete_consumer(&durable).await;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(durable.clone()),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: checkpoint + 1,
                },
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(60),
                max_ack_pending: 20_000,
                ..Default::default()
            })
            .await
            .map_err(|source| PipelineError::CreateConsumer { durable, source })?;
        tracing::info!(stream = %stream_name, from_sequence = checkpoint + 1, "consuming");
        consumer
            .stream()
            .max_messages_per_batch(self.config.batch_size)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|source| PipelineError::Consume {
                stream: stream_name.to_owned(),
                source,
            })
    }
}

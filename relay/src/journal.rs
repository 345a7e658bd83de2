//! Stage 3, journal: what makes a replay publish the same sets of enriched events. What a raw
//! event becomes depends on the other loop's progress (a trade is valued at the latest price
//! the market loop has seen; a price move alerts the holders the account loop has booked), so
//! enriching a batch again after a crash could produce a different set under the same event
//! ids. A batch's outputs, dead letters and state writes are therefore stored as one journal
//! entry in the state bucket before anything is published, and a restart finishes that entry
//! instead of enriching its raw events again.

use bytes::Bytes;
use platform::names::Aggregate;
use prost::Message;

use crate::{
    Pipeline, PipelineError,
    metrics::Count,
    state::{Corruption, Entry, StateError, StateStore},
};

/// A journal entry: everything one batch of a source stream does, written before any of it is.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Journal {
    /// The last raw sequence of the batch: the checkpoint the entry ends with.
    #[prost(uint64, tag = "1")]
    pub last_sequence: u64,
    #[prost(message, repeated, tag = "2")]
    pub outputs: Vec<JournalOutput>,
    #[prost(message, repeated, tag = "3")]
    pub dead_letters: Vec<JournalDeadLetter>,
    /// State entries as stored in the bucket (key, encoded value).
    #[prost(message, repeated, tag = "4")]
    pub writes: Vec<JournalWrite>,
}

/// One enriched event as published: subject, headers and the encoded event.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JournalOutput {
    #[prost(string, tag = "1")]
    pub subject: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub event: Bytes,
    #[prost(string, tag = "3")]
    pub message_id: String,
    #[prost(string, tag = "4")]
    pub traceparent: String,
}

/// One raw message that can never be processed, with why.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JournalDeadLetter {
    #[prost(uint64, tag = "1")]
    pub sequence: u64,
    #[prost(string, tag = "2")]
    pub reason: String,
    #[prost(bytes = "bytes", tag = "3")]
    pub payload: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct JournalWrite {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// Journal entries are split into values of at most this size: the servers take messages of up
/// to 1 MiB, and one price move can alert thousands of holders.
const JOURNAL_CHUNK: usize = 512 * 1024;

impl StateStore {
    /// Stores `journal` as `stream`'s last batch: the chunks first, then the head (`<last
    /// sequence> <chunks>`) that names them, so a crash in between leaves the previous head,
    /// which the checkpoint covers.
    pub async fn write_journal(&self, stream: &str, journal: &Journal) -> Result<(), StateError> {
        let head_key = Entry::Journal.key(stream);
        let encoded = Bytes::from(journal.encode_to_vec());
        let chunks: Vec<(String, Bytes)> = (0..encoded.len().div_ceil(JOURNAL_CHUNK))
            .map(|index| {
                let start = index * JOURNAL_CHUNK;
                let end = (start + JOURNAL_CHUNK).min(encoded.len());
                (format!("{head_key}.{index}"), encoded.slice(start..end))
            })
            .collect();
        let head = format!("{} {}", journal.last_sequence, chunks.len());
        self.put_all(chunks, 8).await?;
        self.put(head_key, head.into()).await
    }

    /// `stream`'s last journal entry if it ends after `checkpoint`, i.e. was not finished.
    pub async fn unfinished_journal(
        &self,
        stream: &str,
        checkpoint: u64,
    ) -> Result<Option<Journal>, StateError> {
        let key = Entry::Journal.key(stream);
        let Some(head) = self.get(&key).await? else {
            return Ok(None);
        };
        let corrupt = |source: Corruption| StateError::Corrupt {
            key: key.clone(),
            source,
        };
        let text = std::str::from_utf8(&head).map_err(|e| corrupt(e.into()))?;
        let (last_sequence, chunks) = text
            .split_once(' ')
            .and_then(|(sequence, chunks)| {
                Some((sequence.parse::<u64>().ok()?, chunks.parse().ok()?))
            })
            .ok_or_else(|| corrupt(Corruption::NoJournalHead(text.to_owned())))?;
        if last_sequence <= checkpoint {
            return Ok(None);
        }
        let mut encoded = Vec::new();
        for index in 0..chunks {
            let chunk_key = format!("{key}.{index}");
            let chunk = self
                .get(&chunk_key)
                .await?
                .ok_or_else(|| corrupt(Corruption::MissingChunk(chunk_key)))?;
            encoded.extend_from_slice(&chunk);
        }
        let journal = Journal::decode(encoded.as_slice()).map_err(|e| corrupt(e.into()))?;
        if journal.last_sequence != last_sequence {
            return Err(corrupt(Corruption::SequenceMismatch {
                head: last_sequence,
                chunks: journal.last_sequence,
            }));
        }
        Ok(Some(journal))
    }
}

impl Pipeline {
    /// Finishes the journal entry a crash interrupted, before consuming anything new, so its
    /// raw events are never enriched a second time.
    pub(crate) async fn recover(&self, aggregate: Aggregate) -> Result<(), PipelineError> {
        let stream = self.config.raw_stream(aggregate);
        let checkpoint = self.lock_state()?.checkpoint(stream);
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
        self.finish(aggregate, &journal).await?;
        self.counters.add(Count::Recovered, 1);
        Ok(())
    }
}

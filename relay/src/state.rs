//! The relay's own state, in a JetStream key-value bucket that only the relay touches: every
//! account book, every instrument, stop-loss flags, per source stream the last sequence whose
//! effects are stored, and per source stream a journal of its last batch. Loaded whole at start.
//!
//! The journal is what makes a replay publish the same sets of enriched events: what a raw
//! event becomes depends on the other loop's progress (a trade is valued at the latest price
//! the market loop has seen; a price move alerts the holders the account loop has booked), so
//! enriching a batch again after a crash could produce a different set under the same event
//! ids. A batch's outputs, dead letters and state writes are therefore stored as one journal
//! entry before anything is published, and a restart finishes that entry instead of enriching
//! its raw events again.

use std::collections::{BTreeSet, HashMap};

use async_nats::jetstream::{self, kv};

use futures::{StreamExt, TryStreamExt};
use ledger::{AccountState, Instrument};
use prost::Message;
use trading_proto::trading::v1 as api;

use crate::enrich::StopLossFlags;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state bucket: {0}")]
    Bucket(String),
    #[error("state entry {key} is unreadable: {problem}")]
    Corrupt { key: String, problem: String },
}

fn bucket_error(error: impl std::fmt::Display) -> StateError {
    StateError::Bucket(error.to_string())
}

/// Everything the relay knows, in memory.
#[derive(Debug, Default)]
pub struct RelayState {
    pub books: HashMap<String, AccountState>,
    pub instruments: HashMap<String, Instrument>,
    pub stop_loss: StopLossFlags,
    /// Accounts holding each symbol (quantity above zero), derived from the books.
    pub holders: HashMap<String, BTreeSet<String>>,
    pub checkpoints: HashMap<String, u64>,
}

impl RelayState {
    /// Sets one entry from its stored form (`account.<id>`, `instrument.<symbol>`,
    /// `stoploss.<symbol>`, `checkpoint.<stream>`); other keys are not state and are ignored.
    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<(), StateError> {
        let corrupt = |problem: String| StateError::Corrupt {
            key: key.to_owned(),
            problem,
        };
        if let Some(account) = key.strip_prefix("account.") {
            let decoded = api::Account::decode(value).map_err(|e| corrupt(e.to_string()))?;
            let book = AccountState::from_api(&decoded).map_err(|e| corrupt(e.to_string()))?;
            let symbols: Vec<String> = book.positions.keys().cloned().collect();
            self.books.insert(account.to_owned(), book);
            for symbol in symbols {
                self.reindex(account, &symbol);
            }
        } else if let Some(symbol) = key.strip_prefix("instrument.") {
            let decoded = api::Instrument::decode(value).map_err(|e| corrupt(e.to_string()))?;
            let instrument = Instrument::from_api(&decoded).map_err(|e| corrupt(e.to_string()))?;
            self.instruments.insert(symbol.to_owned(), instrument);
        } else if let Some(symbol) = key.strip_prefix("stoploss.") {
            let text = std::str::from_utf8(value).map_err(|e| corrupt(e.to_string()))?;
            let flagged = text
                .lines()
                .filter(|line| !line.is_empty())
                .map(str::to_owned)
                .collect();
            self.stop_loss.insert(symbol.to_owned(), flagged);
        } else if let Some(stream) = key.strip_prefix("checkpoint.") {
            let text = std::str::from_utf8(value).map_err(|e| corrupt(e.to_string()))?;
            let sequence = text
                .parse()
                .map_err(|_| corrupt(format!("{text:?} is no sequence")))?;
            self.checkpoints.insert(stream.to_owned(), sequence);
        }
        Ok(())
    }

    /// The stored form of the `dirty` entries, as `set` reads them back.
    pub fn writes(&self, dirty: impl IntoIterator<Item = Dirty>) -> Vec<JournalWrite> {
        dirty
            .into_iter()
            .filter_map(|dirty| match dirty {
                Dirty::Book(account) => self
                    .books
                    .get(&account)
                    .map(|book| (format!("account.{account}"), book.to_api().encode_to_vec())),
                Dirty::Instrument(symbol) => self
                    .instruments
                    .get(&symbol)
                    .map(|i| (format!("instrument.{symbol}"), i.to_api().encode_to_vec())),
                Dirty::StopLoss(symbol) => {
                    let flagged = self.stop_loss.get(&symbol).cloned().unwrap_or_default();
                    let text: Vec<String> = flagged.into_iter().collect();
                    Some((format!("stoploss.{symbol}"), text.join("\n").into_bytes()))
                }
            })
            .map(|(key, value)| JournalWrite {
                key,
                value: value.into(),
            })
            .collect()
    }

    /// Recomputes the holders of `symbol` in `book` after the book changed.
    pub fn reindex(&mut self, account_id: &str, symbol: &str) {
        let held = self
            .books
            .get(account_id)
            .and_then(|book| book.positions.get(symbol))
            .is_some_and(|position| position.quantity > 0);
        let holders = self.holders.entry(symbol.to_owned()).or_default();
        if held {
            holders.insert(account_id.to_owned());
        } else {
            holders.remove(account_id);
        }
    }
}

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
    pub event: bytes::Bytes,
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
    pub payload: bytes::Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct JournalWrite {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: bytes::Bytes,
}

/// Journal entries are split into values of at most this size: the servers take messages of up
/// to 1 MiB, and one price move can alert thousands of holders.
const JOURNAL_CHUNK: usize = 512 * 1024;
const JOURNAL_PREFIX: &str = "journal.";

/// A change to persist.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dirty {
    Book(String),
    Instrument(String),
    StopLoss(String),
}

pub struct StateStore {
    bucket: kv::Store,
}

impl StateStore {
    pub async fn open(jetstream: &jetstream::Context, bucket: &str) -> Result<Self, StateError> {
        // The bucket's backing stream is created directly: `create_key_value` first asks for
        // account limits in a shape the NATS 2.9 servers we run do not answer.
        jetstream
            .get_or_create_stream(jetstream::stream::Config {
                name: format!("KV_{bucket}"),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                storage: jetstream::stream::StorageType::File,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: jetstream::stream::DiscardPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(bucket_error)?;
        let bucket = jetstream
            .get_key_value(bucket)
            .await
            .map_err(bucket_error)?;
        Ok(Self { bucket })
    }

    /// Reads the whole state back.
    pub async fn load(&self) -> Result<RelayState, StateError> {
        let mut state = RelayState::default();
        let keys: Vec<String> = self
            .bucket
            .keys()
            .await
            .map_err(bucket_error)?
            .try_filter(|key| futures::future::ready(!key.starts_with(JOURNAL_PREFIX)))
            .try_collect()
            .await
            .map_err(bucket_error)?;
        let entries = futures::stream::iter(keys)
            .map(|key| async move {
                let value = self.bucket.get(&key).await.map_err(bucket_error)?;
                Ok::<_, StateError>((key, value))
            })
            .buffer_unordered(64)
            .try_collect::<Vec<_>>()
            .await?;
        for (key, value) in entries {
            if let Some(value) = value {
                state.set(&key, &value)?;
            }
        }
        Ok(state)
    }

    /// Writes state entries, then the checkpoint: a checkpoint never runs ahead of the state it
    /// covers.
    pub async fn save(
        &self,
        writes: &[JournalWrite],
        stream: &str,
        sequence: u64,
    ) -> Result<(), StateError> {
        // Owned items: futures borrowing from the caller do not satisfy the spawned loop's
        // lifetime bounds.
        let writes: Vec<(String, bytes::Bytes)> = writes
            .iter()
            .map(|write| (write.key.clone(), write.value.clone()))
            .collect();
        futures::stream::iter(writes)
            .map(|(key, value)| async move {
                self.bucket.put(key, value).await.map_err(bucket_error)
            })
            .buffer_unordered(128)
            .try_collect::<Vec<_>>()
            .await?;
        self.bucket
            .put(format!("checkpoint.{stream}"), sequence.to_string().into())
            .await
            .map_err(bucket_error)?;
        Ok(())
    }

    /// Stores `journal` as `stream`'s last batch: the chunks first, then the head that names
    /// them, so a crash in between leaves the previous head, which the checkpoint covers.
    pub async fn write_journal(&self, stream: &str, journal: &Journal) -> Result<(), StateError> {
        let encoded = bytes::Bytes::from(journal.encode_to_vec());
        let chunks: Vec<(String, bytes::Bytes)> = (0..encoded.len().div_ceil(JOURNAL_CHUNK))
            .map(|index| {
                let start = index * JOURNAL_CHUNK;
                let end = (start + JOURNAL_CHUNK).min(encoded.len());
                (
                    format!("{JOURNAL_PREFIX}{stream}.{index}"),
                    encoded.slice(start..end),
                )
            })
            .collect();
        let count = chunks.len();
        futures::stream::iter(chunks)
            .map(|(key, chunk)| async move { self.bucket.put(key, chunk).await.map_err(bucket_error) })
            .buffer_unordered(8)
            .try_collect::<Vec<_>>()
            .await?;
        let head = format!("{} {count}", journal.last_sequence);
        self.bucket
            .put(format!("{JOURNAL_PREFIX}{stream}"), head.into())
            .await
            .map_err(bucket_error)?;
        Ok(())
    }

    /// `stream`'s last journal entry if it ends after `checkpoint`, i.e. was not finished.
    pub async fn unfinished_journal(
        &self,
        stream: &str,
        checkpoint: u64,
    ) -> Result<Option<Journal>, StateError> {
        let key = format!("{JOURNAL_PREFIX}{stream}");
        let Some(head) = self.bucket.get(&key).await.map_err(bucket_error)? else {
            return Ok(None);
        };
        let corrupt = |problem: String| StateError::Corrupt {
            key: key.clone(),
            problem,
        };
        let text = std::str::from_utf8(&head).map_err(|e| corrupt(e.to_string()))?;
        let (last_sequence, chunks) = text
            .split_once(' ')
            .and_then(|(sequence, chunks)| {
                Some((sequence.parse::<u64>().ok()?, chunks.parse().ok()?))
            })
            .ok_or_else(|| corrupt(format!("{text:?} is no journal head")))?;
        if last_sequence <= checkpoint {
            return Ok(None);
        }
        let mut encoded = Vec::new();
        for index in 0..chunks {
            let chunk_key = format!("{key}.{index}");
            let chunk = self
                .bucket
                .get(&chunk_key)
                .await
                .map_err(bucket_error)?
                .ok_or_else(|| corrupt(format!("chunk {chunk_key} is missing")))?;
            encoded.extend_from_slice(&chunk);
        }
        let journal = Journal::decode(encoded.as_slice()).map_err(|e| corrupt(e.to_string()))?;
        if journal.last_sequence != last_sequence {
            return Err(corrupt(format!(
                "head says sequence {last_sequence}, chunks say {}",
                journal.last_sequence
            )));
        }
        Ok(Some(journal))
    }
}

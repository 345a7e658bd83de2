//! The relay's own state, in a JetStream key-value bucket that only the relay touches: every
//! account book, every instrument, stop-loss flags, and per source stream the last sequence
//! whose effects are stored. Loaded whole at start; written after each batch's outputs are
//! published, and before the batch is acknowledged.

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
            let Some(value) = value else { continue };
            let corrupt = |problem: String| StateError::Corrupt {
                key: key.clone(),
                problem,
            };
            if let Some(account) = key.strip_prefix("account.") {
                let decoded =
                    api::Account::decode(value.as_ref()).map_err(|e| corrupt(e.to_string()))?;
                let book = AccountState::from_api(&decoded).map_err(|e| corrupt(e.to_string()))?;
                state.books.insert(account.to_owned(), book);
            } else if let Some(symbol) = key.strip_prefix("instrument.") {
                let decoded =
                    api::Instrument::decode(value.as_ref()).map_err(|e| corrupt(e.to_string()))?;
                let instrument =
                    Instrument::from_api(&decoded).map_err(|e| corrupt(e.to_string()))?;
                state.instruments.insert(symbol.to_owned(), instrument);
            } else if let Some(symbol) = key.strip_prefix("stoploss.") {
                let text = String::from_utf8(value.to_vec()).map_err(|e| corrupt(e.to_string()))?;
                let flagged = text
                    .lines()
                    .filter(|line| !line.is_empty())
                    .map(str::to_owned)
                    .collect();
                state.stop_loss.insert(symbol.to_owned(), flagged);
            } else if let Some(stream) = key.strip_prefix("checkpoint.") {
                let text = String::from_utf8(value.to_vec()).map_err(|e| corrupt(e.to_string()))?;
                let sequence = text
                    .parse()
                    .map_err(|_| corrupt(format!("{text:?} is no sequence")))?;
                state.checkpoints.insert(stream.to_owned(), sequence);
            }
        }
        let symbols: Vec<(String, Vec<String>)> = state
            .books
            .iter()
            .map(|(account, book)| (account.clone(), book.positions.keys().cloned().collect()))
            .collect();
        for (account, symbols) in symbols {
            for symbol in symbols {
                state.reindex(&account, &symbol);
            }
        }
        Ok(state)
    }

    /// Writes the dirty entries, then the checkpoint: a checkpoint never runs ahead of the
    /// state it covers.
    pub async fn save(
        &self,
        state: &RelayState,
        dirty: impl IntoIterator<Item = Dirty>,
        stream: &str,
        sequence: u64,
    ) -> Result<(), StateError> {
        let writes: Vec<(String, Vec<u8>)> = dirty
            .into_iter()
            .filter_map(|dirty| match dirty {
                Dirty::Book(account) => state
                    .books
                    .get(&account)
                    .map(|book| (format!("account.{account}"), book.to_api().encode_to_vec())),
                Dirty::Instrument(symbol) => state
                    .instruments
                    .get(&symbol)
                    .map(|i| (format!("instrument.{symbol}"), i.to_api().encode_to_vec())),
                Dirty::StopLoss(symbol) => {
                    let flagged = state.stop_loss.get(&symbol).cloned().unwrap_or_default();
                    let text: Vec<String> = flagged.into_iter().collect();
                    Some((format!("stoploss.{symbol}"), text.join("\n").into_bytes()))
                }
            })
            .collect();
        futures::stream::iter(writes)
            .map(|(key, value)| async move {
                self.bucket
                    .put(key, value.into())
                    .await
                    .map_err(bucket_error)
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
}

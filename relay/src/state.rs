//! Beside the flow, the relay's own state, in a JetStream key-value bucket that only the relay
//! touches: every account book, every instrument, stop-loss flags and, per source stream, the
//! last sequence whose effects are stored (and the journal of its last batch, see `journal`).
//! Loaded whole at start.

use std::{
    collections::{BTreeSet, HashMap},
    num::ParseIntError,
    str::Utf8Error,
};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use ledger::{AccountState, DecimalError, Instrument};
use platform::names::Aggregate;
use prost::Message;
use trading_proto::trading::v1 as api;

use crate::{enrich::StopLossFlags, journal::JournalWrite};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the stream of state bucket {bucket}")]
    CreateBucket {
        bucket: String,
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    #[error("cannot open state bucket {bucket}")]
    OpenBucket {
        bucket: String,
        #[source]
        source: jetstream::context::KeyValueError,
    },
    #[error("cannot list the state bucket's keys")]
    ListKeys(#[source] kv::WatchError),
    #[error("cannot read the state bucket's keys")]
    ReadKeys(#[source] kv::WatcherError),
    #[error("cannot read state entry {key}")]
    Read {
        key: String,
        #[source]
        source: kv::EntryError,
    },
    #[error("cannot write state entry {key}")]
    Write {
        key: String,
        #[source]
        source: kv::PutError,
    },
    #[error("state entry {key} is unreadable")]
    Corrupt {
        key: String,
        #[source]
        source: Corruption,
    },
}

/// Why a stored entry cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum Corruption {
    #[error("undecodable")]
    Undecodable(#[from] prost::DecodeError),
    #[error("bad decimal")]
    Decimal(#[from] DecimalError),
    #[error("not utf-8")]
    NotUtf8(#[from] Utf8Error),
    #[error("{text:?} is no sequence")]
    NoSequence {
        text: String,
        #[source]
        source: ParseIntError,
    },
    #[error("{0:?} is no journal head")]
    NoJournalHead(String),
    #[error("chunk {0} is missing")]
    MissingChunk(String),
    #[error("head says sequence {head}, chunks say {chunks}")]
    SequenceMismatch { head: u64, chunks: u64 },
}

/// The kinds of entry in the bucket, each under `<kind>.<id>`: the key format, defined once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// `account.<id>`: an account's book.
    Book,
    /// `instrument.<symbol>`.
    Instrument,
    /// `stoploss.<symbol>`: the accounts beyond their stop-loss, one a line.
    StopLoss,
    /// `checkpoint.<stream>`: the last raw sequence whose effects are stored.
    Checkpoint,
    /// `journal.<stream>` and its chunks `journal.<stream>.<n>` (see `journal`).
    Journal,
}

impl Entry {
    const ALL: [Self; 5] = [
        Self::Book,
        Self::Instrument,
        Self::StopLoss,
        Self::Checkpoint,
        Self::Journal,
    ];

    const fn kind(self) -> &'static str {
        match self {
            // Books and instruments are keyed by the aggregate they fold.
            Self::Book => Aggregate::Account.as_str(),
            Self::Instrument => Aggregate::Instrument.as_str(),
            Self::StopLoss => "stoploss",
            Self::Checkpoint => "checkpoint",
            Self::Journal => "journal",
        }
    }

    pub(crate) fn key(self, id: &str) -> String {
        format!("{}.{id}", self.kind())
    }

    /// The kind and id of `key`; `None` for a key that is no entry.
    fn parse(key: &str) -> Option<(Self, &str)> {
        let (kind, id) = key.split_once('.')?;
        let entry = Self::ALL.into_iter().find(|entry| entry.kind() == kind)?;
        Some((entry, id))
    }
}

/// Everything the relay knows, in memory.
#[derive(Debug, Default)]
pub struct RelayState {
    pub books: HashMap<String, AccountState>,
    pub(crate) instruments: HashMap<String, Instrument>,
    pub(crate) stop_loss: StopLossFlags,
    /// Accounts holding each symbol (quantity above zero), derived from the books.
    pub(crate) holders: HashMap<String, BTreeSet<String>>,
    pub checkpoints: HashMap<String, u64>,
}

impl RelayState {
    /// Sets one entry from its stored form (see `Entry`); journal and unknown keys are not
    /// state and are ignored.
    pub(crate) fn set(&mut self, key: &str, value: &[u8]) -> Result<(), StateError> {
        self.set_entry(key, value)
            .map_err(|source| StateError::Corrupt {
                key: key.to_owned(),
                source,
            })
    }

    fn set_entry(&mut self, key: &str, value: &[u8]) -> Result<(), Corruption> {
        match Entry::parse(key) {
            Some((Entry::Book, account)) => {
                let book = AccountState::from_api(&api::Account::decode(value)?)?;
                let symbols: Vec<String> = book.positions.keys().cloned().collect();
                self.books.insert(account.to_owned(), book);
                for symbol in symbols {
                    self.reindex(account, &symbol);
                }
            }
            Some((Entry::Instrument, symbol)) => {
                let instrument = Instrument::from_api(&api::Instrument::decode(value)?)?;
                self.instruments.insert(symbol.to_owned(), instrument);
            }
            Some((Entry::StopLoss, symbol)) => {
                let flagged = std::str::from_utf8(value)?
                    .lines()
                    .filter(|line| !line.is_empty())
                    .map(str::to_owned)
                    .collect();
                self.stop_loss.insert(symbol.to_owned(), flagged);
            }
            Some((Entry::Checkpoint, stream)) => {
                let text = std::str::from_utf8(value)?;
                let sequence = text.parse().map_err(|source| Corruption::NoSequence {
                    text: text.to_owned(),
                    source,
                })?;
                self.checkpoints.insert(stream.to_owned(), sequence);
            }
            Some((Entry::Journal, _)) | None => {}
        }
        Ok(())
    }

    /// The stored form of the `dirty` entries, as `set` reads them back.
    pub(crate) fn writes(&self, dirty: impl IntoIterator<Item = Dirty>) -> Vec<JournalWrite> {
        dirty
            .into_iter()
            .filter_map(|dirty| match dirty {
                Dirty::Book(account) => self
                    .books
                    .get(&account)
                    .map(|book| (Entry::Book.key(&account), book.to_api().encode_to_vec())),
                Dirty::Instrument(symbol) => self
                    .instruments
                    .get(&symbol)
                    .map(|i| (Entry::Instrument.key(&symbol), i.to_api().encode_to_vec())),
                Dirty::StopLoss(symbol) => {
                    let flagged = self.stop_loss.get(&symbol).cloned().unwrap_or_default();
                    let text: Vec<String> = flagged.into_iter().collect();
                    Some((Entry::StopLoss.key(&symbol), text.join("\n").into_bytes()))
                }
            })
            .map(|(key, value)| JournalWrite {
                key,
                value: value.into(),
            })
            .collect()
    }

    /// Recomputes the holders of `symbol` in `book` after the book changed.
    pub(crate) fn reindex(&mut self, account_id: &str, symbol: &str) {
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

    /// The last sequence of raw stream `stream` whose effects are stored (0: none).
    pub(crate) fn checkpoint(&self, stream: &str) -> u64 {
        self.checkpoints.get(stream).copied().unwrap_or(0)
    }

    /// Replaces the entries the loop of `aggregate` owns, and the checkpoint of its raw
    /// `stream`, with `stored`'s.
    pub(crate) fn restore(&mut self, aggregate: Aggregate, stream: &str, mut stored: Self) {
        match aggregate {
            Aggregate::Account => {
                self.books = stored.books;
                self.holders = stored.holders;
            }
            Aggregate::Instrument => {
                self.instruments = stored.instruments;
                self.stop_loss = stored.stop_loss;
            }
        }
        let checkpoint = stored.checkpoints.remove(stream).unwrap_or(0);
        self.checkpoints.insert(stream.to_owned(), checkpoint);
    }
}

/// A changed entry to persist.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Dirty {
    Book(String),
    Instrument(String),
    StopLoss(String),
}

pub struct StateStore {
    bucket: kv::Store,
}

/// Opens the key-value bucket `bucket`, creating it if needed, its entries kept for `max_age`
/// (zero: for ever).
pub(crate) async fn key_value_bucket(
    jetstream: &jetstream::Context,
    bucket: &str,
    max_age: std::time::Duration,
) -> Result<kv::Store, StateError> {
    // The bucket's backing stream is created directly: `create_key_value` first asks for
    // account limits in a shape the NATS 2.9 servers we run do not answer.
    jetstream
        .get_or_create_stream(jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age,
            // The server refuses a duplicate window longer than the entries live (zero: its
            // default).
            duplicate_window: max_age,
            storage: jetstream::stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(|source| StateError::CreateBucket {
            bucket: bucket.to_owned(),
            source,
        })?;
    jetstream
        .get_key_value(bucket)
        .await
        .map_err(|source| StateError::OpenBucket {
            bucket: bucket.to_owned(),
            source,
        })
}

impl StateStore {
    pub async fn open(jetstream: &jetstream::Context, bucket: &str) -> Result<Self, StateError> {
        let bucket = key_value_bucket(jetstream, bucket, std::time::Duration::ZERO).await?;
        Ok(Self { bucket })
    }

    /// Reads the whole state back.
    pub async fn load(&self) -> Result<RelayState, StateError> {
        let mut state = RelayState::default();
        let keys: Vec<String> = self
            .bucket
            .keys()
            .await
            .map_err(StateError::ListKeys)?
            .try_filter(|key| {
                let journal = matches!(Entry::parse(key), Some((Entry::Journal, _)));
                futures::future::ready(!journal)
            })
            .try_collect()
            .await
            .map_err(StateError::ReadKeys)?;
        let entries = futures::stream::iter(keys)
            .map(|key| async move {
                let value = self.get(&key).await?;
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

    /// Writes a batch's state entries.
    pub(crate) async fn save_state(&self, writes: &[JournalWrite]) -> Result<(), StateError> {
        let writes = writes
            .iter()
            .map(|write| (write.key.clone(), write.value.clone()))
            .collect();
        self.put_all(writes, 128).await
    }

    /// Moves `stream`'s checkpoint; called once the state it covers is stored (a checkpoint
    /// never runs ahead of its state).
    pub(crate) async fn save_checkpoint(
        &self,
        stream: &str,
        sequence: u64,
    ) -> Result<(), StateError> {
        self.put(Entry::Checkpoint.key(stream), sequence.to_string().into())
            .await
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Bytes>, StateError> {
        self.bucket
            .get(key)
            .await
            .map_err(|source| StateError::Read {
                key: key.to_owned(),
                source,
            })
    }

    pub(crate) async fn put(&self, key: String, value: Bytes) -> Result<(), StateError> {
        match self.bucket.put(&key, value).await {
            Ok(_revision) => Ok(()),
            Err(source) => Err(StateError::Write { key, source }),
        }
    }

    /// Puts `entries`, up to `concurrency` at a time. Owned items: futures borrowing from the
    /// caller do not satisfy the spawned loop's lifetime bounds.
    pub(crate) async fn put_all(
        &self,
        entries: Vec<(String, Bytes)>,
        concurrency: usize,
    ) -> Result<(), StateError> {
        futures::stream::iter(entries)
            .map(|(key, value)| self.put(key, value))
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}

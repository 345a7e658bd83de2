//! The write model in CQL (ScyllaDB in production, Cassandra 5 locally; only CQL both accept).
//!
//! Every aggregate (an account, an instrument) is one partition of `streams`: its events as
//! clustering rows, its idempotency records beside them, and its current state and version as
//! static columns. A command is one single-partition conditional batch: the state moves from
//! version `v` to `v + n` only `IF version = v`, and the `n` events and the idempotency record
//! are written in the same Paxos round. Two writers can therefore never both commit on the same
//! version: no read-modify-write race can overspend or oversell.
//!
//! Only the `[applied]` column of a conditional result is read: Scylla and Cassandra return
//! different extra columns.

use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use scylla::{
    client::{session::Session, session_builder::SessionBuilder},
    response::query_result::QueryResult,
    statement::{
        Consistency, SerialConsistency,
        batch::{Batch, BatchType},
        prepared::PreparedStatement,
    },
    value::{CqlTimestamp, CqlValue, Row},
};

/// Which stream an aggregate's events belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggregateType {
    Account,
    Instrument,
}

impl AggregateType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Account => "account",
            Self::Instrument => "instrument",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "account" => Some(Self::Account),
            "instrument" => Some(Self::Instrument),
            _ => None,
        }
    }
}

/// One aggregate's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AggregateKey {
    pub kind: AggregateType,
    pub id: String,
}

impl AggregateKey {
    pub fn account(id: impl Into<String>) -> Self {
        Self {
            kind: AggregateType::Account,
            id: id.into(),
        }
    }

    pub fn instrument(symbol: impl Into<String>) -> Self {
        Self {
            kind: AggregateType::Instrument,
            id: symbol.into(),
        }
    }
}

/// What kind of idempotency record a key names; one namespace per kind of request.
#[derive(Debug, Clone, Copy)]
pub enum RecordKind {
    Order,
    Cash,
}

impl RecordKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::Cash => "cash",
        }
    }
}

const EVENT_ROW: &str = "event";

/// How many partitions the outbox's pending markers are spread over.
pub const OUTBOX_SHARDS: i32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The driver failed: connection, timeout, unavailable replicas, paging.
    #[error("store request failed: {0}")]
    Driver(Box<dyn std::error::Error + Send + Sync>),
    /// A result did not have the shape this code expects (a schema or driver mismatch).
    #[error("unexpected result shape: {0}")]
    Shape(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

macro_rules! store_error_from {
    ($variant:ident: $($error:ty),*) => {
        $(impl From<$error> for StoreError {
            fn from(error: $error) -> Self {
                Self::$variant(error.into())
            }
        })*
    };
}
store_error_from!(
    Driver: scylla::errors::NewSessionError,
    scylla::errors::PrepareError,
    scylla::errors::ExecutionError,
    scylla::errors::PagerExecutionError,
    scylla::errors::SchemaAgreementError,
    scylla::errors::NextRowError
);
macro_rules! shape_error_from {
    ($($error:ty),*) => {
        $(impl From<$error> for StoreError {
            fn from(error: $error) -> Self {
                Self::Shape(error.to_string())
            }
        })*
    };
}
shape_error_from!(
    scylla::response::query_result::IntoRowsResultError,
    scylla::errors::RowsError,
    scylla::errors::DeserializationError,
    scylla::errors::TypeCheckError,
    scylla::response::query_result::MaybeFirstRowError
);

/// Connection settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub contact_points: Vec<String>,
    pub keyspace: String,
    pub replication_factor: u32,
    pub request_timeout: Duration,
}

/// The state of an aggregate as stored: encoded state and its version (0: never written).
#[derive(Debug, Clone, Default)]
pub struct Stored {
    pub state: Option<Vec<u8>>,
    pub version: u64,
}

/// One event row to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub version: u64,
    pub payload: Vec<u8>,
    pub occurred_at: SystemTime,
}

/// A conditional append: move `key` from `expected_version` to the last event's version.
#[derive(Debug, Clone)]
pub struct Append<'a> {
    pub key: &'a AggregateKey,
    pub expected_version: u64,
    pub state: Vec<u8>,
    pub events: &'a [NewEvent],
    /// An idempotency record committed with the events.
    pub record: Option<(RecordKind, &'a str, Vec<u8>)>,
}

/// A pending outbox marker found by a sweep.
#[derive(Debug, Clone)]
pub struct PendingMarker {
    pub key: AggregateKey,
    pub version: u64,
    pub marked_at: SystemTime,
}

pub struct Store {
    session: Session,
    load_state: PreparedStatement,
    load_state_serial: PreparedStatement,
    load_record: PreparedStatement,
    load_events: PreparedStatement,
    create_state: PreparedStatement,
    update_state: PreparedStatement,
    insert_row: PreparedStatement,
    mark_pending: PreparedStatement,
    clear_pending: PreparedStatement,
    scan_pending: PreparedStatement,
    load_progress: PreparedStatement,
    save_progress: PreparedStatement,
    index_instrument: PreparedStatement,
    list_instruments: PreparedStatement,
}

fn i64_of(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Shape(format!("version {value} out of range")))
}

fn timestamp(at: SystemTime) -> CqlTimestamp {
    let millis = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    CqlTimestamp(i64::try_from(millis).unwrap_or(i64::MAX))
}

fn shard_of(key: &AggregateKey) -> i32 {
    // FNV-1a: stable across processes and releases, unlike the std hasher.
    let hash = key
        .id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    i32::try_from(hash % OUTBOX_SHARDS.unsigned_abs() as u64).unwrap_or(0)
}

impl Store {
    /// Connects, creates the keyspace and tables if missing, and prepares every statement.
    pub async fn connect(config: &StoreConfig) -> Result<Self, StoreError> {
        let session = SessionBuilder::new()
            .known_nodes(&config.contact_points)
            .connection_timeout(Duration::from_secs(10))
            .build()
            .await?;
        let keyspace = &config.keyspace;
        let ddl = [
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': {}}}",
                config.replication_factor
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.streams (\
                 aggregate_type text, aggregate_id text, entry_kind text, entry_key text, \
                 state blob static, version bigint static, \
                 payload blob, occurred_at timestamp, \
                 PRIMARY KEY ((aggregate_type, aggregate_id), entry_kind, entry_key))"
            ),
            // Markers are written before a commit and deleted once its events are published;
            // a short grace period keeps their tombstones from piling up.
            format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.outbox_pending (\
                 shard int, aggregate_type text, aggregate_id text, version bigint, \
                 marked_at timestamp, \
                 PRIMARY KEY (shard, aggregate_type, aggregate_id, version)) \
                 WITH gc_grace_seconds = 3600"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.outbox_progress (\
                 aggregate_type text, aggregate_id text, published_version bigint, \
                 PRIMARY KEY ((aggregate_type, aggregate_id)))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.instrument_index (\
                 bucket int, symbol text, PRIMARY KEY (bucket, symbol))"
            ),
        ];
        for statement in ddl {
            session.query_unpaged(statement, ()).await?;
        }
        session.await_schema_agreement().await?;

        let prepare = async |cql: String, consistency: Consistency| {
            let mut statement = session.prepare(cql).await?;
            statement.set_consistency(consistency);
            statement.set_serial_consistency(Some(SerialConsistency::LocalSerial));
            statement.set_request_timeout(Some(config.request_timeout));
            Ok::<_, StoreError>(statement)
        };
        let quorum = Consistency::LocalQuorum;
        let streams = format!("{keyspace}.streams");
        Ok(Self {
            load_state: prepare(
                format!(
                    "SELECT state, version FROM {streams} \
                     WHERE aggregate_type = ? AND aggregate_id = ? LIMIT 1"
                ),
                quorum,
            )
            .await?,
            // A SERIAL read completes any Paxos round in flight, so after a lost race the
            // retry sees the winner's state.
            load_state_serial: prepare(
                format!(
                    "SELECT state, version FROM {streams} \
                     WHERE aggregate_type = ? AND aggregate_id = ? LIMIT 1"
                ),
                Consistency::LocalSerial,
            )
            .await?,
            load_record: prepare(
                format!(
                    "SELECT payload FROM {streams} WHERE aggregate_type = ? AND aggregate_id = ? \
                     AND entry_kind = ? AND entry_key = ?"
                ),
                Consistency::LocalSerial,
            )
            .await?,
            load_events: prepare(
                format!(
                    "SELECT payload FROM {streams} WHERE aggregate_type = ? AND aggregate_id = ? \
                     AND entry_kind = '{EVENT_ROW}' AND entry_key > ? AND entry_key <= ?"
                ),
                quorum,
            )
            .await?,
            create_state: prepare(
                format!(
                    "INSERT INTO {streams} (aggregate_type, aggregate_id, state, version) \
                     VALUES (?, ?, ?, ?) IF NOT EXISTS"
                ),
                quorum,
            )
            .await?,
            update_state: prepare(
                format!(
                    "UPDATE {streams} SET state = ?, version = ? \
                     WHERE aggregate_type = ? AND aggregate_id = ? IF version = ?"
                ),
                quorum,
            )
            .await?,
            insert_row: prepare(
                format!(
                    "INSERT INTO {streams} \
                     (aggregate_type, aggregate_id, entry_kind, entry_key, payload, occurred_at) \
                     VALUES (?, ?, ?, ?, ?, ?)"
                ),
                quorum,
            )
            .await?,
            mark_pending: prepare(
                format!(
                    "INSERT INTO {keyspace}.outbox_pending \
                     (shard, aggregate_type, aggregate_id, version, marked_at) VALUES (?, ?, ?, ?, ?)"
                ),
                quorum,
            )
            .await?,
            clear_pending: prepare(
                format!(
                    "DELETE FROM {keyspace}.outbox_pending WHERE shard = ? AND aggregate_type = ? \
                     AND aggregate_id = ? AND version <= ?"
                ),
                quorum,
            )
            .await?,
            scan_pending: prepare(
                format!(
                    "SELECT aggregate_type, aggregate_id, version, marked_at \
                     FROM {keyspace}.outbox_pending WHERE shard = ?"
                ),
                quorum,
            )
            .await?,
            load_progress: prepare(
                format!(
                    "SELECT published_version FROM {keyspace}.outbox_progress \
                     WHERE aggregate_type = ? AND aggregate_id = ?"
                ),
                quorum,
            )
            .await?,
            save_progress: prepare(
                format!(
                    "UPDATE {keyspace}.outbox_progress SET published_version = ? \
                     WHERE aggregate_type = ? AND aggregate_id = ?"
                ),
                quorum,
            )
            .await?,
            index_instrument: prepare(
                format!("INSERT INTO {keyspace}.instrument_index (bucket, symbol) VALUES (0, ?)"),
                quorum,
            )
            .await?,
            list_instruments: prepare(
                format!("SELECT symbol FROM {keyspace}.instrument_index WHERE bucket = 0"),
                quorum,
            )
            .await?,
            session,
        })
    }

    /// The aggregate's state. `serial` completes any in-flight Paxos round first.
    pub async fn load(&self, key: &AggregateKey, serial: bool) -> Result<Stored, StoreError> {
        let statement = if serial {
            &self.load_state_serial
        } else {
            &self.load_state
        };
        let result = self
            .session
            .execute_unpaged(statement, (key.kind.as_str(), &key.id))
            .await?
            .into_rows_result()?;
        let Some((state, version)) = result.maybe_first_row::<(Option<Vec<u8>>, Option<i64>)>()?
        else {
            return Ok(Stored::default());
        };
        Ok(Stored {
            state,
            version: u64::try_from(version.unwrap_or(0))
                .map_err(|_| StoreError::Corrupt(format!("negative version for {key:?}")))?,
        })
    }

    /// The idempotency record under `record_key`, if any.
    pub async fn load_record(
        &self,
        key: &AggregateKey,
        kind: RecordKind,
        record_key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let result = self
            .session
            .execute_unpaged(
                &self.load_record,
                (key.kind.as_str(), &key.id, kind.as_str(), record_key),
            )
            .await?
            .into_rows_result()?;
        Ok(result
            .maybe_first_row::<(Option<Vec<u8>>,)>()?
            .and_then(|(payload,)| payload))
    }

    /// Encoded events with `after < version <= up_to`, in version order.
    pub async fn load_events(
        &self,
        key: &AggregateKey,
        after: u64,
        up_to: u64,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let rows = self
            .session
            .execute_iter(
                self.load_events.clone(),
                (
                    key.kind.as_str(),
                    &key.id,
                    event_key(after),
                    event_key(up_to),
                ),
            )
            .await?
            .rows_stream::<(Option<Vec<u8>>,)>()?;
        rows.map_ok(|(payload,)| payload.unwrap_or_default())
            .try_collect()
            .await
            .map_err(StoreError::from)
    }

    /// Commits an append atomically; `Ok(false)` when another writer moved the version first.
    pub async fn append(&self, append: Append<'_>) -> Result<bool, StoreError> {
        let Some(last) = append.events.last() else {
            return Err(StoreError::Shape(
                "an append needs at least one event".into(),
            ));
        };
        let kind = CqlValue::Text(append.key.kind.as_str().to_owned());
        let id = CqlValue::Text(append.key.id.clone());
        let new_version = CqlValue::BigInt(i64_of(last.version)?);
        let mut batch = Batch::new(BatchType::Logged);
        let mut values: Vec<Vec<CqlValue>> = Vec::with_capacity(append.events.len() + 2);
        if append.expected_version == 0 {
            batch.append_statement(self.create_state.clone());
            values.push(vec![
                kind.clone(),
                id.clone(),
                CqlValue::Blob(append.state),
                new_version,
            ]);
        } else {
            batch.append_statement(self.update_state.clone());
            values.push(vec![
                CqlValue::Blob(append.state),
                new_version,
                kind.clone(),
                id.clone(),
                CqlValue::BigInt(i64_of(append.expected_version)?),
            ]);
        }
        let row = |entry_kind: &str, entry_key: String, payload: Vec<u8>, at: SystemTime| {
            vec![
                kind.clone(),
                id.clone(),
                CqlValue::Text(entry_kind.to_owned()),
                CqlValue::Text(entry_key),
                CqlValue::Blob(payload),
                CqlValue::Timestamp(timestamp(at)),
            ]
        };
        for event in append.events {
            batch.append_statement(self.insert_row.clone());
            values.push(row(
                EVENT_ROW,
                event_key(event.version),
                event.payload.clone(),
                event.occurred_at,
            ));
        }
        if let Some((record_kind, record_key, payload)) = append.record {
            batch.append_statement(self.insert_row.clone());
            values.push(row(
                record_kind.as_str(),
                record_key.to_owned(),
                payload,
                last.occurred_at,
            ));
        }
        batch.set_consistency(Consistency::LocalQuorum);
        batch.set_serial_consistency(Some(SerialConsistency::LocalSerial));
        let result = self.session.batch(&batch, values).await?;
        applied(result)
    }

    /// Records, before a commit, that `key` may soon have events at `version` to publish.
    pub async fn mark_pending(&self, key: &AggregateKey, version: u64) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(
                &self.mark_pending,
                (
                    shard_of(key),
                    key.kind.as_str(),
                    &key.id,
                    i64_of(version)?,
                    timestamp(SystemTime::now()),
                ),
            )
            .await?;
        Ok(())
    }

    /// Records that every event of `key` up to `version` is published.
    pub async fn mark_published(&self, key: &AggregateKey, version: u64) -> Result<(), StoreError> {
        let version = i64_of(version)?;
        let progress = self
            .session
            .execute_unpaged(&self.save_progress, (version, key.kind.as_str(), &key.id));
        let clear = self.session.execute_unpaged(
            &self.clear_pending,
            (shard_of(key), key.kind.as_str(), &key.id, version),
        );
        let (progress, clear) = tokio::join!(progress, clear);
        progress?;
        clear?;
        Ok(())
    }

    /// Deletes markers up to `version` without touching progress (stale markers of commits
    /// that lost their race).
    pub async fn clear_pending(&self, key: &AggregateKey, version: u64) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(
                &self.clear_pending,
                (shard_of(key), key.kind.as_str(), &key.id, i64_of(version)?),
            )
            .await?;
        Ok(())
    }

    /// The highest published version of `key` (0 when nothing was published).
    pub async fn published_version(&self, key: &AggregateKey) -> Result<u64, StoreError> {
        let result = self
            .session
            .execute_unpaged(&self.load_progress, (key.kind.as_str(), &key.id))
            .await?
            .into_rows_result()?;
        let version = result
            .maybe_first_row::<(Option<i64>,)>()?
            .and_then(|(version,)| version)
            .unwrap_or(0);
        Ok(u64::try_from(version).unwrap_or(0))
    }

    /// Every pending marker, shard by shard.
    pub async fn pending(&self) -> Result<Vec<PendingMarker>, StoreError> {
        let mut markers = Vec::new();
        for shard in 0..OUTBOX_SHARDS {
            let rows = self
                .session
                .execute_iter(self.scan_pending.clone(), (shard,))
                .await?
                .rows_stream::<(String, String, i64, Option<CqlTimestamp>)>()?;
            let found: Vec<_> = rows.try_collect().await?;
            for (kind, id, version, marked_at) in found {
                let Some(kind) = AggregateType::parse(&kind) else {
                    continue;
                };
                let millis = marked_at.map_or(0, |at| at.0);
                markers.push(PendingMarker {
                    key: AggregateKey { kind, id },
                    version: u64::try_from(version).unwrap_or(0),
                    marked_at: SystemTime::UNIX_EPOCH
                        + Duration::from_millis(u64::try_from(millis).unwrap_or(0)),
                });
            }
        }
        Ok(markers)
    }

    /// Lists every instrument symbol ever indexed.
    pub async fn instrument_symbols(&self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .session
            .execute_iter(self.list_instruments.clone(), ())
            .await?
            .rows_stream::<(String,)>()?;
        rows.map_ok(|(symbol,)| symbol)
            .try_collect()
            .await
            .map_err(StoreError::from)
    }

    /// Indexes a symbol for listing (idempotent, written before the instrument's first commit).
    pub async fn index_instrument(&self, symbol: &str) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(&self.index_instrument, (symbol,))
            .await?;
        Ok(())
    }
}

/// Clustering key of an event row: zero-padded so text order is version order.
fn event_key(version: u64) -> String {
    format!("{version:020}")
}

/// Reads the `[applied]` column of a conditional result, whatever else the row holds.
fn applied(result: QueryResult) -> Result<bool, StoreError> {
    let rows = result.into_rows_result()?;
    let index = rows
        .column_specs()
        .iter()
        .position(|spec| spec.name() == "[applied]")
        .ok_or_else(|| StoreError::Shape("conditional result without [applied]".into()))?;
    let Some(row) = rows.maybe_first_row::<Row>()? else {
        return Err(StoreError::Shape("conditional result without rows".into()));
    };
    match row.columns.get(index) {
        Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
        other => Err(StoreError::Shape(format!("[applied] is {other:?}"))),
    }
}

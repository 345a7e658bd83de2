//! The write model in CQL (ScyllaDB in production, Cassandra 5 locally; only CQL both accept).
//!
//! - [`streams`]: every aggregate's events, idempotency records and current state, written by
//!   one conditional batch per command, and the instrument index.
//! - [`outbox`]: the outbox's pending markers and published progress.
//! - [`book`]: the index of resting orders, and the markers and plans of price events' fills.
//! - [`schema`]: the keyspace and tables, created on connect when missing.
//! - [`replication`]: where the replicas live and how many each statement waits for.
//!
//! Only the `[applied]` column of a conditional result is read: Scylla and Cassandra return
//! different extra columns.

mod book;
mod outbox;
mod replication;
mod schema;
mod streams;

use std::{
    fmt,
    time::{Duration, SystemTime},
};

use futures::TryStreamExt;
use platform::names::Aggregate;
use scylla::{
    client::{
        execution_profile::ExecutionProfile, session::Session, session_builder::SessionBuilder,
    },
    deserialize::row::DeserializeRow,
    errors::{DbError, ExecutionError, RequestAttemptError},
    policies::load_balancing::DefaultPolicy,
    statement::{Consistency, prepared::PreparedStatement},
    value::CqlTimestamp,
};

pub use book::{BookEntry, PlacementMarker, PriceMarker};
pub use outbox::{Clear, PendingMarker};
pub use replication::{BadReplication, Replication, StoreConsistency};
pub use streams::{Append, NewEvent, RecordKind, Stored};

/// A cause of any of the driver's many error types.
type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The driver failed: connection, timeout, unavailable replicas, paging.
    #[error("store request failed")]
    Driver(#[source] Cause),
    /// A result did not have the shape this code expects (a schema or driver mismatch).
    #[error("unexpected result shape")]
    Shape(#[source] Cause),
    /// A conditional result without the `[applied]` flag this code reads.
    #[error("unexpected conditional result: {0}")]
    Conditional(String),
    #[error("an append needs at least one event")]
    EmptyAppend,
    #[error("version {0} does not fit a bigint")]
    VersionOutOfRange(u64),
    #[error("stored data of {key} is corrupt: negative version {version}")]
    NegativeVersion { key: AggregateKey, version: i64 },
    /// The request went to the store in a batch with others (`group`), and the batch failed.
    #[error("a grouped store request failed")]
    Grouped(#[source] std::sync::Arc<StoreError>),
    /// The task that batches a kind of request is gone (the process is stopping).
    #[error("the store request group has stopped")]
    GroupStopped,
}

impl StoreError {
    /// A failure whose request may have done its work, or may succeed a moment later: the
    /// connection to the coordinator broke (its node died mid-request), the coordinator heard
    /// from too few replicas in time, or it was overloaded or still starting. Not `Unavailable`
    /// (too few replicas alive for the level: nothing was tried, and trying again at once fails
    /// the same way) nor anything about the request itself.
    pub fn is_transient(&self) -> bool {
        let cause = match self {
            Self::Driver(cause) => cause,
            Self::Grouped(error) => return error.is_transient(),
            _ => return false,
        };
        match cause.downcast_ref::<ExecutionError>() {
            Some(ExecutionError::ConnectionPoolError(_) | ExecutionError::RequestTimeout(_)) => {
                true
            }
            Some(ExecutionError::LastAttemptError(attempt)) => matches!(
                attempt,
                RequestAttemptError::BrokenConnectionError(_)
                    | RequestAttemptError::UnableToAllocStreamId
                    | RequestAttemptError::DbError(
                        DbError::WriteTimeout { .. }
                            | DbError::ReadTimeout { .. }
                            | DbError::Overloaded
                            | DbError::IsBootstrapping,
                        _,
                    )
            ),
            _ => false,
        }
    }
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
store_error_from!(
    Shape: scylla::response::query_result::IntoRowsResultError,
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
    pub replication: Replication,
    pub consistency: StoreConsistency,
    /// The data center whose nodes coordinate this process's requests, if named.
    pub local_datacenter: Option<String>,
    pub request_timeout: Duration,
}

/// One aggregate's identity: the partition of its stream, the subject of its events, the
/// worker that publishes them and the lock that serializes its commands.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AggregateKey {
    pub kind: Aggregate,
    pub id: String,
}

impl AggregateKey {
    pub fn account(id: impl Into<String>) -> Self {
        Self {
            kind: Aggregate::Account,
            id: id.into(),
        }
    }

    /// FNV-1a of the id: stable across processes and releases, unlike the std hasher, because
    /// the outbox shard derived from it is stored. The kind is left out so that shards
    /// already stored keep their values.
    pub fn stable_hash(&self) -> u64 {
        self.id
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            })
    }
}

impl fmt::Display for AggregateKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} {:?}", self.kind.as_str(), self.id)
    }
}

pub struct Store {
    session: Session,
    consistency: StoreConsistency,
    /// Every statement's timeout; batches are built per request and take it from here.
    request_timeout: Duration,
    streams: streams::Statements,
    outbox: outbox::Statements,
    book: book::Statements,
}

impl Store {
    /// Connects, creates the keyspace and tables if missing, and prepares every statement.
    pub async fn connect(config: &StoreConfig) -> Result<Self, StoreError> {
        let mut builder = SessionBuilder::new()
            .known_nodes(&config.contact_points)
            .connection_timeout(Duration::from_secs(10));
        if let Some(datacenter) = &config.local_datacenter {
            // A coordinator sends a write to another data center through one node there, which
            // forwards it to that data center's other replicas. Until gossip convicts a dead node
            // (about 18 s), a coordinator that picked it as the forwarder loses the whole data
            // center's copies, and QUORUM writes time out with two replicas alive. Coordinating
            // from the data center holding most replicas reaches each of them directly.
            let policy = DefaultPolicy::builder()
                .prefer_datacenter(datacenter.clone())
                .token_aware(true)
                // LOCAL_* levels count the coordinator's data center: a coordinator elsewhere
                // would run a different quorum, so only QUORUM / SERIAL may fail over.
                .permit_dc_failover(config.consistency == StoreConsistency::Quorum)
                .build();
            let profile = ExecutionProfile::builder()
                .load_balancing_policy(policy)
                .build();
            builder = builder.default_execution_profile_handle(profile.into_handle());
        }
        let session = builder.build().await?;
        schema::create(&session, &config.keyspace, &config.replication).await?;
        let prepare = Prepare {
            session: &session,
            keyspace: &config.keyspace,
            consistency: config.consistency,
            request_timeout: config.request_timeout,
        };
        let streams = streams::Statements::prepare(&prepare).await?;
        let outbox = outbox::Statements::prepare(&prepare).await?;
        let book = book::Statements::prepare(&prepare).await?;
        Ok(Self {
            session,
            consistency: config.consistency,
            request_timeout: config.request_timeout,
            streams,
            outbox,
            book,
        })
    }
}

/// Prepares the statements of one table group with the settings every statement shares.
struct Prepare<'a> {
    session: &'a Session,
    keyspace: &'a str,
    consistency: StoreConsistency,
    request_timeout: Duration,
}

impl Prepare<'_> {
    /// Prepares `cql`, in which `{keyspace}` stands for the configured keyspace.
    async fn statement(
        &self,
        cql: &str,
        consistency: Consistency,
    ) -> Result<PreparedStatement, StoreError> {
        let mut statement = self
            .session
            .prepare(cql.replace("{keyspace}", self.keyspace))
            .await?;
        statement.set_consistency(consistency);
        statement.set_serial_consistency(Some(self.consistency.serial()));
        statement.set_request_timeout(Some(self.request_timeout));
        // Each statement run on its own here is a read or a write of fixed values, so the driver
        // may send it again to the next node when its node dies mid-request or times out. The
        // one that is not, the conditional batch, is a `Batch` of its own that is never marked.
        statement.set_is_idempotent(true);
        Ok(statement)
    }
}

impl Store {
    /// Every row `statement` (a select `WHERE shard = ?`) finds in shards `0..shards`, shard by
    /// shard: how the sweeps read their marker tables.
    async fn scan_shards<R>(
        &self,
        statement: &PreparedStatement,
        shards: i32,
    ) -> Result<Vec<R>, StoreError>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
    {
        let mut found = Vec::new();
        for shard in 0..shards {
            let rows = self
                .session
                .execute_iter(statement.clone(), (shard,))
                .await?
                .rows_stream::<R>()?;
            found.extend(rows.try_collect::<Vec<R>>().await?);
        }
        Ok(found)
    }
}

/// A version as CQL stores it.
fn bigint(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version).map_err(|_| StoreError::VersionOutOfRange(version))
}

/// A stored version; a negative one is corrupt data, reported wherever it is read.
fn version_of(key: &AggregateKey, version: i64) -> Result<u64, StoreError> {
    u64::try_from(version).map_err(|_| StoreError::NegativeVersion {
        key: key.clone(),
        version,
    })
}

fn timestamp(at: SystemTime) -> CqlTimestamp {
    let millis = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    CqlTimestamp(i64::try_from(millis).unwrap_or(i64::MAX))
}

/// Which of `shards` partitions `key`'s markers go to, by its stable hash.
fn shard_of(key: &AggregateKey, shards: i32) -> i32 {
    i32::try_from(key.stable_hash() % u64::from(shards.unsigned_abs())).unwrap_or(0)
}

/// A marker's time; a marker without one counts as marked at the epoch (old enough to handle).
fn system_time(at: Option<CqlTimestamp>) -> SystemTime {
    let millis = u64::try_from(at.map_or(0, |at| at.0)).unwrap_or(0);
    SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stable_hash_is_fnv_1a_of_the_id() {
        // Reference values of 64-bit FNV-1a; the stored outbox shards depend on them.
        assert_eq!(
            AggregateKey::account("").stable_hash(),
            0xcbf2_9ce4_8422_2325
        );
        assert_eq!(
            AggregateKey::account("a").stable_hash(),
            0xaf63_dc4c_8601_ec8c
        );
        let instrument = AggregateKey {
            kind: Aggregate::Instrument,
            id: "AAPL".to_owned(),
        };
        assert_eq!(
            AggregateKey::account("AAPL").stable_hash(),
            instrument.stable_hash()
        );
    }

    fn db_error(error: DbError) -> StoreError {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(error, String::new())).into()
    }

    #[test]
    fn timeouts_are_transient_and_missing_replicas_are_not() {
        use scylla::errors::WriteType;
        use scylla::statement::Consistency::Quorum;
        let write_timeout = db_error(DbError::WriteTimeout {
            consistency: Quorum,
            received: 1,
            required: 2,
            write_type: WriteType::Cas,
        });
        assert!(write_timeout.is_transient());
        assert!(
            StoreError::from(ExecutionError::RequestTimeout(Duration::from_secs(5))).is_transient()
        );
        assert!(db_error(DbError::Overloaded).is_transient());
        let unavailable = db_error(DbError::Unavailable {
            consistency: Quorum,
            required: 2,
            alive: 1,
        });
        assert!(!unavailable.is_transient());
        assert!(!db_error(DbError::SyntaxError).is_transient());
        assert!(!StoreError::EmptyAppend.is_transient());
    }
}

//! The outbox's own table. A command writes a marker (`outbox_pending`) before it commits, and
//! the outbox deletes an aggregate's markers up to a version only once every event up to it is
//! on the stream. So the markers also say how far an aggregate is published: a committed event
//! without a marker is on the stream, and everything below an aggregate's lowest marker is too.
//! No progress of its own is written per publish. Markers are spread over [`OUTBOX_SHARDS`]
//! partitions by the aggregate key's stable hash so a sweep reads bounded partitions.

use std::time::SystemTime;

use futures::{StreamExt, TryStreamExt};

use platform::names::Aggregate;
use scylla::{
    statement::{
        batch::{Batch, BatchType},
        prepared::PreparedStatement,
    },
    value::{CqlTimestamp, CqlValue},
};

use super::{AggregateKey, Prepare, Store, StoreError, bigint, system_time, timestamp, version_of};

/// How many partitions the outbox's pending markers are spread over.
const OUTBOX_SHARDS: i32 = 64;
/// Statements per unlogged batch of bookkeeping: far below the store's batch size limits
/// (Cassandra warns at 5 KiB and refuses 50 KiB).
const BATCH_STATEMENTS: usize = 32;
/// Such batches of one call out at once: a call may clear thousands of markers (the outbox's
/// lingering deletes, a sweep after an outage), and the store should see them as a queue, not a
/// burst of requests.
const BATCHES_IN_FLIGHT: usize = 8;

/// A pending outbox marker found by a sweep.
#[derive(Debug, Clone)]
pub struct PendingMarker {
    pub key: AggregateKey,
    pub version: u64,
    pub marked_at: SystemTime,
}

/// Markers to delete, batched with others into one store request.
#[derive(Debug, Clone)]
pub enum Clear {
    /// Every event of the aggregate up to the version is on the stream.
    Published(AggregateKey, u64),
    /// The aggregate's markers up to the version written before the instant are a lost race's
    /// leftovers (their commands never committed). A marker written since is left alone: it
    /// may belong to a command in flight that reuses the version, and must outlive a crash.
    Stale {
        key: AggregateKey,
        version: u64,
        written_before: SystemTime,
    },
}

pub(super) struct Statements {
    mark_pending: PreparedStatement,
    clear_pending: PreparedStatement,
    clear_stale: PreparedStatement,
    scan_pending: PreparedStatement,
    first_pending: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(prepare: &Prepare<'_>) -> Result<Self, StoreError> {
        let quorum = prepare.consistency.quorum();
        Ok(Self {
            mark_pending: prepare
                .statement(
                    "INSERT INTO {keyspace}.outbox_pending \
                     (shard, aggregate_type, aggregate_id, version, marked_at) \
                     VALUES (?, ?, ?, ?, ?)",
                    quorum,
                )
                .await?,
            clear_pending: prepare
                .statement(
                    "DELETE FROM {keyspace}.outbox_pending WHERE shard = ? AND aggregate_type = ? \
                     AND aggregate_id = ? AND version <= ?",
                    quorum,
                )
                .await?,
            // A delete at a write time shadows only what was written at or before it.
            clear_stale: prepare
                .statement(
                    "DELETE FROM {keyspace}.outbox_pending USING TIMESTAMP ? WHERE shard = ? \
                     AND aggregate_type = ? AND aggregate_id = ? AND version <= ?",
                    quorum,
                )
                .await?,
            scan_pending: prepare
                .statement(
                    "SELECT aggregate_type, aggregate_id, version, marked_at \
                     FROM {keyspace}.outbox_pending WHERE shard = ?",
                    quorum,
                )
                .await?,
            first_pending: prepare
                .statement(
                    "SELECT version FROM {keyspace}.outbox_pending WHERE shard = ? \
                     AND aggregate_type = ? AND aggregate_id = ? LIMIT 1",
                    quorum,
                )
                .await?,
        })
    }
}

fn shard_of(key: &AggregateKey) -> i32 {
    super::shard_of(key, OUTBOX_SHARDS)
}

impl Store {
    /// Records, before their commits, that each aggregate may soon have events at its version
    /// to publish: one request for all of them (one unlogged batch; the markers are
    /// independent, so nothing needs the batch log).
    pub async fn mark_pending(&self, markers: &[(AggregateKey, u64)]) -> Result<(), StoreError> {
        let now = CqlValue::Timestamp(timestamp(SystemTime::now()));
        let writes = markers
            .iter()
            .map(|(key, version)| {
                let row = vec![
                    CqlValue::Int(shard_of(key)),
                    CqlValue::Text(key.kind.as_str().to_owned()),
                    CqlValue::Text(key.id.clone()),
                    CqlValue::BigInt(bigint(*version)?),
                    now.clone(),
                ];
                Ok((self.outbox.mark_pending.clone(), row))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.unlogged(writes).await
    }

    /// Deletes markers (see `Clear`) in as few requests as the batch limits allow, at most
    /// `BATCHES_IN_FLIGHT` of them out at once.
    pub async fn clear_pending(&self, cleared: &[Clear]) -> Result<(), StoreError> {
        let writes = cleared
            .iter()
            .map(|clear| {
                let (statement, mut row, key, version) = match clear {
                    Clear::Published(key, version) => {
                        (&self.outbox.clear_pending, Vec::new(), key, *version)
                    }
                    Clear::Stale {
                        key,
                        version,
                        written_before,
                    } => {
                        let micros = written_before
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_micros();
                        let micros = i64::try_from(micros).unwrap_or(i64::MAX);
                        let row = vec![CqlValue::BigInt(micros)];
                        (&self.outbox.clear_stale, row, key, *version)
                    }
                };
                row.extend([
                    CqlValue::Int(shard_of(key)),
                    CqlValue::Text(key.kind.as_str().to_owned()),
                    CqlValue::Text(key.id.clone()),
                    CqlValue::BigInt(bigint(version)?),
                ]);
                Ok((statement.clone(), row))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let batches: Vec<_> = writes.chunks(BATCH_STATEMENTS).map(<[_]>::to_vec).collect();
        futures::stream::iter(batches)
            .map(|batch| self.unlogged(batch))
            .buffer_unordered(BATCHES_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Runs plain writes (a statement and its values each) as one unlogged batch, a lone one
    /// as itself.
    async fn unlogged(
        &self,
        writes: Vec<(PreparedStatement, Vec<CqlValue>)>,
    ) -> Result<(), StoreError> {
        if let [(statement, row)] = writes.as_slice() {
            self.session.execute_unpaged(statement, row).await?;
            return Ok(());
        }
        if writes.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut rows = Vec::with_capacity(writes.len());
        for (statement, row) in writes {
            batch.append_statement(statement);
            rows.push(row);
        }
        batch.set_consistency(self.consistency.quorum());
        batch.set_request_timeout(Some(self.request_timeout));
        // Fixed values only: sending it again to another node is harmless.
        batch.set_is_idempotent(true);
        self.session.batch(&batch, rows).await?;
        Ok(())
    }

    /// The lowest version of `key` still marked pending, if any.
    pub async fn first_pending(&self, key: &AggregateKey) -> Result<Option<u64>, StoreError> {
        let result = self
            .session
            .execute_unpaged(
                &self.outbox.first_pending,
                (shard_of(key), key.kind.as_str(), &key.id),
            )
            .await?
            .into_rows_result()?;
        result
            .maybe_first_row::<(i64,)>()?
            .map(|(version,)| version_of(key, version))
            .transpose()
    }

    /// Every pending marker, shard by shard.
    pub async fn pending(&self) -> Result<Vec<PendingMarker>, StoreError> {
        let rows = self
            .scan_shards::<(String, String, i64, Option<CqlTimestamp>)>(
                &self.outbox.scan_pending,
                OUTBOX_SHARDS,
            )
            .await?;
        let mut markers = Vec::with_capacity(rows.len());
        for (kind, id, version, marked_at) in rows {
            // A kind this build does not know has no stream of ours to publish to.
            let Some(kind) = Aggregate::parse(&kind) else {
                continue;
            };
            let key = AggregateKey { kind, id };
            markers.push(PendingMarker {
                version: version_of(&key, version)?,
                key,
                marked_at: system_time(marked_at),
            });
        }
        Ok(markers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_keep_their_stored_values() {
        // Computed by the FNV-1a `shard_of` that wrote the markers already stored.
        for (id, shard) in [("", 37), ("a", 12), ("alice", 7), ("AAPL", 11)] {
            assert_eq!(shard_of(&AggregateKey::account(id)), shard, "{id:?}");
            let instrument = AggregateKey {
                kind: Aggregate::Instrument,
                id: id.to_owned(),
            };
            assert_eq!(shard_of(&instrument), shard, "{id:?}");
        }
    }
}

//! The outbox's own tables. A command writes a marker (`outbox_pending`) before it commits; the
//! outbox records the highest published version (`outbox_progress`) and deletes the markers up
//! to it once the events are on the stream. Markers are spread over [`OUTBOX_SHARDS`]
//! partitions by the aggregate key's stable hash so a sweep reads bounded partitions.

use std::time::SystemTime;

use futures::TryStreamExt;
use platform::names::Aggregate;
use scylla::{statement::prepared::PreparedStatement, value::CqlTimestamp};

use super::{AggregateKey, Prepare, Store, StoreError, bigint, system_time, timestamp, version_of};

/// How many partitions the outbox's pending markers are spread over.
const OUTBOX_SHARDS: i32 = 64;

/// A pending outbox marker found by a sweep.
#[derive(Debug, Clone)]
pub struct PendingMarker {
    pub key: AggregateKey,
    pub version: u64,
    pub marked_at: SystemTime,
}

pub(super) struct Statements {
    mark_pending: PreparedStatement,
    clear_pending: PreparedStatement,
    scan_pending: PreparedStatement,
    load_progress: PreparedStatement,
    save_progress: PreparedStatement,
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
            scan_pending: prepare
                .statement(
                    "SELECT aggregate_type, aggregate_id, version, marked_at \
                     FROM {keyspace}.outbox_pending WHERE shard = ?",
                    quorum,
                )
                .await?,
            load_progress: prepare
                .statement(
                    "SELECT published_version FROM {keyspace}.outbox_progress \
                     WHERE aggregate_type = ? AND aggregate_id = ?",
                    quorum,
                )
                .await?,
            save_progress: prepare
                .statement(
                    "UPDATE {keyspace}.outbox_progress SET published_version = ? \
                     WHERE aggregate_type = ? AND aggregate_id = ?",
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
    /// Records, before a commit, that `key` may soon have events at `version` to publish.
    pub async fn mark_pending(&self, key: &AggregateKey, version: u64) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(
                &self.outbox.mark_pending,
                (
                    shard_of(key),
                    key.kind.as_str(),
                    &key.id,
                    bigint(version)?,
                    timestamp(SystemTime::now()),
                ),
            )
            .await?;
        Ok(())
    }

    /// Records that every event of `key` up to `version` is published.
    pub async fn mark_published(&self, key: &AggregateKey, version: u64) -> Result<(), StoreError> {
        let version = bigint(version)?;
        let progress = self.session.execute_unpaged(
            &self.outbox.save_progress,
            (version, key.kind.as_str(), &key.id),
        );
        let clear = self.clear_pending_up_to(key, version);
        let (progress, clear) = tokio::join!(progress, clear);
        progress?;
        clear?;
        Ok(())
    }

    /// Deletes markers up to `version` without touching progress (stale markers of commits
    /// that lost their race).
    pub async fn clear_pending(&self, key: &AggregateKey, version: u64) -> Result<(), StoreError> {
        self.clear_pending_up_to(key, bigint(version)?).await
    }

    async fn clear_pending_up_to(
        &self,
        key: &AggregateKey,
        version: i64,
    ) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(
                &self.outbox.clear_pending,
                (shard_of(key), key.kind.as_str(), &key.id, version),
            )
            .await?;
        Ok(())
    }

    /// The highest published version of `key` (0 when nothing was published).
    pub async fn published_version(&self, key: &AggregateKey) -> Result<u64, StoreError> {
        let result = self
            .session
            .execute_unpaged(&self.outbox.load_progress, (key.kind.as_str(), &key.id))
            .await?
            .into_rows_result()?;
        let version = result
            .maybe_first_row::<(Option<i64>,)>()?
            .and_then(|(version,)| version)
            .unwrap_or(0);
        version_of(key, version)
    }

    /// Every pending marker, shard by shard.
    pub async fn pending(&self) -> Result<Vec<PendingMarker>, StoreError> {
        let mut markers = Vec::new();
        for shard in 0..OUTBOX_SHARDS {
            let rows = self
                .session
                .execute_iter(self.outbox.scan_pending.clone(), (shard,))
                .await?
                .rows_stream::<(String, String, i64, Option<CqlTimestamp>)>()?;
            let found: Vec<_> = rows.try_collect().await?;
            for (kind, id, version, marked_at) in found {
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

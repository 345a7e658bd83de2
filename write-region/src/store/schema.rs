//! The keyspace and its tables, created when missing so a fresh cluster needs no migration step.
//!
//! - `streams`: one partition per aggregate. Its events and idempotency records are clustering
//!   rows (`entry_kind`, `entry_key`); its current state and version are static columns, so one
//!   conditional batch moves state and stream together.
//! - `outbox_pending`: the outbox's markers (see `outbox`). Keyspaces created before 2026-12-08
//!   also hold an `outbox_progress` table, no longer read or written.
//! - `instrument_index`: every symbol ever upserted, for listing.
//! - `resting_orders`, `price_fills`, `fill_plans`, `placement_checks`: the resting-order book
//!   (see `book`). Their entries only say where to look (the account is the truth, and an entry
//!   brought back by a replica that missed its delete is dropped when met), so their tombstones
//!   are kept for 5 minutes, not hours: a busy symbol's book and the markers are rewritten all
//!   day, and every scan of them reads the tombstones still kept.

use scylla::client::session::Session;

use super::{Replication, StoreError};

pub(super) async fn create(
    session: &Session,
    keyspace: &str,
    replication: &Replication,
) -> Result<(), StoreError> {
    let ddl = [
        format!(
            "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {}",
            replication.cql_map()
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
            "CREATE TABLE IF NOT EXISTS {keyspace}.instrument_index (\
             bucket int, symbol text, PRIMARY KEY (bucket, symbol))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.resting_orders (\
             symbol text, side text, limit_units bigint, accepted_ms bigint, account_id text, \
             client_order_id text, quantity bigint, expires_at_ms bigint, \
             PRIMARY KEY ((symbol), side, limit_units, accepted_ms, account_id, client_order_id)) \
             WITH gc_grace_seconds = 300"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.price_fills (\
             bucket int, symbol text, version bigint, marked_at timestamp, \
             PRIMARY KEY (bucket, symbol, version)) WITH gc_grace_seconds = 300"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.placement_checks (\
             shard int, account_id text, client_order_id text, seen_version bigint, \
             symbol text, marked_at timestamp, \
             PRIMARY KEY (shard, account_id, client_order_id, seen_version)) \
             WITH gc_grace_seconds = 300"
        ),
        // A plan matters only until its price event's fills are in; a week is ample.
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.fill_plans (\
             symbol text, version bigint, plan blob, PRIMARY KEY ((symbol, version))) \
             WITH default_time_to_live = 604800"
        ),
    ];
    for statement in ddl {
        session.query_unpaged(statement, ()).await?;
    }
    session.await_schema_agreement().await?;
    Ok(())
}

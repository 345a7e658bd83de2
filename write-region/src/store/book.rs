//! The resting-order book: an index of every resting order by symbol, side, limit and time
//! (`resting_orders`), the price events whose fills are not finished (`price_fills`), and each
//! price event's fill plan (`fill_plans`).
//!
//! The account is the truth about an order; the index only says where to look. Its entry is
//! written before the order's commit (so a process killed right after the commit still has it
//! indexed) and deleted after the order closes, so an entry may name an order that never
//! committed or has closed: the fill engine checks the account and drops such entries.
//! A price's marker is written before its commit too, and deleted once all its fills are in: a
//! sweep finishes what a killed process left. The plan is written once (`IF NOT EXISTS`), so every
//! process that finishes a price event fills the same orders by the same quantities.
//! A placement that may rest is marked too (`placement_checks`), before its commit, with the
//! price version its decision saw; the mark goes once the order is checked against the prices
//! that came after, so a process killed in between leaves the check to the sweep.

use std::time::SystemTime;

use futures::TryStreamExt;
use ledger::Side;
use scylla::{statement::prepared::PreparedStatement, value::CqlTimestamp};

use super::{
    AggregateKey, Prepare, Store, StoreError, bigint, streams::applied, system_time, timestamp,
};

/// One resting order as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookEntry {
    pub symbol: String,
    pub side: Side,
    /// The limit in 1e-8 units, so the clustering order is price order.
    pub limit_units: i64,
    /// When it was accepted (ms since the epoch): time priority.
    pub accepted_ms: i64,
    pub account_id: String,
    pub client_order_id: String,
    pub quantity: i64,
    /// Milliseconds since the epoch; 0 for GTC.
    pub expires_at_ms: i64,
}

/// A price event whose fills may not be finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceMarker {
    pub symbol: String,
    pub version: u64,
    pub marked_at: SystemTime,
}

/// A placement that may have rested on a price its decision did not see: the order, and the
/// instrument version it was decided at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementMarker {
    pub account_id: String,
    pub client_order_id: String,
    pub symbol: String,
    pub seen_version: u64,
    pub marked_at: SystemTime,
}

pub(super) struct Statements {
    index: PreparedStatement,
    unindex: PreparedStatement,
    crossed_buys: PreparedStatement,
    crossed_sells: PreparedStatement,
    all_entries: PreparedStatement,
    mark_price: PreparedStatement,
    clear_price: PreparedStatement,
    price_markers: PreparedStatement,
    save_plan: PreparedStatement,
    load_plan: PreparedStatement,
    mark_placement: PreparedStatement,
    clear_placement: PreparedStatement,
    placement_markers: PreparedStatement,
}

/// Partitions the placement markers are spread over, so that the tombstones of a busy day's
/// placements (one per order that may rest) stay far below what a scan may read.
const PLACEMENT_SHARDS: i32 = 16;

fn placement_shard(account_id: &str) -> i32 {
    super::shard_of(&AggregateKey::account(account_id), PLACEMENT_SHARDS)
}

const ENTRY_COLUMNS: &str = "symbol, side, limit_units, accepted_ms, account_id, \
                             client_order_id, quantity, expires_at_ms";

impl Statements {
    pub(super) async fn prepare(prepare: &Prepare<'_>) -> Result<Self, StoreError> {
        let quorum = prepare.consistency.quorum();
        let key = "WHERE symbol = ? AND side = ? AND limit_units = ? AND accepted_ms = ? \
                   AND account_id = ? AND client_order_id = ?";
        Ok(Self {
            index: prepare
                .statement(
                    &format!(
                        "INSERT INTO {{keyspace}}.resting_orders ({ENTRY_COLUMNS}) \
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    ),
                    quorum,
                )
                .await?,
            unindex: prepare
                .statement(
                    &format!("DELETE FROM {{keyspace}}.resting_orders {key}"),
                    quorum,
                )
                .await?,
            // Buys at or above the price, best (highest) limit first; sells at or below it,
            // lowest first. Within one limit the clustering order is time order.
            crossed_buys: prepare
                .statement(
                    &format!(
                        "SELECT {ENTRY_COLUMNS} FROM {{keyspace}}.resting_orders \
                         WHERE symbol = ? AND side = 'BUY' AND limit_units >= ?"
                    ),
                    quorum,
                )
                .await?,
            crossed_sells: prepare
                .statement(
                    &format!(
                        "SELECT {ENTRY_COLUMNS} FROM {{keyspace}}.resting_orders \
                         WHERE symbol = ? AND side = 'SELL' AND limit_units <= ?"
                    ),
                    quorum,
                )
                .await?,
            all_entries: prepare
                .statement(
                    &format!(
                        "SELECT {ENTRY_COLUMNS} FROM {{keyspace}}.resting_orders WHERE symbol = ?"
                    ),
                    quorum,
                )
                .await?,
            mark_price: prepare
                .statement(
                    "INSERT INTO {keyspace}.price_fills (bucket, symbol, version, marked_at) \
                     VALUES (0, ?, ?, ?)",
                    quorum,
                )
                .await?,
            clear_price: prepare
                .statement(
                    "DELETE FROM {keyspace}.price_fills WHERE bucket = 0 AND symbol = ? \
                     AND version = ?",
                    quorum,
                )
                .await?,
            price_markers: prepare
                .statement(
                    "SELECT symbol, version, marked_at FROM {keyspace}.price_fills \
                     WHERE bucket = 0",
                    quorum,
                )
                .await?,
            save_plan: prepare
                .statement(
                    "INSERT INTO {keyspace}.fill_plans (symbol, version, plan) VALUES (?, ?, ?) \
                     IF NOT EXISTS",
                    quorum,
                )
                .await?,
            load_plan: prepare
                .statement(
                    "SELECT plan FROM {keyspace}.fill_plans WHERE symbol = ? AND version = ?",
                    prepare.consistency.serial_read(),
                )
                .await?,
            mark_placement: prepare
                .statement(
                    "INSERT INTO {keyspace}.placement_checks (shard, account_id, \
                     client_order_id, seen_version, symbol, marked_at) VALUES (?, ?, ?, ?, ?, ?)",
                    quorum,
                )
                .await?,
            clear_placement: prepare
                .statement(
                    "DELETE FROM {keyspace}.placement_checks WHERE shard = ? \
                     AND account_id = ? AND client_order_id = ? AND seen_version = ?",
                    quorum,
                )
                .await?,
            placement_markers: prepare
                .statement(
                    "SELECT account_id, client_order_id, seen_version, symbol, marked_at \
                     FROM {keyspace}.placement_checks WHERE shard = ?",
                    quorum,
                )
                .await?,
        })
    }
}

type EntryRow = (
    String,
    String,
    i64,
    i64,
    String,
    String,
    Option<i64>,
    Option<i64>,
);

/// An index row as an entry; `None` for a row this build never writes whole (a side it does not
/// spell, or a row missing its other columns), which is skipped rather than failing the book.
fn entry(row: EntryRow) -> Option<BookEntry> {
    let (symbol, side, limit_units, accepted_ms, account_id, client_order_id, quantity, expires) =
        row;
    Some(BookEntry {
        symbol,
        side: Side::parse(&side)?,
        limit_units,
        accepted_ms,
        account_id,
        client_order_id,
        quantity: quantity?,
        expires_at_ms: expires?,
    })
}

impl BookEntry {
    fn key(&self) -> (&str, &str, i64, i64, &str, &str) {
        (
            &self.symbol,
            self.side.as_str(),
            self.limit_units,
            self.accepted_ms,
            &self.account_id,
            &self.client_order_id,
        )
    }

    /// Whether both name the same row of the index.
    pub fn same_row(&self, other: &BookEntry) -> bool {
        self.key() == other.key()
    }
}

impl Store {
    /// Indexes a resting order (idempotent; written before the order's commit).
    pub async fn index_resting(&self, entry: &BookEntry) -> Result<(), StoreError> {
        let (symbol, side, limit, at, account, order) = entry.key();
        self.session
            .execute_unpaged(
                &self.book.index,
                (
                    symbol,
                    side,
                    limit,
                    at,
                    account,
                    order,
                    entry.quantity,
                    entry.expires_at_ms,
                ),
            )
            .await?;
        Ok(())
    }

    /// Drops an entry whose order has closed (or never committed).
    pub async fn unindex_resting(&self, entry: &BookEntry) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(&self.book.unindex, entry.key())
            .await?;
        Ok(())
    }

    /// Records what is left of a partly filled order, so the next plan allots it no more. The
    /// whole row is written (not one column): landing after the entry's delete, it brings back
    /// an entry naming a closed order, which the fill engine drops when it meets it, rather than
    /// a row without its other columns.
    pub async fn requantify_resting(
        &self,
        entry: &BookEntry,
        leaves: i64,
    ) -> Result<(), StoreError> {
        self.index_resting(&BookEntry {
            quantity: leaves,
            ..entry.clone()
        })
        .await
    }

    /// Resting buys at or above `price_units` (best first) and sells at or below it (best
    /// first), each in price-then-time priority.
    pub async fn crossed(
        &self,
        symbol: &str,
        price_units: i64,
    ) -> Result<(Vec<BookEntry>, Vec<BookEntry>), StoreError> {
        let (buys, sells) = tokio::join!(
            self.entries(&self.book.crossed_buys, (symbol, price_units)),
            self.entries(&self.book.crossed_sells, (symbol, price_units)),
        );
        let mut buys = buys?;
        // Stored lowest limit first; the best buy is the highest, earliest within a limit.
        buys.sort_by(|a, b| {
            b.limit_units
                .cmp(&a.limit_units)
                .then(a.accepted_ms.cmp(&b.accepted_ms))
        });
        Ok((buys, sells?))
    }

    /// Every entry of `symbol`'s book.
    pub async fn book_of(&self, symbol: &str) -> Result<Vec<BookEntry>, StoreError> {
        self.entries(&self.book.all_entries, (symbol,)).await
    }

    async fn entries(
        &self,
        statement: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Vec<BookEntry>, StoreError> {
        let rows = self
            .session
            .execute_iter(statement.clone(), values)
            .await?
            .rows_stream::<EntryRow>()?;
        let rows: Vec<EntryRow> = rows.try_collect().await?;
        Ok(rows.into_iter().filter_map(entry).collect())
    }

    /// Records, before a price commits, that its fills are to be made.
    pub async fn mark_price(&self, symbol: &str, version: u64) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(
                &self.book.mark_price,
                (symbol, bigint(version)?, timestamp(SystemTime::now())),
            )
            .await?;
        Ok(())
    }

    pub async fn clear_price(&self, symbol: &str, version: u64) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(&self.book.clear_price, (symbol, bigint(version)?))
            .await?;
        Ok(())
    }

    /// Every price event whose fills may be unfinished.
    pub async fn price_markers(&self) -> Result<Vec<PriceMarker>, StoreError> {
        let rows = self
            .session
            .execute_iter(self.book.price_markers.clone(), ())
            .await?
            .rows_stream::<(String, i64, Option<CqlTimestamp>)>()?;
        let rows: Vec<_> = rows.try_collect().await?;
        Ok(rows
            .into_iter()
            .filter_map(|(symbol, version, marked_at)| {
                Some(PriceMarker {
                    symbol,
                    version: u64::try_from(version).ok()?,
                    marked_at: system_time(marked_at),
                })
            })
            .collect())
    }

    /// Records, before the commit of an order that may rest, the price version it is decided at.
    pub async fn mark_placement(&self, marker: &PlacementMarker) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(
                &self.book.mark_placement,
                (
                    placement_shard(&marker.account_id),
                    &marker.account_id,
                    &marker.client_order_id,
                    bigint(marker.seen_version)?,
                    &marker.symbol,
                    timestamp(marker.marked_at),
                ),
            )
            .await?;
        Ok(())
    }

    pub async fn clear_placement(&self, marker: &PlacementMarker) -> Result<(), StoreError> {
        self.session
            .execute_unpaged(
                &self.book.clear_placement,
                (
                    placement_shard(&marker.account_id),
                    &marker.account_id,
                    &marker.client_order_id,
                    bigint(marker.seen_version)?,
                ),
            )
            .await?;
        Ok(())
    }

    /// Every placement whose check against later prices may be unfinished.
    pub async fn placement_markers(&self) -> Result<Vec<PlacementMarker>, StoreError> {
        let rows = self
            .scan_shards::<(String, String, i64, String, Option<CqlTimestamp>)>(
                &self.book.placement_markers,
                PLACEMENT_SHARDS,
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(
                |(account_id, client_order_id, seen_version, symbol, marked_at)| {
                    Some(PlacementMarker {
                        account_id,
                        client_order_id,
                        symbol,
                        seen_version: u64::try_from(seen_version).ok()?,
                        marked_at: system_time(marked_at),
                    })
                },
            )
            .collect())
    }

    /// Stores `plan` as the price event's plan unless one is stored already, and returns the
    /// plan that stands.
    pub async fn settle_plan(
        &self,
        symbol: &str,
        version: u64,
        plan: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        let version = bigint(version)?;
        let result = self
            .session
            .execute_unpaged(&self.book.save_plan, (symbol, version, &plan))
            .await?;
        if applied(result)? {
            return Ok(plan);
        }
        let result = self
            .session
            .execute_unpaged(&self.book.load_plan, (symbol, version))
            .await?
            .into_rows_result()?;
        Ok(result
            .maybe_first_row::<(Option<Vec<u8>>,)>()?
            .and_then(|(plan,)| plan)
            .unwrap_or_default())
    }
}

//! Aggregate streams: every aggregate (an account, an instrument) is one partition of
//! `streams`, its events as clustering rows, its idempotency records beside them, and its
//! current state and version as static columns. A command is one single-partition conditional
//! batch: the state moves from version `v` to `v + n` only `IF version = v`, and the `n` events
//! and the idempotency record (only `IF NOT EXISTS`) are written in the same Paxos round. Two
//! writers can therefore never both commit on the same version: no read-modify-write race can
//! overspend or oversell, and no request is committed twice under one idempotency key.

use std::time::SystemTime;

use futures::TryStreamExt;
use scylla::{
    response::query_result::QueryResult,
    statement::{
        batch::{Batch, BatchType},
        prepared::PreparedStatement,
    },
    value::{CqlValue, Row},
};

use super::{AggregateKey, Prepare, Store, StoreError, bigint, timestamp, version_of};

/// What kind of row beside the events a key names: an idempotency record (one namespace per
/// kind of request) or an order's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Order,
    Cash,
    /// A cancel, under the order's client order id.
    Cancel,
    /// A fill of a resting order, under "<client order id>@<price event>".
    Fill,
    /// An expiry, under the order's client order id.
    Expiry,
    /// An order's current state (overwritten by every event of the order), under its client
    /// order id.
    OrderState,
}

impl RecordKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::Cash => "cash",
            Self::Cancel => "cancel",
            Self::Fill => "fill",
            Self::Expiry => "expiry",
            Self::OrderState => "order_state",
        }
    }
}

/// The `entry_kind` of event rows (idempotency records use their [`RecordKind`]).
const EVENT_ROW: &str = "event";

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
    /// Rows the events overwrite (an order's current state), written in the same batch.
    pub rows: Vec<(RecordKind, String, Vec<u8>)>,
}

pub(super) struct Statements {
    load_state: PreparedStatement,
    load_state_serial: PreparedStatement,
    load_record: PreparedStatement,
    load_rows: PreparedStatement,
    load_events: PreparedStatement,
    create_state: PreparedStatement,
    update_state: PreparedStatement,
    insert_row: PreparedStatement,
    insert_record: PreparedStatement,
    index_instrument: PreparedStatement,
    list_instruments: PreparedStatement,
}

impl Statements {
    pub(super) async fn prepare(prepare: &Prepare<'_>) -> Result<Self, StoreError> {
        let quorum = prepare.consistency.quorum();
        let load_state = "SELECT state, version FROM {keyspace}.streams \
                          WHERE aggregate_type = ? AND aggregate_id = ? LIMIT 1";
        let insert_row = "INSERT INTO {keyspace}.streams \
                          (aggregate_type, aggregate_id, entry_kind, entry_key, payload, occurred_at) \
                          VALUES (?, ?, ?, ?, ?, ?)";
        Ok(Self {
            load_state: prepare.statement(load_state, quorum).await?,
            // A SERIAL read completes any Paxos round in flight, so after a lost race the
            // retry sees the winner's state.
            load_state_serial: prepare
                .statement(load_state, prepare.consistency.serial_read())
                .await?,
            load_record: prepare
                .statement(
                    "SELECT payload FROM {keyspace}.streams \
                     WHERE aggregate_type = ? AND aggregate_id = ? \
                     AND entry_kind = ? AND entry_key = ?",
                    prepare.consistency.serial_read(),
                )
                .await?,
            load_rows: prepare
                .statement(
                    "SELECT entry_key, payload FROM {keyspace}.streams \
                     WHERE aggregate_type = ? AND aggregate_id = ? \
                     AND entry_kind = ? AND entry_key > ? LIMIT ?",
                    quorum,
                )
                .await?,
            load_events: prepare
                .statement(
                    &format!(
                        "SELECT payload FROM {{keyspace}}.streams \
                         WHERE aggregate_type = ? AND aggregate_id = ? \
                         AND entry_kind = '{EVENT_ROW}' AND entry_key > ? AND entry_key <= ?"
                    ),
                    quorum,
                )
                .await?,
            create_state: prepare
                .statement(
                    "INSERT INTO {keyspace}.streams (aggregate_type, aggregate_id, state, version) \
                     VALUES (?, ?, ?, ?) IF NOT EXISTS",
                    quorum,
                )
                .await?,
            update_state: prepare
                .statement(
                    "UPDATE {keyspace}.streams SET state = ?, version = ? \
                     WHERE aggregate_type = ? AND aggregate_id = ? IF version = ?",
                    quorum,
                )
                .await?,
            insert_row: prepare.statement(insert_row, quorum).await?,
            insert_record: prepare
                .statement(&format!("{insert_row} IF NOT EXISTS"), quorum)
                .await?,
            index_instrument: prepare
                .statement(
                    "INSERT INTO {keyspace}.instrument_index (bucket, symbol) VALUES (0, ?)",
                    quorum,
                )
                .await?,
            list_instruments: prepare
                .statement(
                    "SELECT symbol FROM {keyspace}.instrument_index WHERE bucket = 0",
                    quorum,
                )
                .await?,
        })
    }
}

impl Store {
    /// The aggregate's state. `serial` completes any in-flight Paxos round first.
    pub async fn load(&self, key: &AggregateKey, serial: bool) -> Result<Stored, StoreError> {
        let statement = if serial {
            &self.streams.load_state_serial
        } else {
            &self.streams.load_state
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
            version: version_of(key, version.unwrap_or(0))?,
        })
    }

    /// The states of `keys`, in their order: one read per distinct aggregate, sent together.
    pub async fn load_each(&self, keys: &[AggregateKey]) -> Result<Vec<Stored>, StoreError> {
        let mut distinct: Vec<&AggregateKey> = Vec::new();
        let slots: Vec<usize> = keys
            .iter()
            .map(|key| match distinct.iter().position(|seen| *seen == key) {
                Some(slot) => slot,
                None => {
                    distinct.push(key);
                    distinct.len() - 1
                }
            })
            .collect();
        let loaded =
            futures::future::try_join_all(distinct.iter().map(|key| self.load(key, false))).await?;
        Ok(slots
            .into_iter()
            .filter_map(|slot| loaded.get(slot).cloned())
            .collect())
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
                &self.streams.load_record,
                (key.kind.as_str(), &key.id, kind.as_str(), record_key),
            )
            .await?
            .into_rows_result()?;
        Ok(result
            .maybe_first_row::<(Option<Vec<u8>>,)>()?
            .and_then(|(payload,)| payload))
    }

    /// Up to `limit` rows of `kind` with keys after `after`, in key order.
    pub async fn load_rows(
        &self,
        key: &AggregateKey,
        kind: RecordKind,
        after: &str,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let result = self
            .session
            .execute_unpaged(
                &self.streams.load_rows,
                (key.kind.as_str(), &key.id, kind.as_str(), after, limit),
            )
            .await?
            .into_rows_result()?;
        result
            .rows::<(String, Option<Vec<u8>>)>()?
            .map(|row| {
                row.map(|(entry_key, payload)| (entry_key, payload.unwrap_or_default()))
                    .map_err(StoreError::from)
            })
            .collect()
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
                self.streams.load_events.clone(),
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
            return Err(StoreError::EmptyAppend);
        };
        let statements = &self.streams;
        let kind = CqlValue::Text(append.key.kind.as_str().to_owned());
        let id = CqlValue::Text(append.key.id.clone());
        let new_version = CqlValue::BigInt(bigint(last.version)?);
        let mut batch = Batch::new(BatchType::Logged);
        let mut values: Vec<Vec<CqlValue>> = Vec::with_capacity(append.events.len() + 2);
        if append.expected_version == 0 {
            batch.append_statement(statements.create_state.clone());
            values.push(vec![
                kind.clone(),
                id.clone(),
                CqlValue::Blob(append.state),
                new_version,
            ]);
        } else {
            batch.append_statement(statements.update_state.clone());
            values.push(vec![
                CqlValue::Blob(append.state),
                new_version,
                kind.clone(),
                id.clone(),
                CqlValue::BigInt(bigint(append.expected_version)?),
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
            batch.append_statement(statements.insert_row.clone());
            values.push(row(
                EVENT_ROW,
                event_key(event.version),
                event.payload.clone(),
                event.occurred_at,
            ));
        }
        for (row_kind, row_key, payload) in append.rows {
            batch.append_statement(statements.insert_row.clone());
            values.push(row(row_kind.as_str(), row_key, payload, last.occurred_at));
        }
        if let Some((record_kind, record_key, payload)) = append.record {
            batch.append_statement(statements.insert_record.clone());
            values.push(row(
                record_kind.as_str(),
                record_key.to_owned(),
                payload,
                last.occurred_at,
            ));
        }
        batch.set_consistency(self.consistency.quorum());
        batch.set_serial_consistency(Some(self.consistency.serial()));
        batch.set_request_timeout(Some(self.request_timeout));
        let result = self.session.batch(&batch, values).await?;
        applied(result)
    }

    /// Lists every instrument symbol ever indexed.
    pub async fn instrument_symbols(&self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .session
            .execute_iter(self.streams.list_instruments.clone(), ())
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
            .execute_unpaged(&self.streams.index_instrument, (symbol,))
            .await?;
        Ok(())
    }
}

/// Clustering key of an event row: zero-padded so text order is version order.
fn event_key(version: u64) -> String {
    format!("{version:020}")
}

/// Reads the `[applied]` column of a conditional result, whatever else the row holds.
pub(super) fn applied(result: QueryResult) -> Result<bool, StoreError> {
    let rows = result.into_rows_result()?;
    let index = rows
        .column_specs()
        .iter()
        .position(|spec| spec.name() == "[applied]")
        .ok_or_else(|| StoreError::Conditional("no [applied] column".into()))?;
    let Some(row) = rows.maybe_first_row::<Row>()? else {
        return Err(StoreError::Conditional("no rows".into()));
    };
    match row.columns.get(index) {
        Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
        other => Err(StoreError::Conditional(format!("[applied] is {other:?}"))),
    }
}

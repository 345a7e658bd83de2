//! The region's Redis views: key layout, generations, and the one Lua script that applies a
//! prepared event atomically and idempotently (`lua/apply.lua`). The reads the API answers
//! from are in `reads`.
//!
//! Every key lives under `<prefix>:g<generation>:`, so a rebuild fills a fresh key space while
//! the current one keeps serving; `<prefix>:current` names the generation served and is
//! switched in one atomic step (`lua/switch.lua`). `<prefix>:g<n>:meta` is the generation's
//! sentinel: when Redis comes back empty it is missing, and the projector rebuilds.
//!
//! Per generation `g`:
//! - `g:meta` hash: `layout` (this key layout's number, [`LAYOUT`]: a generation of another
//!   layout is treated as absent, and rebuilt), `seq` (the highest mirror stream sequence
//!   applied or seen), `created_ms`, `acked` (the consumer's ack floor as last recorded: every event up to it is applied here,
//!   because an event is acknowledged only after its apply, which Redis logged before this).
//! - `g:cursor` hash: `<aggregate_type>:<aggregate_id>` -> `version:part:parts`.
//! - `g:acct:<id>` hash: owner, currency, cash, realized (1e-8 units), reserved (cash held back
//!   by resting buys), buying_power, version, as_of (ms).
//! - `g:pos:<id>` hash, every position of the account in one key (a portfolio read is one
//!   `HGETALL` of it whatever the number of positions): `q:<symbol>` quantity, `c:<symbol>`
//!   average cost, `r:<symbol>` realized P&L (1e-8 units), `h:<symbol>` shares held back by
//!   resting sells (only where some are).
//! - `g:orders:<id>` hash: client order id -> `<status>:<encoded portfolio.v1.Order>` (its
//!   latest state); `g:orderids:<status>:<id>` sorted sets of the client order ids in each
//!   status (score 0, so in id order: a page is a range); `g:orderversions:<id>` sorted set of
//!   client order ids scored by the account version that last changed them (what a watcher has
//!   not seen is a range).
//! - `g:trades:<id>` sorted set: encoded `portfolio.v1.Trade`, scored by account version.
//! - `g:alerts:<id>` list of `<account_version>:<encoded portfolio.v1.RiskAlert>`, and
//!   `g:alertids:<id>` set of alert ids already recorded.
//! - `g:symref` hash, what a portfolio shows of each symbol, for all of them (one `HMGET` reads
//!   a portfolio's): `p:<symbol>` last price, `n:<symbol>` name, `s:<symbol>` sector.
//! - `g:sym:<symbol>` hash: asset_class, currency, day, trades, volume, notional (1e-8 units),
//!   holders; `g:symbols` set of known symbols.
//! - `g:totals` hash: accounts, day, trades, volume, notional (1e-8 units).
//!
//! Money that Redis adds up is kept as integers in units of 1e-8 (`HINCRBY` is exact 64-bit
//! arithmetic); Lua's own numbers are doubles and never touch money.

use std::{collections::HashMap, num::ParseIntError, sync::LazyLock};

use redis::{Value, aio::ConnectionManager};
use rust_decimal::Decimal;

use crate::{
    model::{self, Book, BookPosition},
    prepare::PreparedEvent,
};

/// The key layout described above. Raised whenever a layout change means a generation written
/// by older code cannot be read or written by this code: the projector then rebuilds.
pub const LAYOUT: u32 = 2;
/// Functions shared by the apply and read scripts, prepended to each.
const LUA_COMMON: &str = include_str!("lua/common.lua");
const LUA_APPLY: &str = include_str!("lua/apply.lua");
/// Events one run of the apply script applies: one round trip and one script call for many,
/// while Redis, which runs a script alone, is held for about a millisecond at a time.
const EVENTS_PER_APPLY: usize = 64;
/// Events per pipeline: a large batch goes as several, all in flight together.
const EVENTS_PER_PIPELINE: usize = 512;
/// The fields of an event before its body, as the apply script reads them.
const APPLY_FIXED_FIELDS: usize = 9;
/// What the apply script leaves in a counter whose sum left 64-bit integers.
const OVERFLOW: &[u8] = b"overflow";
const LUA_READ: &str = include_str!("lua/read.lua");
const LUA_SWITCH: &str = include_str!("lua/switch.lua");
const LUA_ACKED: &str = include_str!("lua/acked.lua");

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("redis")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected answer from a view script: {0}")]
    Protocol(&'static str),
    #[error("a view script answered a malformed number")]
    Number(#[source] ParseIntError),
    /// A counter the apply script could not add to without leaving 64-bit integers
    /// (`lua/apply.lua`, `add`): only figures far beyond `ledger::limits` get there.
    #[error("a stored total is beyond the range a region can hold")]
    Overflow,
    #[error("a view script answered a malformed decimal")]
    Decimal(#[source] ledger::DecimalError),
    #[error("stored {what} cannot be decoded")]
    Decode {
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },
}

/// Which generation an apply writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Whatever `<prefix>:current` names at the moment the script runs (the live projector).
    Current,
    /// A generation being built (rebuild).
    Generation(u64),
}

/// An aggregate's cursor as the apply script reports it: the last applied event, raw `version`
/// and `part` of that version's `parts`. The zero cursor means nothing applied yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    pub version: u64,
    pub part: u32,
    pub parts: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ApplyOutcome {
    Applied {
        /// The account's book after a completed version (live projector only).
        book: Option<Book>,
    },
    /// At or below the cursor: applied before (redelivery, duplicate, replay).
    Duplicate,
    /// Beyond the cursor's successor: its predecessor has not been applied yet.
    Gap(Cursor),
    /// The target generation (or the pointer to it) does not exist: Redis lost its data.
    NoGeneration,
}

impl ApplyOutcome {
    /// How a trace names the outcome.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Applied { .. } => "applied",
            Self::Duplicate => "duplicate",
            Self::Gap(_) => "gap",
            Self::NoGeneration => "no_generation",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchOutcome {
    Switched {
        previous: Option<u64>,
    },
    /// The served generation has applied up to this stream sequence; catch up first.
    Behind(u64),
    NoGeneration,
}

#[derive(Clone)]
pub struct Views {
    pub(crate) connection: ConnectionManager,
    pub(crate) prefix: String,
    apply: redis::Script,
    pub(crate) read: redis::Script,
    switch: redis::Script,
    acked: redis::Script,
}

/// Every key matching `pattern`, by SCAN so Redis keeps serving meanwhile.
pub async fn scan_keys(
    connection: &mut impl redis::aio::ConnectionLike,
    pattern: &str,
) -> Result<Vec<String>, redis::RedisError> {
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(connection)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// A script that uses the shared functions, and the layout they check.
fn with_common(script: &str) -> String {
    format!("local LAYOUT = '{LAYOUT}'\n{LUA_COMMON}{script}")
}

impl Views {
    /// Connects to the Redis at `url` as `login` (user, password) when given, else as the URL
    /// says; every key this handle touches starts with `prefix`.
    pub async fn connect(
        url: &str,
        login: Option<(String, String)>,
        prefix: String,
    ) -> Result<Self, ViewError> {
        let mut info = redis::IntoConnectionInfo::into_connection_info(url)?;
        if let Some((user, password)) = login {
            let settings = info
                .redis_settings()
                .clone()
                .set_username(user)
                .set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
            .set_response_timeout(Some(std::time::Duration::from_secs(10)));
        let connection = client.get_connection_manager_with_config(config).await?;
        Ok(Self {
            connection,
            prefix,
            apply: redis::Script::new(&with_common(LUA_APPLY)),
            read: redis::Script::new(&with_common(LUA_READ)),
            switch: redis::Script::new(LUA_SWITCH),
            acked: redis::Script::new(LUA_ACKED),
        })
    }

    /// What every key of `generation` starts with.
    pub fn generation_prefix(&self, generation: u64) -> String {
        format!("{}:g{generation}:", self.prefix)
    }

    fn meta_key(&self, generation: u64) -> String {
        format!("{}meta", self.generation_prefix(generation))
    }

    pub async fn ping(&self) -> Result<(), ViewError> {
        let mut connection = self.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await?;
        Ok(())
    }

    /// The generation served, or None when Redis holds no views this code can use (fresh,
    /// restarted empty, or written in an older layout).
    pub async fn current_generation(&self) -> Result<Option<u64>, ViewError> {
        let mut connection = self.connection.clone();
        let current: Option<u64> = redis::cmd("GET")
            .arg(format!("{}:current", self.prefix))
            .query_async(&mut connection)
            .await?;
        let Some(generation) = current else {
            return Ok(None);
        };
        let layout: Option<u32> = redis::cmd("HGET")
            .arg(self.meta_key(generation))
            .arg("layout")
            .query_async(&mut connection)
            .await?;
        Ok((layout == Some(LAYOUT)).then_some(generation))
    }

    /// Identifies the Redis server process: it changes when Redis restarts, which is when it
    /// may have come back with fewer writes than it acknowledged (an older RDB or AOF).
    pub async fn server_run_id(&self) -> Result<String, ViewError> {
        let mut connection = self.connection.clone();
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut connection)
            .await?;
        info.lines()
            .find_map(|line| line.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
            .ok_or(ViewError::Protocol("INFO server without run_id"))
    }

    /// The stream sequence up to which the served generation holds every event (its recorded
    /// `acked`, 0 when never recorded), or None when Redis holds no views.
    pub async fn applied_through(&self) -> Result<Option<u64>, ViewError> {
        let Some(generation) = self.current_generation().await? else {
            return Ok(None);
        };
        let mut connection = self.connection.clone();
        let acked: Option<u64> = redis::cmd("HGET")
            .arg(self.meta_key(generation))
            .arg("acked")
            .query_async(&mut connection)
            .await?;
        Ok(Some(acked.unwrap_or(0)))
    }

    /// Records that the served generation holds every event up to `sequence` (the consumer's
    /// ack floor, read after those acks were sent, hence after their applies), if Redis is
    /// still the process `run_id` names. Returns whether it recorded.
    pub async fn record_acked(&self, sequence: u64, run_id: &str) -> Result<bool, ViewError> {
        let mut connection = self.connection.clone();
        let recorded: i64 = self
            .acked
            .arg(&self.prefix)
            .arg(sequence)
            .arg(run_id)
            .invoke_async(&mut connection)
            .await?;
        Ok(recorded == 1)
    }

    /// Starts an empty generation that nothing serves yet.
    pub async fn begin_generation(&self) -> Result<u64, ViewError> {
        let mut connection = self.connection.clone();
        let generation: u64 = redis::cmd("INCR")
            .arg(format!("{}:generations", self.prefix))
            .query_async(&mut connection)
            .await?;
        // A counter that restarted (Redis emptied) could name a generation with leftovers.
        self.drop_generation(generation).await?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        redis::cmd("HSET")
            .arg(self.meta_key(generation))
            .arg("layout")
            .arg(LAYOUT)
            .arg("seq")
            .arg(0)
            .arg("created_ms")
            .arg(now_ms.to_string())
            .query_async::<()>(&mut connection)
            .await?;
        Ok(generation)
    }

    /// Records that a generation being built has seen the stream up to `sequence` (events
    /// that were gaps included), which is what the switch compares.
    pub async fn mark_seen(&self, generation: u64, sequence: u64) -> Result<(), ViewError> {
        let mut connection = self.connection.clone();
        redis::cmd("HSET")
            .arg(self.meta_key(generation))
            .arg("seq")
            .arg(sequence)
            .query_async::<()>(&mut connection)
            .await?;
        Ok(())
    }

    pub async fn switch_to(&self, generation: u64) -> Result<SwitchOutcome, ViewError> {
        let mut connection = self.connection.clone();
        let answer = array(
            self.switch
                .arg(&self.prefix)
                .arg(generation)
                .invoke_async(&mut connection)
                .await?,
        )?;
        match answer.as_slice() {
            // An empty previous means nothing was served before; anything else is a number.
            [status, previous] if bytes(status)? == b"switched" => Ok(SwitchOutcome::Switched {
                previous: if bytes(previous)?.is_empty() {
                    None
                } else {
                    Some(number(previous)?)
                },
            }),
            [status, sequence] if bytes(status)? == b"behind" => {
                Ok(SwitchOutcome::Behind(number(sequence)?))
            }
            [status] if bytes(status)? == b"nogen" => Ok(SwitchOutcome::NoGeneration),
            _ => Err(ViewError::Protocol("switch answer")),
        }
    }

    /// Every key of one generation (the rebuild test compares two generations key for key).
    pub async fn generation_keys(&self, generation: u64) -> Result<Vec<String>, ViewError> {
        let mut connection = self.connection.clone();
        let pattern = format!("{}*", self.generation_prefix(generation));
        Ok(scan_keys(&mut connection, &pattern).await?)
    }

    /// Removes every key of a generation; returns how many there were.
    pub async fn drop_generation(&self, generation: u64) -> Result<usize, ViewError> {
        let keys = self.generation_keys(generation).await?;
        let mut connection = self.connection.clone();
        for chunk in keys.chunks(500) {
            redis::cmd("UNLINK")
                .arg(chunk)
                .query_async::<()>(&mut connection)
                .await?;
        }
        Ok(keys.len())
    }

    /// Applies events in order, `EVENTS_PER_APPLY` to a script call, all in one round trip;
    /// outcomes are in the same order.
    /// Replaying a batch is harmless (the cursor check skips what was applied).
    pub async fn apply_batch(
        &self,
        target: Target,
        events: &[PreparedEvent],
        snapshots: bool,
    ) -> Result<Vec<ApplyOutcome>, ViewError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let generation = match target {
            Target::Current => String::new(),
            Target::Generation(generation) => generation.to_string(),
        };
        let snapshot = if snapshots { "1" } else { "0" };
        let build = |group: &[PreparedEvent]| {
            let mut pipeline = redis::pipe();
            for chunk in group.chunks(EVENTS_PER_APPLY) {
                // The argument layout is the script's (`lua/apply.lua`): a header, then per
                // event the field count, the fixed fields and the body.
                let command = pipeline
                    .cmd("EVALSHA")
                    .arg(self.apply.get_hash())
                    .arg(0)
                    .arg(&self.prefix)
                    .arg(&generation)
                    .arg(snapshot);
                for event in chunk {
                    command
                        .arg(APPLY_FIXED_FIELDS + event.body.len())
                        .arg(event.aggregate.as_str())
                        .arg(&event.aggregate_id)
                        .arg(event.version)
                        .arg(event.part)
                        .arg(event.parts)
                        .arg(event.stream_sequence)
                        .arg(event.occurred_ms)
                        .arg(model::utc_day(event.occurred_ms))
                        .arg(event.kind.as_str());
                    for argument in &event.body {
                        command.arg(argument.as_slice());
                    }
                }
            }
            pipeline
        };
        // All in flight at once on the one connection, which sends them in this order, each as
        // soon as it is built: Redis runs one while the next is built and on its way, and the
        // last one's answers are decoded.
        let sent = futures::future::join_all(events.chunks(EVENTS_PER_PIPELINE).map(|group| {
            let mut connection = self.connection.clone();
            async move {
                let pipeline = build(group);
                let result = pipeline.query_async::<Vec<Value>>(&mut connection).await;
                (pipeline, result)
            }
        }))
        .await;
        let mut answers = Vec::with_capacity(events.len().div_ceil(EVENTS_PER_APPLY));
        let mut loaded = false;
        for (pipeline, result) in sent {
            let result = match result {
                Err(error)
                    if error.kind()
                        == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    // Redis restarted (its script cache is empty): load and run it again.
                    let mut connection = self.connection.clone();
                    if !loaded {
                        self.apply
                            .prepare_invoke()
                            .load_async(&mut connection)
                            .await?;
                        loaded = true;
                    }
                    pipeline.query_async(&mut connection).await
                }
                other => other,
            };
            answers.extend(result?);
        }
        let mut outcomes = Vec::with_capacity(events.len());
        for answer in answers {
            for outcome in array(answer)? {
                outcomes.push(apply_outcome(outcome)?);
            }
        }
        if outcomes.len() != events.len() {
            return Err(ViewError::Protocol("apply answer count"));
        }
        Ok(outcomes)
    }
}

/// One apply script answer: 'applied' | {'applied', book...} | 'duplicate' | {'gap', v, p, n} |
/// 'nogen'.
fn apply_outcome(answer: Value) -> Result<ApplyOutcome, ViewError> {
    if let Value::Array(fields) = answer {
        return match fields.as_slice() {
            [status, book @ ..] if bytes(status)? == b"applied" && !book.is_empty() => {
                Ok(ApplyOutcome::Applied {
                    book: Some(parse_book(book)?),
                })
            }
            [status, version, part, parts] if bytes(status)? == b"gap" => {
                Ok(ApplyOutcome::Gap(Cursor {
                    version: number(version)?,
                    part: number(part)?,
                    parts: number(parts)?,
                }))
            }
            _ => Err(ViewError::Protocol("apply answer")),
        };
    }
    match bytes(&answer)? {
        b"applied" => Ok(ApplyOutcome::Applied { book: None }),
        b"duplicate" => Ok(ApplyOutcome::Duplicate),
        b"nogen" => Ok(ApplyOutcome::NoGeneration),
        _ => Err(ViewError::Protocol("apply status")),
    }
}

// Decoding script answers. A stored number or decimal that does not parse is corrupt data and
// an error everywhere; only a counter the scripts answer as '' (never written) counts as 0.

pub(crate) fn bytes(value: &Value) -> Result<&[u8], ViewError> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(text) => Ok(text.as_bytes()),
        Value::Nil => Ok(&[]),
        _ => Err(ViewError::Protocol("expected a string")),
    }
}

pub(crate) fn string(value: &Value) -> Result<String, ViewError> {
    Ok(String::from_utf8_lossy(bytes(value)?).into_owned())
}

pub(crate) fn parse_number<T: std::str::FromStr<Err = ParseIntError>>(
    raw: &[u8],
) -> Result<T, ViewError> {
    if raw == OVERFLOW {
        return Err(ViewError::Overflow);
    }
    String::from_utf8_lossy(raw)
        .parse()
        .map_err(ViewError::Number)
}

pub(crate) fn number<T: std::str::FromStr<Err = ParseIntError>>(
    value: &Value,
) -> Result<T, ViewError> {
    match value {
        Value::Int(n) => n.to_string().parse().map_err(ViewError::Number),
        _ => parse_number(bytes(value)?),
    }
}

/// A counter the scripts answer as '' until something counted.
pub(crate) fn counter<T: std::str::FromStr<Err = ParseIntError> + Default>(
    value: &Value,
) -> Result<T, ViewError> {
    if bytes(value).is_ok_and(<[u8]>::is_empty) {
        return Ok(T::default());
    }
    number(value)
}

fn money(value: &Value) -> Result<Decimal, ViewError> {
    ledger::parse_decimal(&string(value)?).map_err(ViewError::Decimal)
}

/// A price the region may not have heard yet ('').
pub(crate) fn optional_money(value: &Value) -> Result<Option<Decimal>, ViewError> {
    if bytes(value)?.is_empty() {
        return Ok(None);
    }
    money(value).map(Some)
}

/// Money kept in 1e-8 units.
pub(crate) fn units(value: &Value) -> Result<Decimal, ViewError> {
    Ok(model::from_scaled(number::<i64>(value)?))
}

pub(crate) fn array(value: Value) -> Result<Vec<Value>, ViewError> {
    match value {
        Value::Array(items) => Ok(items),
        _ => Err(ViewError::Protocol("expected an array")),
    }
}

/// Splits a flat answer into rows of `N` fields, each decoded by `row`.
pub(crate) fn rows<const N: usize, T>(
    fields: &[Value],
    what: &'static str,
    row: impl Fn(&[Value; N]) -> Result<T, ViewError>,
) -> Result<Vec<T>, ViewError> {
    let (rows, rest) = fields.as_chunks::<N>();
    if !rest.is_empty() {
        return Err(ViewError::Protocol(what));
    }
    rows.iter().map(row).collect()
}

/// Parses `book()`'s answer (`lua/common.lua`): the account id; the account's version, as_of,
/// cash, realized, reserved cash and buying power; its positions' hash as field/value pairs;
/// and the price, name and sector of each position in the order of their quantity fields.
pub(crate) fn parse_book(fields: &[Value]) -> Result<Book, ViewError> {
    let [account_id, account, positions, references] = fields else {
        return Err(ViewError::Protocol("book of another shape"));
    };
    let [version, as_of, cash, realized, reserved, buying_power] = slice(account)? else {
        return Err(ViewError::Protocol("account of another shape"));
    };
    let cash = money(or_zero(cash)?)?;
    let held = held_positions(slice(positions)?)?;
    let (references, rest) = slice(references)?.as_chunks::<3>();
    if !rest.is_empty() || references.len() != held.len() {
        return Err(ViewError::Protocol(
            "references of another number than positions",
        ));
    }
    let positions = held
        .into_iter()
        .zip(references)
        .map(|(held, [price, name, sector])| {
            Ok(BookPosition {
                symbol: String::from_utf8_lossy(held.symbol).into_owned(),
                quantity: number(held.quantity)?,
                average_cost: money(or_zero(held.cost)?)?,
                realized_pnl: units(or_zero(held.realized)?)?,
                last_price: optional_money(price)?,
                name: string(name)?,
                sector: string(sector)?,
                reserved_quantity: number(or_zero(held.reserved)?)?,
            })
        })
        .collect::<Result<_, ViewError>>()?;
    Ok(Book {
        account_id: string(account_id)?,
        version: number(or_zero(version)?)?,
        as_of_ms: number(or_zero(as_of)?)?,
        cash,
        realized_pnl: units(or_zero(realized)?)?,
        reserved_cash: money(or_zero(reserved)?)?,
        // A book stored before orders rested reserves nothing: its buying power is its cash.
        buying_power: if bytes(buying_power)?.is_empty() {
            cash
        } else {
            money(buying_power)?
        },
        positions,
    })
}

/// What a field never written reads as.
static ZERO: LazyLock<Value> = LazyLock::new(|| Value::SimpleString("0".to_owned()));

fn or_zero(value: &Value) -> Result<&Value, ViewError> {
    Ok(if bytes(value)?.is_empty() {
        &ZERO
    } else {
        value
    })
}

/// One position's fields in `pos:<account>`, as stored.
struct Held<'v> {
    symbol: &'v [u8],
    quantity: &'v Value,
    cost: &'v Value,
    realized: &'v Value,
    reserved: &'v Value,
}

/// The positions of a `pos:<account>` hash (field/value pairs of `<tag>:<symbol>`), in the
/// order of their quantity fields: the order `book()` read their references in.
fn held_positions(pairs: &[Value]) -> Result<Vec<Held<'_>>, ViewError> {
    let (pairs, rest) = pairs.as_chunks::<2>();
    if !rest.is_empty() {
        return Err(ViewError::Protocol("a hash of an odd number of items"));
    }
    let mut held: Vec<Held> = Vec::new();
    let mut others = Vec::new();
    for [field, value] in pairs {
        match bytes(field)?.split_at_checked(2) {
            Some((b"q:", symbol)) => held.push(Held {
                symbol,
                quantity: value,
                cost: &Value::Nil,
                realized: &Value::Nil,
                reserved: &Value::Nil,
            }),
            Some((tag @ (b"c:" | b"r:" | b"h:"), symbol)) => others.push((tag, symbol, value)),
            _ => return Err(ViewError::Protocol("a position field without a known tag")),
        }
    }
    // By symbol, so an account with many positions is joined in one pass, not one per field.
    let index: HashMap<&[u8], usize> = held
        .iter()
        .enumerate()
        .map(|(at, position)| (position.symbol, at))
        .collect();
    for (tag, symbol, value) in others {
        // Realized P&L and reserved shares may outlive a position's quantity until the next
        // book: only those of a held position are shown.
        let Some(&at) = index.get(symbol) else {
            continue;
        };
        let position = &mut held[at];
        match tag {
            b"c:" => position.cost = value,
            b"r:" => position.realized = value,
            _ => position.reserved = value,
        }
    }
    Ok(held)
}

fn slice(value: &Value) -> Result<&[Value], ViewError> {
    match value {
        Value::Array(items) => Ok(items),
        _ => Err(ViewError::Protocol("expected a list")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(items: &[&str]) -> Value {
        Value::Array(
            items
                .iter()
                .map(|item| Value::BulkString(item.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn a_book_joins_each_held_position_with_its_fields_and_references() {
        let book = parse_book(&[
            Value::BulkString(b"erin".to_vec()),
            text(&["7", "1700000000000", "100.5", "250000000", "", ""]),
            // Fields in any order; a sold-out symbol's realized P&L is not a position.
            text(&[
                "r:IBM",
                "150000000",
                "c:IBM",
                "120.5",
                "q:IBM",
                "6",
                "h:IBM",
                "2",
                "r:OLD",
                "100000000",
                "q:AAPL",
                "3",
                "c:AAPL",
                "10",
            ]),
            text(&["121", "IBM", "Technology", "", "Apple", "Technology"]),
        ])
        .expect("a well-formed book");
        assert_eq!(book.version, 7);
        assert_eq!(book.cash, Decimal::new(1005, 1));
        assert_eq!(book.realized_pnl, Decimal::new(25, 1));
        assert_eq!(book.reserved_cash, Decimal::ZERO);
        assert_eq!(
            book.buying_power, book.cash,
            "unset buying power is the cash"
        );
        let positions: Vec<_> = book
            .positions
            .iter()
            .map(|p| {
                (
                    p.symbol.as_str(),
                    p.quantity,
                    p.average_cost.to_string(),
                    p.realized_pnl.normalize().to_string(),
                    p.last_price.map(|price| price.to_string()),
                    p.name.as_str(),
                    p.reserved_quantity,
                )
            })
            .collect();
        assert_eq!(
            positions,
            [
                (
                    "IBM",
                    6,
                    "120.5".into(),
                    "1.5".into(),
                    Some("121".into()),
                    "IBM",
                    2
                ),
                ("AAPL", 3, "10".into(), "0".into(), None, "Apple", 0),
            ]
        );
    }

    #[test]
    fn a_book_whose_references_do_not_match_its_positions_is_refused() {
        let account = text(&["1", "0", "0", "0", "0", "0"]);
        let positions = text(&["q:IBM", "1"]);
        let short = parse_book(&[
            Value::BulkString(b"erin".to_vec()),
            account.clone(),
            positions.clone(),
            text(&["1", "IBM"]),
        ]);
        assert!(matches!(short, Err(ViewError::Protocol(_))));
        let untagged = parse_book(&[
            Value::BulkString(b"erin".to_vec()),
            account,
            text(&["IBM", "1"]),
            text(&[]),
        ]);
        assert!(matches!(untagged, Err(ViewError::Protocol(_))));
    }
}

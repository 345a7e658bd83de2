//! The region's Redis views: key layout, the one Lua script that applies an enriched event
//! atomically and idempotently, and the read scripts the API answers from.
//!
//! Every key lives under `<prefix>:g<generation>:`, so a rebuild fills a fresh key space while
//! the current one keeps serving; `<prefix>:current` names the generation served and is
//! switched in one atomic step. `<prefix>:g<n>:meta` is the generation's sentinel: when Redis
//! comes back empty it is missing, and the projector rebuilds.
//!
//! Per generation `g`:
//! - `g:meta` hash: `seq` (the highest mirror stream sequence applied or seen), `created_ms`.
//! - `g:cursor` hash: `<aggregate_type>:<aggregate_id>` -> `version:part:parts`.
//! - `g:acct:<id>` hash: owner, currency, cash, realized (1e-8 units), version, as_of (ms).
//! - `g:posq:<id>` / `g:posc:<id>` / `g:posr:<id>` hashes: symbol -> quantity / average cost /
//!   realized P&L (1e-8 units).
//! - `g:trades:<id>` sorted set: encoded `portfolio.v1.Trade`, scored by account version.
//! - `g:alerts:<id>` list of `<account_version>:<encoded portfolio.v1.RiskAlert>`, and
//!   `g:alertids:<id>` set of alert ids already recorded.
//! - `g:sym:<symbol>` hash: name, sector, asset_class, currency, price, day, trades, volume,
//!   notional (1e-8 units), holders; `g:symbols` set of known symbols.
//! - `g:totals` hash: accounts, day, trades, volume, notional (1e-8 units).
//!
//! Money that Redis adds up is kept as integers in units of 1e-8 (`HINCRBY` is exact 64-bit
//! arithmetic); Lua's own numbers are doubles and never touch money.

use prost::Message;
use redis::{Value, aio::ConnectionManager};
use rust_decimal::Decimal;
use trading_proto::{
    events::v1::{EnrichedEvent, enriched_event::Body},
    portfolio::v1 as api,
};

use crate::model::{self, Book, BookPosition, Cursor, ScaleError};

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected answer from a view script: {0}")]
    Protocol(&'static str),
}

/// Why an event cannot be turned into a view change.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("event has no envelope")]
    NoEnvelope,
    #[error("aggregate_type {0:?} is neither account nor instrument")]
    AggregateType(String),
    #[error("version 0 or part {part} outside 1..={parts}")]
    Numbering { part: u32, parts: u32 },
    #[error("{field}: {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
}

/// One event as arguments of the apply script (its layout is the script's, below).
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub version: u64,
    pub part: u32,
    pub parts: u32,
    pub stream_sequence: u64,
    pub occurred_ms: i64,
    /// `true` when the body could not be used (unknown to this schema or malformed): the
    /// cursor still advances so the aggregate is not blocked forever; the cause is logged.
    pub skipped: bool,
    kind: &'static str,
    body: Vec<Vec<u8>>,
}

impl PreparedEvent {
    /// The account whose portfolio this event completes a version of, if any.
    pub fn account(&self) -> Option<&str> {
        (self.aggregate_type == "account").then_some(self.aggregate_id.as_str())
    }

    pub fn completes_version(&self) -> bool {
        self.part == self.parts
    }
}

fn field_error(field: &'static str, problem: impl ToString) -> PrepareError {
    PrepareError::Field {
        field,
        problem: problem.to_string(),
    }
}

fn decimal(field: &'static str, text: &str) -> Result<Decimal, PrepareError> {
    ledger::parse_decimal(text).map_err(|error| field_error(field, error))
}

fn scaled(field: &'static str, text: &str) -> Result<String, PrepareError> {
    // An empty realized P&L (a buy) is zero.
    if text.is_empty() {
        return Ok("0".into());
    }
    let value = decimal(field, text)?;
    model::to_scaled(value)
        .map(|units| units.to_string())
        .map_err(|ScaleError(_)| field_error(field, "is too large for the view"))
}

fn canonical(field: &'static str, text: &str) -> Result<String, PrepareError> {
    decimal(field, text).map(ledger::format_decimal)
}

fn timestamp_ms(timestamp: Option<&prost_types::Timestamp>) -> i64 {
    timestamp.map_or(0, |t| {
        t.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(t.nanos / 1_000_000))
    })
}

pub fn timestamp_from_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// Turns a decoded enriched event into the apply script's arguments. Envelope problems are
/// errors (the event cannot be placed on any cursor); body problems mark it `skipped`.
pub fn prepare(
    event: &EnrichedEvent,
    stream_sequence: u64,
) -> Result<(PreparedEvent, Option<PrepareError>), PrepareError> {
    let envelope = event.envelope.as_ref().ok_or(PrepareError::NoEnvelope)?;
    if !matches!(envelope.aggregate_type.as_str(), "account" | "instrument") {
        return Err(PrepareError::AggregateType(envelope.aggregate_type.clone()));
    }
    if envelope.version == 0 || event.part == 0 || event.part > event.parts {
        return Err(PrepareError::Numbering {
            part: event.part,
            parts: event.parts,
        });
    }
    let occurred_ms = timestamp_ms(envelope.occurred_at.as_ref());
    let mut prepared = PreparedEvent {
        aggregate_type: envelope.aggregate_type.clone(),
        aggregate_id: envelope.aggregate_id.clone(),
        version: envelope.version,
        part: event.part,
        parts: event.parts,
        stream_sequence,
        occurred_ms,
        skipped: false,
        kind: "skip",
        body: Vec::new(),
    };
    match body_args(event, occurred_ms) {
        Ok((kind, body)) => {
            prepared.kind = kind;
            prepared.body = body;
            Ok((prepared, None))
        }
        Err(problem) => {
            prepared.skipped = true;
            Ok((prepared, Some(problem)))
        }
    }
}

fn body_args(
    event: &EnrichedEvent,
    occurred_ms: i64,
) -> Result<(&'static str, Vec<Vec<u8>>), PrepareError> {
    let envelope = event.envelope.as_ref().ok_or(PrepareError::NoEnvelope)?;
    let text = |s: &str| s.as_bytes().to_vec();
    let account_only = |kind: &'static str| {
        if envelope.aggregate_type == "account" {
            Ok(())
        } else {
            Err(field_error(
                "aggregate_type",
                format!("{kind} needs an account aggregate"),
            ))
        }
    };
    let instrument_only = |kind: &'static str| {
        if envelope.aggregate_type == "instrument" {
            Ok(())
        } else {
            Err(field_error(
                "aggregate_type",
                format!("{kind} needs an instrument aggregate"),
            ))
        }
    };
    match &event.body {
        None => Err(field_error("body", "is missing or unknown to this schema")),
        Some(Body::AccountRegistered(body)) => {
            account_only("AccountRegistered")?;
            Ok((
                "registered",
                vec![text(&body.owner_name), text(&body.base_currency)],
            ))
        }
        Some(Body::CashBalanceChanged(body)) => {
            account_only("CashBalanceChanged")?;
            Ok((
                "cash",
                vec![text(&canonical("cash_balance", &body.cash_balance)?)],
            ))
        }
        Some(Body::TradeProfitCalculated(body)) => {
            account_only("TradeProfitCalculated")?;
            if body.symbol.is_empty() {
                return Err(field_error("symbol", "is empty"));
            }
            if body.quantity <= 0 || body.position_quantity_after < 0 {
                return Err(field_error(
                    "quantity",
                    "must be positive, and the position not short",
                ));
            }
            let price = decimal("price", &body.price)?;
            let notional = if body.notional.is_empty() {
                price * Decimal::from(body.quantity)
            } else {
                decimal("notional", &body.notional)?
            };
            let realized = if body.realized_pnl.is_empty() {
                Decimal::ZERO
            } else {
                decimal("realized_pnl", &body.realized_pnl)?
            };
            let trade = api::Trade {
                trade_id: body.trade_id.clone(),
                order_id: body.order_id.clone(),
                client_order_id: body.client_order_id.clone(),
                symbol: body.symbol.clone(),
                side: body.side.clone(),
                quantity: body.quantity,
                price: ledger::format_decimal(price),
                notional: ledger::format_decimal(notional),
                realized_pnl: ledger::format_decimal(realized),
                account_version: envelope.version,
                executed_at: Some(timestamp_from_ms(occurred_ms)),
            };
            let average_cost_after = if body.position_quantity_after == 0 {
                "0".to_owned()
            } else {
                canonical("average_cost_after", &body.average_cost_after)?
            };
            Ok((
                "trade",
                vec![
                    trade.encode_to_vec(),
                    text(&body.symbol),
                    text(&body.quantity.to_string()),
                    text(&scaled("notional", &ledger::format_decimal(notional))?),
                    text(&scaled("realized_pnl", &ledger::format_decimal(realized))?),
                    text(&body.position_quantity_after.to_string()),
                    text(&average_cost_after),
                    text(&body.instrument_name),
                    text(&body.sector),
                ],
            ))
        }
        Some(Body::PortfolioValueUpdated(body)) => {
            account_only("PortfolioValueUpdated")?;
            let mut args = vec![
                text(&canonical("cash_balance", &body.cash_balance)?),
                text(&scaled("realized_pnl", &body.realized_pnl)?),
                text(&body.positions.len().to_string()),
            ];
            for position in &body.positions {
                if position.symbol.is_empty() || position.quantity < 0 {
                    return Err(field_error(
                        "positions",
                        "needs a symbol and a quantity >= 0",
                    ));
                }
                let cost = if position.average_cost.is_empty() {
                    "0".to_owned()
                } else {
                    canonical("positions.average_cost", &position.average_cost)?
                };
                args.extend([
                    text(&position.symbol),
                    text(&position.quantity.to_string()),
                    text(&cost),
                    text(&scaled("positions.realized_pnl", &position.realized_pnl)?),
                    text(&position.name),
                    text(&position.sector),
                ]);
            }
            Ok(("value", args))
        }
        Some(Body::RiskThresholdBreached(body)) => {
            if body.account_id.is_empty() {
                return Err(field_error("account_id", "is empty"));
            }
            let alert = api::RiskAlert {
                alert_id: envelope.event_id.clone(),
                rule: body.rule.clone(),
                symbol: body.symbol.clone(),
                detail: body.detail.clone(),
                observed: body.observed.clone(),
                threshold: body.threshold.clone(),
                account_version: 0,
                raised_at: Some(timestamp_from_ms(occurred_ms)),
            };
            Ok((
                "alert",
                vec![
                    text(&body.account_id),
                    text(&envelope.event_id),
                    alert.encode_to_vec(),
                ],
            ))
        }
        Some(Body::InstrumentReferenceUpdated(body)) => {
            instrument_only("InstrumentReferenceUpdated")?;
            Ok((
                "instrument",
                vec![
                    text(&body.name),
                    text(&body.sector),
                    text(&body.asset_class),
                    text(&body.currency),
                ],
            ))
        }
        Some(Body::MarketPriceChanged(body)) => {
            instrument_only("MarketPriceChanged")?;
            Ok(("price", vec![text(&canonical("price", &body.price)?)]))
        }
    }
}

/// Functions shared by the apply and read scripts.
const LUA_COMMON: &str = r#"
local function book(g, aid)
  local acct = g .. ':acct:' .. aid
  if redis.call('EXISTS', acct) == 0 then return nil end
  local a = redis.call('HMGET', acct, 'version', 'as_of', 'cash', 'realized')
  local out = {aid, a[1] or '0', a[2] or '0', a[3] or '0', a[4] or '0'}
  local q = redis.call('HGETALL', g .. ':posq:' .. aid)
  for i = 1, #q, 2 do
    local s = q[i]
    local c = redis.call('HGET', g .. ':posc:' .. aid, s) or '0'
    local r = redis.call('HGET', g .. ':posr:' .. aid, s) or '0'
    local m = redis.call('HMGET', g .. ':sym:' .. s, 'price', 'name', 'sector')
    for _, v in ipairs({s, q[i + 1], c, r, m[1] or '', m[2] or '', m[3] or ''}) do
      out[#out + 1] = v
    end
  end
  return out
end
"#;

/// ARGV: prefix, generation ('' = the current one), snapshot flag, aggregate type, aggregate
/// id, version, part, parts, stream sequence, occurred_at (ms), UTC day, kind, body...
/// Returns {'applied', gen, book...} | {'duplicate', gen} | {'gap', gen, v, p, n} | {'nogen'}.
const LUA_APPLY: &str = r#"
local prefix, gen = ARGV[1], ARGV[2]
if gen == '' then
  gen = redis.call('GET', prefix .. ':current')
  if not gen then return {'nogen'} end
end
local g = prefix .. ':g' .. gen
local meta = g .. ':meta'
if redis.call('EXISTS', meta) == 0 then return {'nogen'} end
local atype, aid = ARGV[4], ARGV[5]
local version, part, parts = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local seq, occurred, day, kind = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local function seen()
  local s = tonumber(redis.call('HGET', meta, 'seq') or '0')
  if tonumber(seq) > s then redis.call('HSET', meta, 'seq', seq) end
end
local cfield = atype .. ':' .. aid
local cv, cp, cn = 0, 0, 0
local cur = redis.call('HGET', g .. ':cursor', cfield)
if cur then
  local v, p, n = string.match(cur, '^(%d+):(%d+):(%d+)$')
  cv, cp, cn = tonumber(v), tonumber(p), tonumber(n)
end
if version < cv or (version == cv and part <= cp) then
  seen()
  return {'duplicate', gen}
end
local sv, sp = cv + 1, 1
if cp < cn then sv, sp = cv, cp + 1 end
if version ~= sv or part ~= sp then
  return {'gap', gen, tostring(cv), tostring(cp), tostring(cn)}
end

local function holders(symbol, before, after)
  if before <= 0 and after > 0 then
    redis.call('HINCRBY', g .. ':sym:' .. symbol, 'holders', 1)
    redis.call('SADD', g .. ':symbols', symbol)
  elseif before > 0 and after <= 0 then
    redis.call('HINCRBY', g .. ':sym:' .. symbol, 'holders', -1)
  end
end
local function set_position(acct, symbol, qty, cost)
  local before = tonumber(redis.call('HGET', g .. ':posq:' .. acct, symbol) or '0')
  holders(symbol, before, tonumber(qty))
  if tonumber(qty) == 0 then
    redis.call('HDEL', g .. ':posq:' .. acct, symbol)
    redis.call('HDEL', g .. ':posc:' .. acct, symbol)
  else
    redis.call('HSET', g .. ':posq:' .. acct, symbol, qty)
    redis.call('HSET', g .. ':posc:' .. acct, symbol, cost)
  end
end
local function reference(symbol, name, sector)
  local key = g .. ':sym:' .. symbol
  if name ~= '' then redis.call('HSETNX', key, 'name', name) end
  if sector ~= '' then redis.call('HSETNX', key, 'sector', sector) end
  redis.call('SADD', g .. ':symbols', symbol)
end
-- Counters for "today": a trade of a later day starts the day afresh, one of an earlier day
-- (possible across accounts) no longer counts for today.
local function count(key, qty, notional)
  local d = redis.call('HGET', key, 'day')
  if d ~= day then
    if d and tonumber(d) > tonumber(day) then return end
    redis.call('HSET', key, 'day', day, 'trades', 0, 'volume', 0, 'notional', 0)
  end
  redis.call('HINCRBY', key, 'trades', 1)
  redis.call('HINCRBY', key, 'volume', qty)
  redis.call('HINCRBY', key, 'notional', notional)
end

if kind == 'registered' then
  redis.call('HSET', g .. ':acct:' .. aid, 'owner', ARGV[13], 'currency', ARGV[14],
    'cash', '0', 'realized', '0', 'version', '0', 'as_of', occurred)
  redis.call('HINCRBY', g .. ':totals', 'accounts', 1)
elseif kind == 'cash' then
  redis.call('HSET', g .. ':acct:' .. aid, 'cash', ARGV[13])
elseif kind == 'trade' then
  local symbol, qty, notional, realized = ARGV[14], ARGV[15], ARGV[16], ARGV[17]
  redis.call('ZADD', g .. ':trades:' .. aid, version, ARGV[13])
  set_position(aid, symbol, ARGV[18], ARGV[19])
  redis.call('HINCRBY', g .. ':posr:' .. aid, symbol, realized)
  redis.call('HINCRBY', g .. ':acct:' .. aid, 'realized', realized)
  reference(symbol, ARGV[20], ARGV[21])
  count(g .. ':sym:' .. symbol, qty, notional)
  count(g .. ':totals', qty, notional)
elseif kind == 'value' then
  local acct = g .. ':acct:' .. aid
  redis.call('HSET', acct, 'cash', ARGV[13], 'realized', ARGV[14])
  local listed = {}
  local n = tonumber(ARGV[15])
  for i = 0, n - 1 do
    local base = 16 + i * 6
    local symbol = ARGV[base]
    listed[symbol] = true
    set_position(aid, symbol, ARGV[base + 1], ARGV[base + 2])
    redis.call('HSET', g .. ':posr:' .. aid, symbol, ARGV[base + 3])
    reference(symbol, ARGV[base + 4], ARGV[base + 5])
  end
  -- The book is authoritative: a position it no longer lists is gone.
  for _, symbol in ipairs(redis.call('HKEYS', g .. ':posq:' .. aid)) do
    if not listed[symbol] then set_position(aid, symbol, '0', '0') end
  end
  for _, symbol in ipairs(redis.call('HKEYS', g .. ':posr:' .. aid)) do
    if not listed[symbol] then redis.call('HDEL', g .. ':posr:' .. aid, symbol) end
  end
elseif kind == 'alert' then
  local account, alert_id = ARGV[13], ARGV[14]
  if redis.call('SADD', g .. ':alertids:' .. account, alert_id) == 1 then
    local at = version
    if atype ~= 'account' then
      at = redis.call('HGET', g .. ':acct:' .. account, 'version') or '0'
    end
    redis.call('RPUSH', g .. ':alerts:' .. account, tostring(at) .. ':' .. ARGV[15])
  end
elseif kind == 'instrument' then
  local key = g .. ':sym:' .. aid
  redis.call('HSET', key, 'name', ARGV[13], 'sector', ARGV[14], 'asset_class', ARGV[15],
    'currency', ARGV[16])
  redis.call('SADD', g .. ':symbols', aid)
elseif kind == 'price' then
  redis.call('HSET', g .. ':sym:' .. aid, 'price', ARGV[13])
  redis.call('SADD', g .. ':symbols', aid)
end

if atype == 'account' and part == parts then
  redis.call('HSET', g .. ':acct:' .. aid, 'version', tostring(version), 'as_of', occurred)
end
redis.call('HSET', g .. ':cursor', cfield, ARGV[6] .. ':' .. ARGV[7] .. ':' .. ARGV[8])
seen()
if ARGV[3] == '1' and atype == 'account' and part == parts then
  local b = book(g, aid)
  if b then
    local out = {'applied', gen}
    for _, v in ipairs(b) do out[#out + 1] = v end
    return out
  end
end
return {'applied', gen}
"#;

/// ARGV: prefix, op, args... Every answer starts with 'ok', gen | 'nogen' | 'notfound'.
const LUA_READ: &str = r#"
local prefix, op = ARGV[1], ARGV[2]
local gen = redis.call('GET', prefix .. ':current')
if not gen then return {'nogen'} end
local g = prefix .. ':g' .. gen
if op == 'portfolio' then
  local b = book(g, ARGV[3])
  if not b then return {'notfound'} end
  local out = {'ok', gen}
  for _, v in ipairs(b) do out[#out + 1] = v end
  return out
elseif op == 'trades' or op == 'alerts' then
  local aid = ARGV[3]
  if redis.call('EXISTS', g .. ':acct:' .. aid) == 0 then return {'notfound'} end
  local out = {'ok', gen}
  local items
  if op == 'trades' then
    items = redis.call('ZREVRANGEBYSCORE', g .. ':trades:' .. aid, ARGV[4], '-inf',
      'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[5]))
  else
    items = redis.call('LRANGE', g .. ':alerts:' .. aid, 0, -1)
  end
  for _, v in ipairs(items) do out[#out + 1] = v end
  return out
elseif op == 'dashboard' then
  local t = redis.call('HMGET', g .. ':totals', 'accounts', 'day', 'trades', 'volume', 'notional')
  local out = {'ok', gen}
  for i = 1, 5 do out[#out + 1] = t[i] or '0' end
  local symbols = redis.call('SMEMBERS', g .. ':symbols')
  table.sort(symbols)
  for _, s in ipairs(symbols) do
    local m = redis.call('HMGET', g .. ':sym:' .. s, 'name', 'sector', 'price', 'day', 'trades',
      'volume', 'notional', 'holders')
    out[#out + 1] = s
    for i = 1, 8 do out[#out + 1] = m[i] or '' end
  end
  return out
end
return redis.error_reply('unknown read op')
"#;

/// ARGV: prefix, new generation. Switches only if the new generation has seen at least every
/// stream position the current one applied, so nothing the live view shows is lost.
const LUA_SWITCH: &str = r#"
local prefix, new = ARGV[1], ARGV[2]
if redis.call('EXISTS', prefix .. ':g' .. new .. ':meta') == 0 then return {'nogen'} end
local cur = redis.call('GET', prefix .. ':current')
if cur and cur ~= new then
  local cs = tonumber(redis.call('HGET', prefix .. ':g' .. cur .. ':meta', 'seq') or '0')
  local ns = tonumber(redis.call('HGET', prefix .. ':g' .. new .. ':meta', 'seq') or '0')
  if cs > ns then return {'behind', tostring(cs)} end
end
redis.call('SET', prefix .. ':current', new)
return {'switched', cur or ''}
"#;

/// Which generation an apply writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Whatever `<prefix>:current` names at the moment the script runs (the live projector).
    Current,
    /// A generation being built (rebuild).
    Generation(u64),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ApplyOutcome {
    Applied {
        generation: u64,
        /// The account's book after a completed version (live projector only).
        book: Option<Book>,
    },
    Duplicate,
    Gap(Cursor),
    /// The target generation (or the pointer to it) does not exist: Redis lost its data.
    NoGeneration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Read<T> {
    Found { generation: u64, value: T },
    NotFound,
    NoGeneration,
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

#[derive(Debug, Clone, PartialEq)]
pub struct SymbolRow {
    pub symbol: String,
    pub name: String,
    pub sector: String,
    pub last_price: Option<Decimal>,
    pub day: i64,
    pub trades: u64,
    pub volume: i64,
    pub notional: Decimal,
    pub holders: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dashboard {
    pub accounts: u64,
    pub day: i64,
    pub trades: u64,
    pub volume: i64,
    pub notional: Decimal,
    pub symbols: Vec<SymbolRow>,
}

#[derive(Clone)]
pub struct Views {
    connection: ConnectionManager,
    prefix: String,
    apply: redis::Script,
    read: redis::Script,
    switch: redis::Script,
}

fn bytes(value: &Value) -> Result<&[u8], ViewError> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(text) => Ok(text.as_bytes()),
        Value::Nil => Ok(&[]),
        _ => Err(ViewError::Protocol("expected a string")),
    }
}

fn string(value: &Value) -> Result<String, ViewError> {
    Ok(String::from_utf8_lossy(bytes(value)?).into_owned())
}

fn number<T: std::str::FromStr + Default>(value: &Value) -> Result<T, ViewError> {
    if let Value::Int(n) = value {
        return n
            .to_string()
            .parse()
            .map_err(|_| ViewError::Protocol("number out of range"));
    }
    let text = string(value)?;
    if text.is_empty() {
        return Ok(T::default());
    }
    text.parse()
        .map_err(|_| ViewError::Protocol("expected a number"))
}

fn money(value: &Value) -> Result<Decimal, ViewError> {
    ledger::parse_decimal(&string(value)?).map_err(|_| ViewError::Protocol("expected a decimal"))
}

fn optional_money(value: &Value) -> Result<Option<Decimal>, ViewError> {
    let text = string(value)?;
    if text.is_empty() {
        return Ok(None);
    }
    ledger::parse_decimal(&text)
        .map(Some)
        .map_err(|_| ViewError::Protocol("expected a decimal"))
}

fn units(value: &Value) -> Result<Decimal, ViewError> {
    Ok(model::from_scaled(number::<i64>(value)?))
}

fn array(value: Value) -> Result<Vec<Value>, ViewError> {
    match value {
        Value::Array(items) => Ok(items),
        _ => Err(ViewError::Protocol("expected an array")),
    }
}

/// Parses `book()`'s flat answer: account id, version, as_of, cash, realized, then seven
/// fields per position.
fn parse_book(fields: &[Value]) -> Result<Book, ViewError> {
    let [account_id, version, as_of, cash, realized, rest @ ..] = fields else {
        return Err(ViewError::Protocol("short book"));
    };
    if rest.len() % 7 != 0 {
        return Err(ViewError::Protocol("ragged positions"));
    }
    let positions = rest
        .chunks_exact(7)
        .map(|p| {
            Ok(BookPosition {
                symbol: string(&p[0])?,
                quantity: number(&p[1])?,
                average_cost: money(&p[2])?,
                realized_pnl: units(&p[3])?,
                last_price: optional_money(&p[4])?,
                name: string(&p[5])?,
                sector: string(&p[6])?,
            })
        })
        .collect::<Result<Vec<_>, ViewError>>()?;
    Ok(Book {
        account_id: string(account_id)?,
        version: number(version)?,
        as_of_ms: number(as_of)?,
        cash: money(cash)?,
        realized_pnl: units(realized)?,
        positions,
    })
}

impl Views {
    pub async fn connect(url: &str, prefix: String) -> Result<Self, ViewError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
            .set_response_timeout(Some(std::time::Duration::from_secs(10)));
        let connection = client.get_connection_manager_with_config(config).await?;
        Ok(Self {
            connection,
            prefix,
            apply: redis::Script::new(&format!("{LUA_COMMON}{LUA_APPLY}")),
            read: redis::Script::new(&format!("{LUA_COMMON}{LUA_READ}")),
            switch: redis::Script::new(LUA_SWITCH),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn generation_prefix(&self, generation: u64) -> String {
        format!("{}:g{generation}:", self.prefix)
    }

    fn current_key(&self) -> String {
        format!("{}:current", self.prefix)
    }

    pub async fn ping(&self) -> Result<(), ViewError> {
        let mut connection = self.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await?;
        Ok(())
    }

    /// The generation served, or None when Redis holds no views (fresh or restarted empty).
    pub async fn current_generation(&self) -> Result<Option<u64>, ViewError> {
        let mut connection = self.connection.clone();
        let current: Option<u64> = redis::cmd("GET")
            .arg(self.current_key())
            .query_async(&mut connection)
            .await?;
        let Some(generation) = current else {
            return Ok(None);
        };
        let sentinel: bool = redis::cmd("EXISTS")
            .arg(format!("{}meta", self.generation_prefix(generation)))
            .query_async(&mut connection)
            .await?;
        Ok(sentinel.then_some(generation))
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
            .arg(format!("{}meta", self.generation_prefix(generation)))
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
            .arg(format!("{}meta", self.generation_prefix(generation)))
            .arg("seq")
            .arg(sequence)
            .query_async::<()>(&mut connection)
            .await?;
        Ok(())
    }

    /// The highest stream sequence a generation has applied or seen.
    pub async fn seen_sequence(&self, generation: u64) -> Result<Option<u64>, ViewError> {
        let mut connection = self.connection.clone();
        Ok(redis::cmd("HGET")
            .arg(format!("{}meta", self.generation_prefix(generation)))
            .arg("seq")
            .query_async(&mut connection)
            .await?)
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
            [status, previous] if bytes(status)? == b"switched" => {
                let previous = string(previous)?;
                Ok(SwitchOutcome::Switched {
                    previous: previous.parse().ok(),
                })
            }
            [status, sequence] if bytes(status)? == b"behind" => {
                Ok(SwitchOutcome::Behind(number(sequence)?))
            }
            [status] if bytes(status)? == b"nogen" => Ok(SwitchOutcome::NoGeneration),
            _ => Err(ViewError::Protocol("switch answer")),
        }
    }

    /// Every key of a generation (SCAN, so Redis keeps serving meanwhile).
    pub async fn generation_keys(&self, generation: u64) -> Result<Vec<String>, ViewError> {
        let mut connection = self.connection.clone();
        let pattern = format!("{}*", self.generation_prefix(generation));
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
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

    /// Applies events in order, pipelined in one round trip; outcomes are in the same order.
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
        let mut pipeline = redis::pipe();
        for event in events {
            let day = model::utc_day(event.occurred_ms).to_string();
            let command = pipeline
                .cmd("EVALSHA")
                .arg(self.apply.get_hash())
                .arg(0)
                .arg(&self.prefix)
                .arg(&generation)
                .arg(if snapshots { "1" } else { "0" })
                .arg(&event.aggregate_type)
                .arg(&event.aggregate_id)
                .arg(event.version)
                .arg(event.part)
                .arg(event.parts)
                .arg(event.stream_sequence)
                .arg(event.occurred_ms)
                .arg(day)
                .arg(event.kind);
            for argument in &event.body {
                command.arg(argument.as_slice());
            }
        }
        let mut connection = self.connection.clone();
        let answers: Vec<Value> = match pipeline.query_async(&mut connection).await {
            Ok(answers) => answers,
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                // Redis restarted (its script cache is empty): load and run the batch again.
                self.apply
                    .prepare_invoke()
                    .load_async(&mut connection)
                    .await?;
                pipeline.query_async(&mut connection).await?
            }
            Err(error) => return Err(error.into()),
        };
        if answers.len() != events.len() {
            return Err(ViewError::Protocol("pipeline answer count"));
        }
        answers
            .into_iter()
            .map(|answer| {
                let fields = array(answer)?;
                let status = fields.first().ok_or(ViewError::Protocol("empty answer"))?;
                match bytes(status)? {
                    b"applied" => {
                        let generation = number(fields.get(1).ok_or(ViewError::Protocol("gen"))?)?;
                        let book = if fields.len() > 2 {
                            Some(parse_book(&fields[2..])?)
                        } else {
                            None
                        };
                        Ok(ApplyOutcome::Applied { generation, book })
                    }
                    b"duplicate" => Ok(ApplyOutcome::Duplicate),
                    b"gap" => match fields.as_slice() {
                        [_, _, version, part, parts] => Ok(ApplyOutcome::Gap(Cursor {
                            version: number(version)?,
                            part: number(part)?,
                            parts: number(parts)?,
                        })),
                        _ => Err(ViewError::Protocol("gap answer")),
                    },
                    b"nogen" => Ok(ApplyOutcome::NoGeneration),
                    _ => Err(ViewError::Protocol("apply status")),
                }
            })
            .collect()
    }

    async fn read_op(&self, args: &[&str]) -> Result<Read<Vec<Value>>, ViewError> {
        let mut connection = self.connection.clone();
        let mut invocation = self.read.prepare_invoke();
        invocation.arg(&self.prefix);
        for argument in args {
            invocation.arg(*argument);
        }
        let mut fields = array(invocation.invoke_async(&mut connection).await?)?;
        let status = fields.first().ok_or(ViewError::Protocol("empty answer"))?;
        match bytes(status)? {
            b"ok" => {
                let generation = number(fields.get(1).ok_or(ViewError::Protocol("gen"))?)?;
                Ok(Read::Found {
                    generation,
                    value: fields.split_off(2),
                })
            }
            b"notfound" => Ok(Read::NotFound),
            b"nogen" => Ok(Read::NoGeneration),
            _ => Err(ViewError::Protocol("read status")),
        }
    }

    pub async fn portfolio(&self, account_id: &str) -> Result<Read<Book>, ViewError> {
        Ok(match self.read_op(&["portfolio", account_id]).await? {
            Read::Found { generation, value } => Read::Found {
                generation,
                value: parse_book(&value)?,
            },
            Read::NotFound => Read::NotFound,
            Read::NoGeneration => Read::NoGeneration,
        })
    }

    /// Up to `limit` trades, newest first, strictly older than account version `before`.
    pub async fn trades(
        &self,
        account_id: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Read<Vec<api::Trade>>, ViewError> {
        let max = before.map_or_else(|| "+inf".to_owned(), |version| format!("({version}"));
        let limit = limit.to_string();
        Ok(
            match self.read_op(&["trades", account_id, &max, &limit]).await? {
                Read::Found { generation, value } => Read::Found {
                    generation,
                    value: value
                        .chunks_exact(2)
                        .map(|pair| {
                            api::Trade::decode(bytes(&pair[0])?)
                                .map_err(|_| ViewError::Protocol("stored trade"))
                        })
                        .collect::<Result<_, _>>()?,
                },
                Read::NotFound => Read::NotFound,
                Read::NoGeneration => Read::NoGeneration,
            },
        )
    }

    pub async fn alerts(&self, account_id: &str) -> Result<Read<Vec<api::RiskAlert>>, ViewError> {
        Ok(match self.read_op(&["alerts", account_id]).await? {
            Read::Found { generation, value } => Read::Found {
                generation,
                value: value
                    .iter()
                    .map(|item| {
                        let raw = bytes(item)?;
                        let split = raw
                            .iter()
                            .position(|b| *b == b':')
                            .ok_or(ViewError::Protocol("stored alert"))?;
                        let version = std::str::from_utf8(&raw[..split])
                            .ok()
                            .and_then(|text| text.parse().ok())
                            .ok_or(ViewError::Protocol("stored alert version"))?;
                        let mut alert = api::RiskAlert::decode(&raw[split + 1..])
                            .map_err(|_| ViewError::Protocol("stored alert"))?;
                        alert.account_version = version;
                        Ok(alert)
                    })
                    .collect::<Result<_, ViewError>>()?,
            },
            Read::NotFound => Read::NotFound,
            Read::NoGeneration => Read::NoGeneration,
        })
    }

    pub async fn dashboard(&self) -> Result<Read<Dashboard>, ViewError> {
        Ok(match self.read_op(&["dashboard"]).await? {
            Read::Found { generation, value } => {
                let [accounts, day, trades, volume, notional, rest @ ..] = value.as_slice() else {
                    return Err(ViewError::Protocol("short dashboard"));
                };
                let symbols = rest
                    .chunks_exact(9)
                    .map(|s| {
                        Ok(SymbolRow {
                            symbol: string(&s[0])?,
                            name: string(&s[1])?,
                            sector: string(&s[2])?,
                            last_price: optional_money(&s[3])?,
                            day: number(&s[4])?,
                            trades: number(&s[5])?,
                            volume: number(&s[6])?,
                            notional: units(&s[7])?,
                            holders: number(&s[8])?,
                        })
                    })
                    .collect::<Result<_, ViewError>>()?;
                Read::Found {
                    generation,
                    value: Dashboard {
                        accounts: number(accounts)?,
                        day: number(day)?,
                        trades: number(trades)?,
                        volume: number(volume)?,
                        notional: units(notional)?,
                        symbols,
                    },
                }
            }
            Read::NotFound => Read::NotFound,
            Read::NoGeneration => Read::NoGeneration,
        })
    }
}

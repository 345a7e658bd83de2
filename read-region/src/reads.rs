//! The reads the API answers from: one run of the read script (`lua/read.lua`) per request,
//! against the generation `<prefix>:current` names at that moment, decoded into the model.

use prost::Message;
use redis::Value;
use rust_decimal::Decimal;
use trading_proto::portfolio::v1 as api;

use crate::{
    model::{Book, ORDER_STATUSES},
    views::{
        ViewError, Views, array, bytes, counter, number, optional_money, parse_book, parse_number,
        rows, string, units,
    },
};

#[derive(Debug, Clone, PartialEq)]
pub enum Read<T> {
    Found(T),
    /// The account is not known in the served generation.
    NotFound,
    /// Nothing is served: Redis holds no views (a rebuild is due or under way).
    NoGeneration,
}

impl<T> Read<T> {
    fn try_map<U>(self, f: impl FnOnce(T) -> Result<U, ViewError>) -> Result<Read<U>, ViewError> {
        Ok(match self {
            Read::Found(value) => Read::Found(f(value)?),
            Read::NotFound => Read::NotFound,
            Read::NoGeneration => Read::NoGeneration,
        })
    }
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

fn decode<M: Message + Default>(what: &'static str, raw: &[u8]) -> Result<M, ViewError> {
    M::decode(raw).map_err(|source| ViewError::Decode { what, source })
}

/// A stored `<tag>:<encoded message>`, split at its first ':' (the message may hold more).
fn tagged<'v>(item: &'v Value, untagged: &'static str) -> Result<(&'v [u8], &'v [u8]), ViewError> {
    let raw = bytes(item)?;
    let split = raw
        .iter()
        .position(|b| *b == b':')
        .ok_or(ViewError::Protocol(untagged))?;
    Ok((&raw[..split], &raw[split + 1..]))
}

/// One stored alert: `<account_version>:<encoded portfolio.v1.RiskAlert>`.
fn alert(item: &Value) -> Result<api::RiskAlert, ViewError> {
    let (version, raw) = tagged(item, "stored alert without its version")?;
    let mut alert: api::RiskAlert = decode("alert", raw)?;
    alert.account_version = parse_number(version)?;
    Ok(alert)
}

/// One stored order: `<status>:<encoded portfolio.v1.Order>` (the status is for the script).
fn order(item: &Value) -> Result<api::Order, ViewError> {
    let (_status, raw) = tagged(item, "stored order without its status")?;
    decode("order", raw)
}

/// Orders as a watcher reads them: with the account's version at that moment, so it knows
/// which changes it has seen; in the order of the versions that last changed them.
#[derive(Debug, Clone, PartialEq)]
pub struct OrdersAt {
    pub account_version: u64,
    pub orders: Vec<api::Order>,
}

fn orders_at(fields: &[Value]) -> Result<OrdersAt, ViewError> {
    let [account_version, orders @ ..] = fields else {
        return Err(ViewError::Protocol("orders without the account's version"));
    };
    let mut orders: Vec<api::Order> = orders.iter().map(order).collect::<Result<_, _>>()?;
    orders.sort_by_key(|order| order.account_version);
    Ok(OrdersAt {
        account_version: number(account_version)?,
        orders,
    })
}

impl Views {
    /// Runs the read script's `op`; the answer's values follow its status and generation.
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
            b"ok" if fields.len() >= 2 => Ok(Read::Found(fields.split_off(2))),
            b"ok" => Err(ViewError::Protocol("read answer without its generation")),
            b"notfound" => Ok(Read::NotFound),
            b"nogen" => Ok(Read::NoGeneration),
            _ => Err(ViewError::Protocol("read status")),
        }
    }

    pub async fn portfolio(&self, account_id: &str) -> Result<Read<Book>, ViewError> {
        self.read_op(&["portfolio", account_id])
            .await?
            .try_map(|fields| parse_book(&fields))
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
        self.read_op(&["trades", account_id, &max, &limit])
            .await?
            // Each trade comes with its score (the account version it already carries).
            .try_map(|fields| {
                rows(&fields, "trades without scores", |[trade, _score]| {
                    decode("trade", bytes(trade)?)
                })
            })
    }

    /// Up to `limit` of the account's orders in `statuses`, in client order id order, strictly
    /// after `after`.
    pub async fn orders(
        &self,
        account_id: &str,
        statuses: &[ledger::OrderStatus],
        after: Option<&str>,
        limit: usize,
    ) -> Result<Read<Vec<api::Order>>, ViewError> {
        let limit = limit.to_string();
        let mut args = vec!["orders", account_id, after.unwrap_or(""), &limit];
        args.extend(statuses.iter().map(|status| status.as_str()));
        self.read_op(&args)
            .await?
            .try_map(|fields| fields.iter().map(order).collect())
    }

    /// Every open order of the account (a watcher's start).
    pub async fn open_orders(&self, account_id: &str) -> Result<Read<OrdersAt>, ViewError> {
        let mut args = vec!["open_orders", account_id];
        args.extend(
            ORDER_STATUSES
                .iter()
                .filter(|status| status.is_open())
                .map(|status| status.as_str()),
        );
        self.read_op(&args)
            .await?
            .try_map(|fields| orders_at(&fields))
    }

    /// The account's orders changed after account version `after`.
    pub async fn order_changes(
        &self,
        account_id: &str,
        after: u64,
    ) -> Result<Read<OrdersAt>, ViewError> {
        self.read_op(&["order_changes", account_id, &after.to_string()])
            .await?
            .try_map(|fields| orders_at(&fields))
    }

    pub async fn alerts(&self, account_id: &str) -> Result<Read<Vec<api::RiskAlert>>, ViewError> {
        self.read_op(&["alerts", account_id])
            .await?
            .try_map(|fields| fields.iter().map(alert).collect())
    }

    pub async fn dashboard(&self) -> Result<Read<Dashboard>, ViewError> {
        self.read_op(&["dashboard"]).await?.try_map(|fields| {
            let [accounts, day, trades, volume, notional, symbols @ ..] = fields.as_slice() else {
                return Err(ViewError::Protocol("short dashboard"));
            };
            let symbols = rows(
                symbols,
                "ragged symbols",
                |[
                    symbol,
                    name,
                    sector,
                    price,
                    day,
                    trades,
                    volume,
                    notional,
                    holders,
                ]| {
                    Ok(SymbolRow {
                        symbol: string(symbol)?,
                        name: string(name)?,
                        sector: string(sector)?,
                        last_price: optional_money(price)?,
                        day: counter(day)?,
                        trades: counter(trades)?,
                        volume: counter(volume)?,
                        notional: crate::model::from_scaled(counter(notional)?),
                        holders: counter(holders)?,
                    })
                },
            )?;
            Ok(Dashboard {
                accounts: number(accounts)?,
                day: number(day)?,
                trades: number(trades)?,
                volume: number(volume)?,
                notional: units(notional)?,
                symbols,
            })
        })
    }
}

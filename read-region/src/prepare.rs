//! Preparation: a decoded enriched event becomes the apply script's arguments (`lua/apply.lua`).
//! Everything that can be checked without Redis is checked here, so the script only places the
//! event on its aggregate's cursor and writes; money that Redis adds up is converted to exact
//! scaled integers here too.

use std::collections::HashSet;

use platform::names::Aggregate;
use prost::Message;
use rust_decimal::Decimal;
use trading_proto::{
    events::v1::{EnrichedEvent, EventEnvelope, OrderUpdated, enriched_event::Body},
    portfolio::v1 as api,
};

use crate::model::{self, ScaleError};

/// Why an event, or its body, cannot be turned into a view change.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("event has no envelope")]
    NoEnvelope,
    #[error("aggregate_type {0:?} is neither account nor instrument")]
    AggregateType(String),
    #[error("version 0 or part {part} outside 1..={parts}")]
    Numbering { part: u32, parts: u32 },
    #[error("aggregate_type: {kind} needs an {} aggregate", needs.as_str())]
    WrongAggregate {
        kind: &'static str,
        needs: Aggregate,
    },
    #[error("{field}")]
    Decimal {
        field: &'static str,
        #[source]
        source: ledger::DecimalError,
    },
    #[error("{field}")]
    Scale {
        field: &'static str,
        #[source]
        source: ScaleError,
    },
    #[error("{field}: {problem}")]
    Field {
        field: &'static str,
        problem: &'static str,
    },
}

/// What the apply script does with an event's body: the `kind` argument, whose spelling is the
/// script's (`lua/apply.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Body: owner name, base currency.
    Registered,
    /// Body: cash balance.
    Cash,
    /// Body: encoded `portfolio.v1.Trade`, symbol, quantity, notional (1e-8 units), realized
    /// P&L (1e-8 units), position quantity after, average cost after, instrument name, sector.
    Trade,
    /// Body: cash balance, realized P&L (1e-8 units), reserved cash, buying power, position
    /// count, then per position: symbol, quantity, average cost, realized P&L (1e-8 units),
    /// name, sector, reserved quantity.
    Value,
    /// Body: encoded `portfolio.v1.Order`, client order id, status.
    Order,
    /// Body: account id, alert id, encoded `portfolio.v1.RiskAlert`.
    Alert,
    /// Body: name, sector, asset class, currency.
    Instrument,
    /// Body: price.
    Price,
    /// No body: only the cursor advances (the body was unusable).
    Skip,
}

impl Kind {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::Cash => "cash",
            Self::Trade => "trade",
            Self::Value => "value",
            Self::Order => "order",
            Self::Alert => "alert",
            Self::Instrument => "instrument",
            Self::Price => "price",
            Self::Skip => "skip",
        }
    }
}

/// One event as arguments of the apply script.
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    pub aggregate: Aggregate,
    pub aggregate_id: String,
    pub version: u64,
    pub part: u32,
    pub parts: u32,
    pub stream_sequence: u64,
    pub occurred_ms: i64,
    pub(crate) kind: Kind,
    pub(crate) body: Vec<Vec<u8>>,
}

fn decimal(field: &'static str, text: &str) -> Result<Decimal, PrepareError> {
    ledger::parse_decimal(text).map_err(|source| PrepareError::Decimal { field, source })
}

/// A decimal as the 1e-8 units Redis adds up exactly.
fn scaled(field: &'static str, text: &str) -> Result<String, PrepareError> {
    // An empty realized P&L (a buy) is zero.
    if text.is_empty() {
        return Ok("0".into());
    }
    let value = decimal(field, text)?;
    model::to_scaled(value)
        .map(|units| units.to_string())
        .map_err(|source| PrepareError::Scale { field, source })
}

fn canonical(field: &'static str, text: &str) -> Result<String, PrepareError> {
    decimal(field, text).map(ledger::format_decimal)
}

/// A decimal that may be absent (an event written before the field existed, a figure that
/// does not apply yet): `empty` then, else its canonical spelling.
fn canonical_or(field: &'static str, text: &str, empty: &str) -> Result<String, PrepareError> {
    if text.is_empty() {
        return Ok(empty.to_owned());
    }
    canonical(field, text)
}

fn text(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// Turns a decoded enriched event into the apply script's arguments. Envelope problems are
/// errors (the event cannot be placed on any cursor); a body problem comes back beside an
/// event of kind `Skip`, so the cursor still advances and the aggregate is not blocked forever.
pub fn prepare(
    event: &EnrichedEvent,
    stream_sequence: u64,
) -> Result<(PreparedEvent, Option<PrepareError>), PrepareError> {
    let envelope = event.envelope.as_ref().ok_or(PrepareError::NoEnvelope)?;
    let aggregate = Aggregate::parse(&envelope.aggregate_type)
        .ok_or_else(|| PrepareError::AggregateType(envelope.aggregate_type.clone()))?;
    if envelope.version == 0 || event.part == 0 || event.part > event.parts {
        return Err(PrepareError::Numbering {
            part: event.part,
            parts: event.parts,
        });
    }
    let occurred_ms = model::timestamp_ms(envelope.occurred_at.as_ref());
    let (kind, body, problem) = match body_args(event, envelope, aggregate, occurred_ms) {
        Ok((kind, body)) => (kind, body, None),
        Err(problem) => (Kind::Skip, Vec::new(), Some(problem)),
    };
    let prepared = PreparedEvent {
        aggregate,
        aggregate_id: envelope.aggregate_id.clone(),
        version: envelope.version,
        part: event.part,
        parts: event.parts,
        stream_sequence,
        occurred_ms,
        kind,
        body,
    };
    Ok((prepared, problem))
}

fn body_args(
    event: &EnrichedEvent,
    envelope: &EventEnvelope,
    aggregate: Aggregate,
    occurred_ms: i64,
) -> Result<(Kind, Vec<Vec<u8>>), PrepareError> {
    // Account bodies change an account's book, instrument bodies a symbol: on the other
    // aggregate they would land on the wrong keys.
    let only = |needs: Aggregate, kind: &'static str| {
        if aggregate == needs {
            Ok(())
        } else {
            Err(PrepareError::WrongAggregate { kind, needs })
        }
    };
    let field = |field: &'static str, problem: &'static str| PrepareError::Field { field, problem };
    match &event.body {
        None => Err(field("body", "is missing or unknown to this schema")),
        Some(Body::AccountRegistered(body)) => {
            only(Aggregate::Account, "AccountRegistered")?;
            Ok((
                Kind::Registered,
                vec![text(&body.owner_name), text(&body.base_currency)],
            ))
        }
        Some(Body::CashBalanceChanged(body)) => {
            only(Aggregate::Account, "CashBalanceChanged")?;
            Ok((
                Kind::Cash,
                vec![text(&canonical("cash_balance", &body.cash_balance)?)],
            ))
        }
        Some(Body::TradeProfitCalculated(body)) => {
            only(Aggregate::Account, "TradeProfitCalculated")?;
            if body.symbol.is_empty() {
                return Err(field("symbol", "is empty"));
            }
            if body.quantity <= 0 || body.position_quantity_after < 0 {
                return Err(field(
                    "quantity",
                    "must be positive, and the position not short",
                ));
            }
            let price = decimal("price", &body.price)?;
            let notional = if body.notional.is_empty() {
                price
                    .checked_mul(Decimal::from(body.quantity))
                    .ok_or(field(
                        "notional",
                        "price x quantity is beyond a decimal's range",
                    ))?
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
                executed_at: Some(model::timestamp_from_ms(occurred_ms)),
            };
            let average_cost_after = if body.position_quantity_after == 0 {
                "0".to_owned()
            } else {
                canonical("average_cost_after", &body.average_cost_after)?
            };
            Ok((
                Kind::Trade,
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
            only(Aggregate::Account, "PortfolioValueUpdated")?;
            let cash = decimal("cash_balance", &body.cash_balance)?;
            // Books written before orders rested reserve nothing: all the cash may be spent.
            let reserved = if body.reserved_cash.is_empty() {
                Decimal::ZERO
            } else {
                decimal("reserved_cash", &body.reserved_cash)?
            };
            let buying_power = if body.buying_power.is_empty() {
                cash.checked_sub(reserved).ok_or(field(
                    "reserved_cash",
                    "cash less it is beyond a decimal's range",
                ))?
            } else {
                decimal("buying_power", &body.buying_power)?
            };
            let mut args = vec![
                text(&ledger::format_decimal(cash)),
                text(&scaled("realized_pnl", &body.realized_pnl)?),
                text(&ledger::format_decimal(reserved)),
                text(&ledger::format_decimal(buying_power)),
                text(&body.positions.len().to_string()),
            ];
            // The apply script compares the book with the stored positions field by field and
            // removes what it did not name: each symbol once.
            let mut symbols = HashSet::with_capacity(body.positions.len());
            for position in &body.positions {
                if !symbols.insert(position.symbol.as_str()) {
                    return Err(field("positions", "names a symbol more than once"));
                }
                if position.symbol.is_empty()
                    || position.quantity < 0
                    || !(0..=position.quantity).contains(&position.reserved_quantity)
                {
                    return Err(field(
                        "positions",
                        "needs a symbol, a quantity >= 0 and a reserved quantity within it",
                    ));
                }
                args.extend([
                    text(&position.symbol),
                    text(&position.quantity.to_string()),
                    text(&canonical_or(
                        "positions.average_cost",
                        &position.average_cost,
                        "0",
                    )?),
                    text(&scaled("positions.realized_pnl", &position.realized_pnl)?),
                    text(&position.name),
                    text(&position.sector),
                    text(&position.reserved_quantity.to_string()),
                ]);
            }
            Ok((Kind::Value, args))
        }
        Some(Body::OrderUpdated(body)) => {
            only(Aggregate::Account, "OrderUpdated")?;
            order_args(body, envelope, occurred_ms)
        }
        // Raised on an account or, for a price move, on the instrument: either way it is
        // recorded under the account it names.
        Some(Body::RiskThresholdBreached(body)) => {
            if body.account_id.is_empty() {
                return Err(field("account_id", "is empty"));
            }
            let alert = api::RiskAlert {
                alert_id: envelope.event_id.clone(),
                rule: body.rule.clone(),
                symbol: body.symbol.clone(),
                detail: body.detail.clone(),
                observed: body.observed.clone(),
                threshold: body.threshold.clone(),
                account_version: 0,
                raised_at: Some(model::timestamp_from_ms(occurred_ms)),
            };
            Ok((
                Kind::Alert,
                vec![
                    text(&body.account_id),
                    text(&envelope.event_id),
                    alert.encode_to_vec(),
                ],
            ))
        }
        Some(Body::InstrumentReferenceUpdated(body)) => {
            only(Aggregate::Instrument, "InstrumentReferenceUpdated")?;
            Ok((
                Kind::Instrument,
                vec![
                    text(&body.name),
                    text(&body.sector),
                    text(&body.asset_class),
                    text(&body.currency),
                ],
            ))
        }
        Some(Body::MarketPriceChanged(body)) => {
            only(Aggregate::Instrument, "MarketPriceChanged")?;
            Ok((Kind::Price, vec![text(&canonical("price", &body.price)?)]))
        }
    }
}

/// An order's state as the apply script stores it under its account (the event's aggregate):
/// the `portfolio.v1.Order` readers get, and the client order id and status it is listed by.
fn order_args(
    body: &OrderUpdated,
    envelope: &EventEnvelope,
    occurred_ms: i64,
) -> Result<(Kind, Vec<Vec<u8>>), PrepareError> {
    let field = |field: &'static str, problem: &'static str| PrepareError::Field { field, problem };
    if !body.account_id.is_empty() && body.account_id != envelope.aggregate_id {
        return Err(field(
            "account_id",
            "is not the account whose event this is",
        ));
    }
    // The id is a member of the script's sorted sets and part of page tokens: it must be what
    // the write region accepts (no separators, bounded length).
    if let Some(problem) = ledger::ids::identifier_problem(&body.client_order_id) {
        return Err(field("client_order_id", problem));
    }
    if body.symbol.is_empty() {
        return Err(field("symbol", "is empty"));
    }
    let status = ledger::OrderStatus::parse(&body.status).ok_or(field(
        "status",
        "is not NEW, PARTIALLY_FILLED, FILLED, CANCELED or EXPIRED",
    ))?;
    let accounted = body.filled_quantity.checked_add(body.leaves_quantity);
    if body.quantity <= 0
        || body.filled_quantity < 0
        || body.leaves_quantity < 0
        || body.reserved_quantity < 0
        || accounted.is_none_or(|accounted| accounted > body.quantity)
    {
        return Err(field(
            "quantity",
            "must be positive, with filled and leaves not negative and within it",
        ));
    }
    if body.expires_at_ms < 0 {
        return Err(field("expires_at_ms", "is before the epoch"));
    }
    let order = api::Order {
        order_id: body.order_id.clone(),
        client_order_id: body.client_order_id.clone(),
        symbol: body.symbol.clone(),
        side: body.side.clone(),
        order_type: body.order_type.clone(),
        limit_price: canonical_or("limit_price", &body.limit_price, "")?,
        time_in_force: body.time_in_force.clone(),
        status: status.as_str().to_owned(),
        quantity: body.quantity,
        filled_quantity: body.filled_quantity,
        leaves_quantity: body.leaves_quantity,
        average_fill_price: canonical_or("average_fill_price", &body.average_fill_price, "")?,
        reserved_cash: canonical_or("reserved_cash", &body.reserved_cash, "0")?,
        reserved_quantity: body.reserved_quantity,
        // 0 is "never" (GTC).
        expires_at: (body.expires_at_ms > 0).then(|| model::timestamp_from_ms(body.expires_at_ms)),
        reason: body.reason.clone(),
        account_version: envelope.version,
        updated_at: Some(model::timestamp_from_ms(occurred_ms)),
        account_id: envelope.aggregate_id.clone(),
    };
    Ok((
        Kind::Order,
        vec![
            order.encode_to_vec(),
            text(&body.client_order_id),
            text(status.as_str()),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use trading_proto::events::v1::{PortfolioValueUpdated, ValuedPosition};

    use super::*;

    fn book(symbols: &[&str]) -> EnrichedEvent {
        EnrichedEvent {
            envelope: Some(EventEnvelope {
                aggregate_type: "account".into(),
                aggregate_id: "acct-1".into(),
                version: 3,
                ..Default::default()
            }),
            part: 1,
            parts: 1,
            body: Some(Body::PortfolioValueUpdated(PortfolioValueUpdated {
                account_id: "acct-1".into(),
                cash_balance: "100".into(),
                positions: symbols
                    .iter()
                    .map(|symbol| ValuedPosition {
                        symbol: (*symbol).into(),
                        quantity: 5,
                        average_cost: "10".into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_book_naming_a_symbol_twice_is_skipped_with_its_reason() {
        let (prepared, problem) = prepare(&book(&["AAPL", "MSFT"]), 7).expect("placeable");
        assert_eq!(prepared.kind, Kind::Value);
        assert!(problem.is_none(), "{problem:?}");
        let (prepared, problem) = prepare(&book(&["AAPL", "MSFT", "AAPL"]), 7).expect("placeable");
        assert_eq!(prepared.kind, Kind::Skip);
        assert_eq!(prepared.version, 3, "still placed on its cursor");
        let problem = problem.expect("a reason").to_string();
        assert!(problem.contains("more than once"), "{problem}");
    }
}

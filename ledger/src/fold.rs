//! An account's state as the fold of its raw event stream. The write region keeps the folded
//! state next to the events so commands do not replay; time travel and the consistency checker
//! replay through this same function.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use trading_proto::{
    events::v1::{RawEvent, raw_event::Body},
    trading::v1 as api,
};

use crate::{
    OpenOrder, Position, Side, TimeInForce, decimal::DecimalError, format_decimal, parse_decimal,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    #[error("event version {found} does not follow version {current}")]
    OutOfOrder { current: u64, found: u64 },
    #[error("event {event_id} has no body an account understands")]
    NotAnAccountEvent { event_id: String },
    #[error("event {event_id}: field {field} {source}")]
    BadDecimal {
        event_id: String,
        field: &'static str,
        source: DecimalError,
    },
    #[error("event {event_id}: side {side:?} is neither BUY nor SELL")]
    BadSide { event_id: String, side: String },
    #[error("event {event_id} arrives before the account was opened")]
    NotOpened { event_id: String },
    #[error("event {event_id} takes a figure of the account beyond what it can hold")]
    Overflow { event_id: String },
    #[error("event {event_id}: time in force {time_in_force:?} is not one a resting order has")]
    BadTimeInForce {
        event_id: String,
        time_in_force: String,
    },
    #[error("event {event_id}: order {client_order_id:?} is already open")]
    OrderExists {
        event_id: String,
        client_order_id: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountState {
    pub account_id: String,
    pub owner_name: String,
    pub base_currency: String,
    pub cash: Decimal,
    pub positions: BTreeMap<String, Position>,
    /// Version of the last applied event; 0 before the account is opened.
    pub version: u64,
    pub opened_at: Option<prost_types::Timestamp>,
    pub updated_at: Option<prost_types::Timestamp>,
    /// Resting orders by client order id.
    pub open_orders: BTreeMap<String, OpenOrder>,
}

impl AccountState {
    /// Replays `events` (in version order) from nothing.
    pub fn replay<'a>(events: impl IntoIterator<Item = &'a RawEvent>) -> Result<Self, FoldError> {
        let mut state = Self::default();
        for event in events {
            state.apply(event)?;
        }
        Ok(state)
    }

    /// Applies the next event of the account's stream.
    pub fn apply(&mut self, event: &RawEvent) -> Result<(), FoldError> {
        let envelope = event.envelope.clone().unwrap_or_default();
        let event_id = envelope.event_id;
        if self.version.checked_add(1) != Some(envelope.version) {
            return Err(FoldError::OutOfOrder {
                current: self.version,
                found: envelope.version,
            });
        }
        let overflow = || FoldError::Overflow {
            event_id: event_id.clone(),
        };
        let decimal = |field: &'static str, text: &str| {
            parse_decimal(text).map_err(|source| FoldError::BadDecimal {
                event_id: event_id.clone(),
                field,
                source,
            })
        };
        match &event.body {
            Some(Body::AccountOpened(opened)) => {
                self.account_id.clone_from(&opened.account_id);
                self.owner_name.clone_from(&opened.owner_name);
                self.base_currency.clone_from(&opened.base_currency);
                self.opened_at = envelope.occurred_at;
            }
            _ if self.version == 0 => {
                return Err(FoldError::NotOpened {
                    event_id: event_id.clone(),
                });
            }
            Some(Body::CashDeposited(deposit)) => {
                let amount = decimal("amount", &deposit.amount)?;
                self.cash = self.cash.checked_add(amount).ok_or_else(overflow)?;
            }
            Some(Body::CashWithdrawn(withdrawal)) => {
                let amount = decimal("amount", &withdrawal.amount)?;
                self.cash = self.cash.checked_sub(amount).ok_or_else(overflow)?;
            }
            Some(Body::TradeExecuted(trade)) => {
                let price = decimal("price", &trade.price)?;
                let notional = price
                    .checked_mul(Decimal::from(trade.quantity))
                    .ok_or_else(overflow)?;
                let side = Side::parse(&trade.side).ok_or_else(|| FoldError::BadSide {
                    event_id: event_id.clone(),
                    side: trade.side.clone(),
                })?;
                // Worked on copies, so an event that does not fit leaves the state as it was.
                let mut position = self
                    .positions
                    .get(&trade.symbol)
                    .cloned()
                    .unwrap_or_default();
                let cash = match side {
                    Side::Buy => {
                        position
                            .buy(trade.quantity, price)
                            .map_err(|_| overflow())?;
                        self.cash.checked_sub(notional)
                    }
                    Side::Sell => {
                        position
                            .sell(trade.quantity, price)
                            .map_err(|_| overflow())?;
                        self.cash.checked_add(notional)
                    }
                };
                // A fill of a resting order advances it; a fill at placement never rested.
                let resting = match self.open_orders.get(&trade.client_order_id) {
                    Some(order) => {
                        let mut order = order.clone();
                        order.filled = order
                            .filled
                            .checked_add(trade.quantity)
                            .ok_or_else(overflow)?;
                        order.filled_notional = order
                            .filled_notional
                            .checked_add(notional)
                            .ok_or_else(overflow)?;
                        Some(order)
                    }
                    None => None,
                };
                self.cash = cash.ok_or_else(overflow)?;
                self.positions.insert(trade.symbol.clone(), position);
                if let Some(order) = resting {
                    if order.leaves() > 0 {
                        self.open_orders
                            .insert(order.client_order_id.clone(), order);
                    } else {
                        self.open_orders.remove(&order.client_order_id);
                    }
                }
            }
            Some(Body::OrderAccepted(accepted)) => {
                if self.open_orders.contains_key(&accepted.client_order_id) {
                    return Err(FoldError::OrderExists {
                        event_id: event_id.clone(),
                        client_order_id: accepted.client_order_id.clone(),
                    });
                }
                let side = Side::parse(&accepted.side).ok_or_else(|| FoldError::BadSide {
                    event_id: event_id.clone(),
                    side: accepted.side.clone(),
                })?;
                let time_in_force =
                    TimeInForce::parse(&accepted.time_in_force).ok_or_else(|| {
                        FoldError::BadTimeInForce {
                            event_id: event_id.clone(),
                            time_in_force: accepted.time_in_force.clone(),
                        }
                    })?;
                let order = OpenOrder {
                    order_id: accepted.order_id.clone(),
                    client_order_id: accepted.client_order_id.clone(),
                    symbol: accepted.symbol.clone(),
                    side,
                    limit: decimal("limit_price", &accepted.limit_price)?,
                    quantity: accepted.quantity,
                    filled: 0,
                    filled_notional: Decimal::ZERO,
                    time_in_force,
                    expires_at_ms: accepted.expires_at_ms,
                    accepted_at: envelope.occurred_at,
                };
                // Checked here so that every later sum of reservations fits as well.
                order.reserved_cash().map_err(|_| overflow())?;
                self.open_orders
                    .insert(order.client_order_id.clone(), order);
            }
            Some(Body::OrderCanceled(canceled)) => {
                self.open_orders.remove(&canceled.client_order_id);
            }
            Some(Body::InstrumentUpserted(_) | Body::PriceUpdated(_)) | None => {
                return Err(FoldError::NotAnAccountEvent {
                    event_id: event_id.clone(),
                });
            }
        }
        self.version = envelope.version;
        self.updated_at = envelope.occurred_at;
        Ok(())
    }

    /// The API's view of this state. Closed-out positions stay listed (quantity 0) because
    /// they still carry realized profit and loss.
    pub fn to_api(&self) -> api::Account {
        // Bounded by the limits the write region enforces; an unbounded figure reads as empty.
        let reserved_cash = self.reserved_cash().map(format_decimal).unwrap_or_default();
        let buying_power = self.buying_power().map(format_decimal).unwrap_or_default();
        api::Account {
            account_id: self.account_id.clone(),
            owner_name: self.owner_name.clone(),
            base_currency: self.base_currency.clone(),
            cash_balance: format_decimal(self.cash),
            version: self.version,
            positions: self
                .positions
                .iter()
                .map(|(symbol, position)| api::Position {
                    symbol: symbol.clone(),
                    quantity: position.quantity,
                    average_cost: format_decimal(position.average_cost),
                    realized_pnl: format_decimal(position.realized_pnl),
                    reserved_quantity: self.reserved_quantity(symbol),
                })
                .collect(),
            opened_at: self.opened_at,
            updated_at: self.updated_at,
            reserved_cash,
            buying_power,
            open_orders: self.open_orders.values().map(resting_to_api).collect(),
        }
    }

    /// Reads back what [`AccountState::to_api`] wrote (the write region stores that form).
    pub fn from_api(account: &api::Account) -> Result<Self, DecimalError> {
        let positions = account
            .positions
            .iter()
            .map(|position| {
                Ok((
                    position.symbol.clone(),
                    Position {
                        quantity: position.quantity,
                        average_cost: parse_decimal(&position.average_cost)?,
                        realized_pnl: parse_decimal(&position.realized_pnl)?,
                    },
                ))
            })
            .collect::<Result<_, DecimalError>>()?;
        Ok(Self {
            account_id: account.account_id.clone(),
            owner_name: account.owner_name.clone(),
            base_currency: account.base_currency.clone(),
            cash: parse_decimal(&account.cash_balance)?,
            positions,
            version: account.version,
            opened_at: account.opened_at,
            updated_at: account.updated_at,
            open_orders: account
                .open_orders
                .iter()
                .map(|order| {
                    let order = resting_from_api(order)?;
                    Ok((order.client_order_id.clone(), order))
                })
                .collect::<Result<_, DecimalError>>()?,
        })
    }
}

fn api_side(side: Side) -> api::Side {
    match side {
        Side::Buy => api::Side::Buy,
        Side::Sell => api::Side::Sell,
    }
}

fn api_time_in_force(time_in_force: TimeInForce) -> api::TimeInForce {
    match time_in_force {
        TimeInForce::Day => api::TimeInForce::Day,
        TimeInForce::Gtc => api::TimeInForce::Gtc,
        TimeInForce::Ioc => api::TimeInForce::Ioc,
        TimeInForce::Fok => api::TimeInForce::Fok,
    }
}

/// A timestamp of milliseconds since the epoch; `None` for 0 (never).
pub fn timestamp_from_ms(ms: i64) -> Option<prost_types::Timestamp> {
    (ms > 0).then(|| prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        // Below 1000 * 10^6, so it fits.
        nanos: i32::try_from(ms.rem_euclid(1000).saturating_mul(1_000_000)).unwrap_or(0),
    })
}

/// Milliseconds since the epoch of a timestamp; 0 for none.
pub fn timestamp_ms(timestamp: Option<&prost_types::Timestamp>) -> i64 {
    timestamp.map_or(0, |t| {
        t.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(t.nanos / 1_000_000))
    })
}

fn resting_to_api(order: &OpenOrder) -> api::RestingOrder {
    api::RestingOrder {
        order_id: order.order_id.clone(),
        client_order_id: order.client_order_id.clone(),
        symbol: order.symbol.clone(),
        side: api_side(order.side).into(),
        limit_price: format_decimal(order.limit),
        quantity: order.quantity,
        filled_quantity: order.filled,
        time_in_force: api_time_in_force(order.time_in_force).into(),
        expires_at: timestamp_from_ms(order.expires_at_ms),
        accepted_at: order.accepted_at,
        filled_notional: format_decimal(order.filled_notional),
    }
}

fn resting_from_api(order: &api::RestingOrder) -> Result<OpenOrder, DecimalError> {
    let side = match api::Side::try_from(order.side) {
        Ok(api::Side::Sell) => Side::Sell,
        _ => Side::Buy,
    };
    let time_in_force = match api::TimeInForce::try_from(order.time_in_force) {
        Ok(api::TimeInForce::Gtc) => TimeInForce::Gtc,
        Ok(api::TimeInForce::Ioc) => TimeInForce::Ioc,
        Ok(api::TimeInForce::Fok) => TimeInForce::Fok,
        _ => TimeInForce::Day,
    };
    Ok(OpenOrder {
        order_id: order.order_id.clone(),
        client_order_id: order.client_order_id.clone(),
        symbol: order.symbol.clone(),
        side,
        limit: parse_decimal(&order.limit_price)?,
        quantity: order.quantity,
        filled: order.filled_quantity,
        filled_notional: parse_decimal(&order.filled_notional)?,
        time_in_force,
        expires_at_ms: timestamp_ms(order.expires_at.as_ref()),
        accepted_at: order.accepted_at,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use trading_proto::events::v1::{AccountOpened, CashDeposited, EventEnvelope, TradeExecuted};

    use super::*;

    /// The account event `body` at `version`.
    pub(crate) fn event(version: u64, body: Body) -> RawEvent {
        RawEvent {
            envelope: Some(EventEnvelope {
                event_id: format!("e{version}"),
                version,
                ..Default::default()
            }),
            body: Some(body),
        }
    }

    fn trade(side: &str, quantity: i64, price: &str) -> Body {
        Body::TradeExecuted(TradeExecuted {
            symbol: "AAPL".into(),
            side: side.into(),
            quantity,
            price: price.into(),
            ..Default::default()
        })
    }

    #[test]
    fn folds_cash_and_positions_and_round_trips_through_the_api_form() {
        let events = [
            event(
                1,
                Body::AccountOpened(AccountOpened {
                    account_id: "a1".into(),
                    owner_name: "Ada".into(),
                    base_currency: "USD".into(),
                }),
            ),
            event(
                2,
                Body::CashDeposited(CashDeposited {
                    amount: "10000".into(),
                    ..Default::default()
                }),
            ),
            event(3, trade("BUY", 10, "100")),
            event(4, trade("BUY", 30, "120")),
            event(5, trade("SELL", 15, "130")),
        ];
        let state = AccountState::replay(&events).expect("fold");
        assert_eq!(state.version, 5);
        assert_eq!(state.cash, Decimal::from(10000 - 1000 - 3600 + 1950));
        let position = &state.positions["AAPL"];
        assert_eq!(position.quantity, 25);
        assert_eq!(position.average_cost, Decimal::from(115));
        assert_eq!(position.realized_pnl, Decimal::from(225));
        assert_eq!(AccountState::from_api(&state.to_api()), Ok(state));
    }

    #[test]
    fn refuses_gaps_and_events_before_opening() {
        let mut state = AccountState::default();
        assert_eq!(
            state.apply(&event(2, trade("BUY", 1, "1"))),
            Err(FoldError::OutOfOrder {
                current: 0,
                found: 2
            })
        );
        assert_eq!(
            state.apply(&event(1, trade("BUY", 1, "1"))),
            Err(FoldError::NotOpened {
                event_id: "e1".into()
            })
        );
    }

    #[test]
    fn a_balance_from_before_the_limits_reads_back_and_overflow_leaves_the_state() {
        let mut state = AccountState::replay(&[
            event(
                1,
                Body::AccountOpened(AccountOpened {
                    account_id: "big".into(),
                    ..Default::default()
                }),
            ),
            event(
                2,
                Body::CashDeposited(CashDeposited {
                    amount: "100000000000000000000".into(),
                    ..Default::default()
                }),
            ),
        ])
        .expect("a 10^20 balance folds");
        assert_eq!(AccountState::from_api(&state.to_api()), Ok(state.clone()));
        let before = state.clone();
        assert_eq!(
            state.apply(&event(3, trade("BUY", 10, "9999999999999999999999999999"))),
            Err(FoldError::Overflow {
                event_id: "e3".into()
            })
        );
        assert_eq!(state, before);
    }
}

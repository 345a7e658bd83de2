//! Resting orders: what an account holds back for them and how each order's state (FIX
//! `OrdStatus`) follows from its events. The account's fold keeps the open orders
//! ([`OpenOrder`]); [`OrderProgress`] is one order's whole state after an event, which the write
//! region records for `GetOrder` and the relay ships to every region, so both read it from the
//! same arithmetic.

use rust_decimal::Decimal;
use trading_proto::events::v1::{RawEvent, raw_event::Body};

use crate::{AccountState, Overflow, Side, parse_decimal};

/// How long a LIMIT order may wait, as the events spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeInForce {
    Day,
    Gtc,
    Ioc,
    Fok,
}

impl TimeInForce {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Day => "DAY",
            Self::Gtc => "GTC",
            Self::Ioc => "IOC",
            Self::Fok => "FOK",
        }
    }

    /// Parses the events' spelling; empty (events written before orders rested) is DAY, FIX's
    /// default.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "DAY" | "" => Some(Self::Day),
            "GTC" => Some(Self::Gtc),
            "IOC" => Some(Self::Ioc),
            "FOK" => Some(Self::Fok),
            _ => None,
        }
    }
}

/// An order's status, FIX `OrdStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    New,
    PartiallyFilled,
    Filled,
    Canceled,
    Expired,
}

impl OrderStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::New => "NEW",
            Self::PartiallyFilled => "PARTIALLY_FILLED",
            Self::Filled => "FILLED",
            Self::Canceled => "CANCELED",
            Self::Expired => "EXPIRED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::New,
            Self::PartiallyFilled,
            Self::Filled,
            Self::Canceled,
            Self::Expired,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }

    /// Whether an order in this status may still fill or be canceled.
    pub const fn is_open(self) -> bool {
        matches!(self, Self::New | Self::PartiallyFilled)
    }
}

/// A resting LIMIT order as its account holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenOrder {
    pub order_id: String,
    pub client_order_id: String,
    pub symbol: String,
    pub side: Side,
    pub limit: Decimal,
    pub quantity: i64,
    pub filled: i64,
    /// Sum of price x quantity of its fills.
    pub filled_notional: Decimal,
    pub time_in_force: TimeInForce,
    /// Milliseconds since the epoch; 0: never (GTC).
    pub expires_at_ms: i64,
    pub accepted_at: Option<prost_types::Timestamp>,
}

impl OpenOrder {
    /// Quantity still open.
    pub fn leaves(&self) -> i64 {
        self.quantity.saturating_sub(self.filled)
    }

    /// Cash a buy holds back: its limit times what is left (a fill at a better price spends
    /// less, never more). A sell holds back shares instead.
    pub fn reserved_cash(&self) -> Result<Decimal, Overflow> {
        match self.side {
            Side::Buy => self
                .limit
                .checked_mul(Decimal::from(self.leaves()))
                .ok_or(Overflow),
            Side::Sell => Ok(Decimal::ZERO),
        }
    }

    pub fn reserved_quantity(&self) -> i64 {
        match self.side {
            Side::Buy => 0,
            Side::Sell => self.leaves(),
        }
    }

    pub fn status(&self) -> OrderStatus {
        if self.filled > 0 {
            OrderStatus::PartiallyFilled
        } else {
            OrderStatus::New
        }
    }
}

impl AccountState {
    /// Cash held back by every resting buy.
    pub fn reserved_cash(&self) -> Result<Decimal, Overflow> {
        self.open_orders
            .values()
            .try_fold(Decimal::ZERO, |sum, order| {
                sum.checked_add(order.reserved_cash()?).ok_or(Overflow)
            })
    }

    /// Cash that a new buy or a withdrawal may spend: the balance less what resting buys hold.
    pub fn buying_power(&self) -> Result<Decimal, Overflow> {
        self.cash.checked_sub(self.reserved_cash()?).ok_or(Overflow)
    }

    /// Shares of `symbol` held back by resting sells.
    pub fn reserved_quantity(&self, symbol: &str) -> i64 {
        self.open_orders
            .values()
            .filter(|order| order.symbol == symbol)
            .map(OpenOrder::reserved_quantity)
            .fold(0_i64, i64::saturating_add)
    }

    /// Shares of `symbol` held back by resting buys (what the position would gain if they all
    /// filled), for the position limit.
    pub fn pending_buy_quantity(&self, symbol: &str) -> i64 {
        self.open_orders
            .values()
            .filter(|order| order.symbol == symbol && order.side == Side::Buy)
            .map(OpenOrder::leaves)
            .fold(0_i64, i64::saturating_add)
    }
}

/// One order's whole state after an event of its account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderProgress {
    pub order_id: String,
    pub client_order_id: String,
    pub symbol: String,
    pub side: String,
    /// "MARKET" or "LIMIT".
    pub order_type: String,
    /// Empty for a MARKET order.
    pub limit_price: String,
    pub time_in_force: String,
    pub status: OrderStatus,
    pub quantity: i64,
    pub filled: i64,
    pub filled_notional: Decimal,
    /// This event's fill: price and quantity.
    pub last_fill: Option<(Decimal, i64)>,
    pub reserved_cash: Decimal,
    pub reserved_quantity: i64,
    pub expires_at_ms: i64,
    pub accepted_at: Option<prost_types::Timestamp>,
    pub reason: String,
}

impl OrderProgress {
    pub fn leaves(&self) -> i64 {
        match self.status {
            OrderStatus::New | OrderStatus::PartiallyFilled => {
                self.quantity.saturating_sub(self.filled)
            }
            _ => 0,
        }
    }

    /// Volume-weighted price of the fills; `None` while nothing has filled.
    pub fn average_fill_price(&self) -> Option<Decimal> {
        if self.filled <= 0 {
            return None;
        }
        self.filled_notional
            .checked_div(Decimal::from(self.filled))
            .map(|average| {
                average.round_dp_with_strategy(
                    crate::position::AVERAGE_COST_SCALE,
                    rust_decimal::RoundingStrategy::MidpointAwayFromZero,
                )
            })
    }

    /// An order closed by the event that placed it (filled whole, or an IOC/FOK canceled): it
    /// holds nothing back, and was accepted when that event occurred. The caller names it.
    fn closed_at_placement(event: &RawEvent, status: OrderStatus) -> Self {
        Self {
            order_id: String::new(),
            client_order_id: String::new(),
            symbol: String::new(),
            side: String::new(),
            order_type: String::new(),
            limit_price: String::new(),
            time_in_force: String::new(),
            status,
            quantity: 0,
            filled: 0,
            filled_notional: Decimal::ZERO,
            last_fill: None,
            reserved_cash: Decimal::ZERO,
            reserved_quantity: 0,
            expires_at_ms: 0,
            accepted_at: event.envelope.as_ref().and_then(|e| e.occurred_at),
            reason: String::new(),
        }
    }

    fn resting(order: &OpenOrder) -> Result<Self, Overflow> {
        Ok(Self {
            order_id: order.order_id.clone(),
            client_order_id: order.client_order_id.clone(),
            symbol: order.symbol.clone(),
            side: order.side.as_str().to_owned(),
            order_type: "LIMIT".to_owned(),
            limit_price: crate::format_decimal(order.limit),
            time_in_force: order.time_in_force.as_str().to_owned(),
            status: order.status(),
            quantity: order.quantity,
            filled: order.filled,
            filled_notional: order.filled_notional,
            last_fill: None,
            reserved_cash: order.reserved_cash()?,
            reserved_quantity: order.reserved_quantity(),
            expires_at_ms: order.expires_at_ms,
            accepted_at: order.accepted_at,
            reason: String::new(),
        })
    }

    /// The state of the order `event` concerns, given the account before the event (`before`)
    /// and after it (`after`); `None` for an event that concerns no order.
    pub fn of_event(
        before: &AccountState,
        after: &AccountState,
        event: &RawEvent,
    ) -> Result<Option<Self>, Overflow> {
        let progress = match &event.body {
            Some(Body::OrderAccepted(accepted)) => after
                .open_orders
                .get(&accepted.client_order_id)
                .map(Self::resting)
                .transpose()?,
            Some(Body::TradeExecuted(trade)) => {
                let price = parse_decimal(&trade.price).map_err(|_| Overflow)?;
                let notional = price
                    .checked_mul(Decimal::from(trade.quantity))
                    .ok_or(Overflow)?;
                let mut progress = match (
                    before.open_orders.get(&trade.client_order_id),
                    after.open_orders.get(&trade.client_order_id),
                ) {
                    (_, Some(still_open)) => Self::resting(still_open)?,
                    (Some(was_open), None) => Self {
                        status: OrderStatus::Filled,
                        filled: was_open.quantity,
                        filled_notional: was_open
                            .filled_notional
                            .checked_add(notional)
                            .ok_or(Overflow)?,
                        reserved_cash: Decimal::ZERO,
                        reserved_quantity: 0,
                        ..Self::resting(was_open)?
                    },
                    // Filled whole at its placement.
                    (None, None) => Self {
                        order_id: trade.order_id.clone(),
                        client_order_id: trade.client_order_id.clone(),
                        symbol: trade.symbol.clone(),
                        side: trade.side.clone(),
                        order_type: if trade.order_type.is_empty() {
                            "MARKET".to_owned()
                        } else {
                            trade.order_type.clone()
                        },
                        limit_price: trade.limit_price.clone(),
                        time_in_force: trade.time_in_force.clone(),
                        quantity: trade.quantity,
                        filled: trade.quantity,
                        filled_notional: notional,
                        ..Self::closed_at_placement(event, OrderStatus::Filled)
                    },
                };
                progress.last_fill = Some((price, trade.quantity));
                Some(progress)
            }
            Some(Body::OrderCanceled(canceled)) => {
                let status = OrderStatus::parse(&canceled.status).unwrap_or(OrderStatus::Canceled);
                let closed = match before.open_orders.get(&canceled.client_order_id) {
                    Some(was_open) => Self::resting(was_open)?,
                    // Never rested: an IOC or FOK order that could not fill at once.
                    None => Self {
                        order_id: canceled.order_id.clone(),
                        client_order_id: canceled.client_order_id.clone(),
                        symbol: canceled.symbol.clone(),
                        side: canceled.side.clone(),
                        order_type: "LIMIT".to_owned(),
                        limit_price: canceled.limit_price.clone(),
                        time_in_force: canceled.time_in_force.clone(),
                        quantity: canceled.order_quantity,
                        filled: canceled.filled_quantity,
                        ..Self::closed_at_placement(event, status)
                    },
                };
                Some(Self {
                    status,
                    reason: canceled.reason.clone(),
                    reserved_cash: Decimal::ZERO,
                    reserved_quantity: 0,
                    ..closed
                })
            }
            _ => None,
        };
        Ok(progress)
    }
}

#[cfg(test)]
mod tests {
    use trading_proto::events::v1::{
        AccountOpened, CashDeposited, OrderAccepted, OrderCanceled, TradeExecuted,
    };

    use super::*;
    use crate::fold::tests::event;

    fn d(text: &str) -> Decimal {
        parse_decimal(text).expect("test decimal")
    }

    fn funded() -> AccountState {
        AccountState::replay(&[
            event(
                1,
                Body::AccountOpened(AccountOpened {
                    account_id: "a".into(),
                    owner_name: "A".into(),
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
        ])
        .expect("fold")
    }

    fn accepted(id: &str, side: &str, quantity: i64, limit: &str) -> Body {
        Body::OrderAccepted(OrderAccepted {
            account_id: "a".into(),
            order_id: format!("order-{id}"),
            client_order_id: id.into(),
            symbol: "AAPL".into(),
            side: side.into(),
            quantity,
            limit_price: limit.into(),
            time_in_force: "GTC".into(),
            expires_at_ms: 0,
        })
    }

    fn fill(id: &str, side: &str, quantity: i64, price: &str) -> Body {
        Body::TradeExecuted(TradeExecuted {
            client_order_id: id.into(),
            symbol: "AAPL".into(),
            side: side.into(),
            quantity,
            price: price.into(),
            ..Default::default()
        })
    }

    fn step(state: &mut AccountState, body: Body) -> Option<OrderProgress> {
        let before = state.clone();
        let raw = event(state.version.saturating_add(1), body);
        state.apply(&raw).expect("fold");
        OrderProgress::of_event(&before, state, &raw).expect("fits")
    }

    #[test]
    fn a_resting_buy_reserves_its_limit_and_fills_release_it() {
        let mut state = funded();
        let progress = step(&mut state, accepted("b1", "BUY", 10, "100")).expect("order");
        assert_eq!(progress.status, OrderStatus::New);
        assert_eq!(state.reserved_cash(), Ok(d("1000")));
        assert_eq!(state.buying_power(), Ok(d("9000")));
        // Four fill at 95: 380 spent, 400 of the reservation released.
        let progress = step(&mut state, fill("b1", "BUY", 4, "95")).expect("order");
        assert_eq!(progress.status, OrderStatus::PartiallyFilled);
        assert_eq!(progress.leaves(), 6);
        assert_eq!(state.cash, d("9620"));
        assert_eq!(state.reserved_cash(), Ok(d("600")));
        let progress = step(&mut state, fill("b1", "BUY", 6, "90")).expect("order");
        assert_eq!(progress.status, OrderStatus::Filled);
        assert_eq!(progress.filled, 10);
        assert_eq!(progress.average_fill_price(), Some(d("92")));
        assert_eq!(state.reserved_cash(), Ok(Decimal::ZERO));
        assert_eq!(state.cash, d("9080"));
        assert!(state.open_orders.is_empty());
    }

    #[test]
    fn a_resting_sell_reserves_shares_and_a_cancel_releases_them() {
        let mut state = funded();
        step(&mut state, fill("m1", "BUY", 20, "50"));
        step(&mut state, accepted("s1", "SELL", 15, "60"));
        assert_eq!(state.reserved_quantity("AAPL"), 15);
        step(&mut state, fill("s1", "SELL", 5, "61"));
        assert_eq!(state.reserved_quantity("AAPL"), 10);
        assert_eq!(state.positions["AAPL"].quantity, 15);
        let progress = step(
            &mut state,
            Body::OrderCanceled(OrderCanceled {
                client_order_id: "s1".into(),
                status: "CANCELED".into(),
                reason: "USER".into(),
                ..Default::default()
            }),
        )
        .expect("order");
        assert_eq!(progress.status, OrderStatus::Canceled);
        assert_eq!((progress.filled, progress.leaves()), (5, 0));
        assert_eq!(state.reserved_quantity("AAPL"), 0);
        assert!(state.open_orders.is_empty());
    }

    #[test]
    fn statuses_and_times_in_force_round_trip() {
        for status in [
            OrderStatus::New,
            OrderStatus::PartiallyFilled,
            OrderStatus::Filled,
            OrderStatus::Canceled,
            OrderStatus::Expired,
        ] {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
        }
        for tif in [
            TimeInForce::Day,
            TimeInForce::Gtc,
            TimeInForce::Ioc,
            TimeInForce::Fok,
        ] {
            assert_eq!(TimeInForce::parse(tif.as_str()), Some(tif));
        }
        assert_eq!(TimeInForce::parse("gtc"), None);
    }
}

//! Commands decided against current state. Each decision is the list of event bodies that
//! records the command; the store stamps envelopes and versions and derives the new state by
//! folding those same events, so state and stream can never disagree.

use ledger::{
    AccountState, Instrument, OpenOrder, OrderStatus, Side, TimeInForce, format_decimal, limits,
};
use rust_decimal::Decimal;
use trading_proto::events::v1::{
    AccountOpened, CashDeposited, CashWithdrawn, OrderAccepted, OrderCanceled, TradeExecuted,
    raw_event::Body,
};

use super::{
    CashDirection, CashMovement, DomainError, OpenAccount, OrderCommand, RejectReason,
    command::OrderKind,
};

/// Limits set by configuration rather than by the instrument or the account.
#[derive(Debug, Clone, Copy)]
pub struct OrderLimits {
    pub max_order_notional: Decimal,
}

/// The events recording an accepted command.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub events: Vec<Body>,
}

/// Opens an account under an id not taken yet.
pub fn decide_open(
    command: &OpenAccount,
    existing: Option<&AccountState>,
) -> Result<Decision, DomainError> {
    if existing.is_some() {
        // The caller tells a retry from a conflict with `decide_reopen`.
        return Err(account_exists(command));
    }
    Ok(Decision {
        events: vec![Body::AccountOpened(AccountOpened {
            account_id: command.account_id.clone(),
            owner_name: command.owner_name.clone(),
            base_currency: command.base_currency.clone(),
        })],
    })
}

/// An opening under a taken id is a retry when the details match, and a conflict otherwise.
pub fn decide_reopen(command: &OpenAccount, existing: &AccountState) -> Result<(), DomainError> {
    if existing.owner_name == command.owner_name && existing.base_currency == command.base_currency
    {
        Ok(())
    } else {
        Err(account_exists(command))
    }
}

fn account_exists(command: &OpenAccount) -> DomainError {
    DomainError::Conflict {
        reason: "ACCOUNT_EXISTS",
        detail: format!(
            "account {:?} already exists with other details",
            command.account_id
        ),
    }
}

/// Refuses spending `amount`, described by `what`, beyond the account's buying power: its cash
/// less what resting buys hold back.
fn ensure_cash(account: &AccountState, amount: Decimal, what: String) -> Result<(), DomainError> {
    let reserved = account.reserved_cash().unwrap_or(Decimal::MAX);
    let buying_power = account.cash.checked_sub(reserved).unwrap_or(Decimal::MIN);
    if amount > buying_power {
        let held = if reserved.is_zero() {
            String::new()
        } else {
            format!(
                " ({} reserved by resting orders from {})",
                format_decimal(reserved),
                format_decimal(account.cash)
            )
        };
        return Err(DomainError::rejected(
            RejectReason::InsufficientFunds,
            format!(
                "{what} exceeds the cash balance of {}{held}",
                format_decimal(buying_power.max(Decimal::ZERO))
            ),
        ));
    }
    Ok(())
}

pub fn decide_cash(
    account: &AccountState,
    command: &CashMovement,
) -> Result<Decision, DomainError> {
    let amount = format_decimal(command.amount);
    let body = match command.direction {
        CashDirection::Deposit => {
            let cash_after = within_cash_limit(
                account.cash.checked_add(command.amount),
                format!("deposit of {amount}"),
            )?;
            Body::CashDeposited(CashDeposited {
                account_id: command.account_id.clone(),
                amount,
                cash_balance: format_decimal(cash_after),
                idempotency_key: command.idempotency_key.clone(),
            })
        }
        CashDirection::Withdraw => {
            ensure_cash(account, command.amount, format!("withdrawal of {amount}"))?;
            Body::CashWithdrawn(CashWithdrawn {
                account_id: command.account_id.clone(),
                // Cannot go below zero: ensure_cash refused a larger withdrawal.
                cash_balance: format_decimal(account.cash.saturating_sub(command.amount)),
                amount,
                idempotency_key: command.idempotency_key.clone(),
            })
        }
    };
    Ok(Decision { events: vec![body] })
}

/// The cash balance a command leads to, refused beyond [`limits::MAX_CASH_BALANCE`] (a sum that
/// does not even fit is beyond it too).
fn within_cash_limit(cash_after: Option<Decimal>, what: String) -> Result<Decimal, DomainError> {
    match cash_after {
        Some(cash) if cash <= limits::MAX_CASH_BALANCE => Ok(cash),
        _ => Err(DomainError::rejected(
            RejectReason::BalanceLimitExceeded,
            format!(
                "{what} would take the cash balance beyond the maximum of {}",
                format_decimal(limits::MAX_CASH_BALANCE)
            ),
        )),
    }
}

/// Ids the caller generates for a new order or fill (kept out of the pure decision so it is
/// testable, and so a retry after a lost race keeps them).
#[derive(Debug, Clone)]
pub struct TradeIds {
    pub order_id: String,
    pub trade_id: String,
}

/// When a DAY order placed at `now_ms` expires (milliseconds since the epoch), given by the
/// caller from its session calendar.
pub type DayExpiry = i64;

/// Places `order`: a MARKET order or a marketable LIMIT order fills whole at the instrument's
/// current price; any other LIMIT order rests (DAY, GTC: `OrderAccepted`, reserving what it may
/// spend) or is canceled at once (IOC, FOK: nothing could fill now). Refused orders record
/// nothing.
pub fn decide_order(
    account: &AccountState,
    instrument: &Instrument,
    order: &OrderCommand,
    limits: OrderLimits,
    ids: TradeIds,
    day_expiry: DayExpiry,
) -> Result<Decision, DomainError> {
    if account.open_orders.contains_key(&order.client_order_id) {
        // A retry of an order that rests (answered from its record by the caller), or another
        // order under a resting one's id.
        return Err(DomainError::Conflict {
            reason: "IDEMPOTENCY_KEY_REUSED",
            detail: format!(
                "client order id {:?} names an order that is resting",
                order.client_order_id
            ),
        });
    }
    if order.quantity % instrument.lot_size != 0 {
        return Err(DomainError::invalid(
            "quantity",
            format!(
                "must be a whole number of lots of {} for {}",
                instrument.lot_size, instrument.symbol
            ),
        ));
    }
    if let OrderKind::Limit(limit) = order.kind
        && !(limit % instrument.tick_size).is_zero()
    {
        return Err(DomainError::invalid(
            "limit_price",
            format!(
                "{} is not on the tick size {} of {}",
                format_decimal(limit),
                format_decimal(instrument.tick_size),
                instrument.symbol
            ),
        ));
    }
    if !instrument.tradable {
        return Err(DomainError::rejected(
            RejectReason::InstrumentHalted,
            format!("{} is not tradable", instrument.symbol),
        ));
    }
    if instrument.currency != account.base_currency {
        return Err(DomainError::rejected(
            RejectReason::CurrencyMismatch,
            format!(
                "{} trades in {} but the account is in {}",
                instrument.symbol, instrument.currency, account.base_currency
            ),
        ));
    }
    let Some(price) = instrument.last_price else {
        return Err(DomainError::rejected(
            RejectReason::NoPrice,
            format!("{} has no price yet", instrument.symbol),
        ));
    };
    let limit = match order.kind {
        OrderKind::Market => None,
        OrderKind::Limit(limit) => Some(limit),
    };
    let marketable = limit.is_none_or(|limit| crosses(order.side, limit, price));
    let spec = FillSpec {
        order_id: ids.order_id,
        trade_id: ids.trade_id,
        account_id: order.account_id.clone(),
        client_order_id: order.client_order_id.clone(),
        symbol: order.symbol.clone(),
        side: order.side,
        limit,
        time_in_force: order.time_in_force,
        order_quantity: order.quantity,
        filled_before: 0,
        price_event: String::new(),
    };
    if marketable {
        let trade = fill(account, &spec, order.quantity, price, limits)?;
        return Ok(Decision {
            events: vec![Body::TradeExecuted(trade)],
        });
    }
    // Not marketable, so a LIMIT order: what it would hold back is checked whatever its time in
    // force, so an IOC or FOK order the account could never pay for is refused, not canceled.
    let limit = limit.unwrap_or(price);
    let at_limit = limit
        .checked_mul(Decimal::from(order.quantity))
        .unwrap_or(Decimal::MAX);
    check_notional(at_limit, limits)?;
    match order.side {
        Side::Buy => {
            ensure_cash(
                account,
                at_limit,
                format!("reserving {} at the limit", format_decimal(at_limit)),
            )?;
            ensure_position_room(account, &order.symbol, order.quantity)?;
        }
        Side::Sell => ensure_sellable(account, &order.symbol, order.quantity)?,
    }
    let body = match order.time_in_force {
        TimeInForce::Ioc | TimeInForce::Fok => Body::OrderCanceled(OrderCanceled {
            account_id: order.account_id.clone(),
            order_id: spec.order_id,
            client_order_id: order.client_order_id.clone(),
            symbol: order.symbol.clone(),
            side: order.side.as_str().to_owned(),
            status: OrderStatus::Canceled.as_str().to_owned(),
            reason: order.time_in_force.as_str().to_owned(),
            canceled_quantity: order.quantity,
            filled_quantity: 0,
            order_quantity: order.quantity,
            limit_price: format_decimal(limit),
            time_in_force: order.time_in_force.as_str().to_owned(),
        }),
        TimeInForce::Day | TimeInForce::Gtc => Body::OrderAccepted(OrderAccepted {
            account_id: order.account_id.clone(),
            order_id: spec.order_id,
            client_order_id: order.client_order_id.clone(),
            symbol: order.symbol.clone(),
            side: order.side.as_str().to_owned(),
            quantity: order.quantity,
            limit_price: format_decimal(limit),
            time_in_force: order.time_in_force.as_str().to_owned(),
            expires_at_ms: if order.time_in_force == TimeInForce::Day {
                day_expiry
            } else {
                0
            },
        }),
    };
    Ok(Decision { events: vec![body] })
}

/// Whether `price` is at or better than `limit` for `side`.
pub fn crosses(side: Side, limit: Decimal, price: Decimal) -> bool {
    match side {
        Side::Buy => price <= limit,
        Side::Sell => price >= limit,
    }
}

/// Fills up to `quantity` of the resting order `client_order_id` at `price` (a price event that
/// crossed its limit). Nothing when the order is no longer open or the price does not cross it
/// (an earlier fill or a cancel came first); a fill the account can no longer take (the cash or
/// position maximum) cancels the order with that reason, so the order ends in exactly one state.
pub fn decide_fill(
    account: &AccountState,
    client_order_id: &str,
    quantity: Option<i64>,
    price: Decimal,
    price_event: &str,
    trade_id: String,
    limits: OrderLimits,
) -> Result<Decision, DomainError> {
    let Some(order) = account.open_orders.get(client_order_id) else {
        return Ok(Decision { events: Vec::new() });
    };
    if !crosses(order.side, order.limit, price) {
        return Ok(Decision { events: Vec::new() });
    }
    let quantity = quantity.map_or(order.leaves(), |cap| cap.min(order.leaves()));
    if quantity <= 0 {
        return Ok(Decision { events: Vec::new() });
    }
    let spec = FillSpec {
        order_id: order.order_id.clone(),
        trade_id,
        account_id: account.account_id.clone(),
        client_order_id: order.client_order_id.clone(),
        symbol: order.symbol.clone(),
        side: order.side,
        limit: Some(order.limit),
        time_in_force: order.time_in_force,
        order_quantity: order.quantity,
        filled_before: order.filled,
        price_event: price_event.to_owned(),
    };
    // What the order reserved is its own to spend: the checks see the account without it.
    let mut without = account.clone();
    without.open_orders.remove(client_order_id);
    let events = match fill(&without, &spec, quantity, price, limits) {
        Ok(trade) => vec![Body::TradeExecuted(trade)],
        Err(DomainError::Rejected { reason, .. }) => {
            vec![closed(
                account,
                order,
                OrderStatus::Canceled,
                reason.as_str(),
            )]
        }
        Err(other) => return Err(other),
    };
    Ok(Decision { events })
}

/// Cancels what is left of an open order at its trader's request.
pub fn decide_cancel(
    account: &AccountState,
    client_order_id: &str,
) -> Result<Decision, DomainError> {
    let Some(order) = account.open_orders.get(client_order_id) else {
        return Err(DomainError::rejected(
            RejectReason::OrderNotOpen,
            format!("order {client_order_id:?} is filled, canceled or expired"),
        ));
    };
    Ok(Decision {
        events: vec![closed(account, order, OrderStatus::Canceled, "USER")],
    })
}

/// Expires a DAY order whose session has closed by `now_ms`; nothing otherwise.
pub fn decide_expire(account: &AccountState, client_order_id: &str, now_ms: i64) -> Decision {
    let events = match account.open_orders.get(client_order_id) {
        Some(order) if order.expires_at_ms > 0 && order.expires_at_ms <= now_ms => {
            vec![closed(
                account,
                order,
                OrderStatus::Expired,
                "SESSION_CLOSE",
            )]
        }
        _ => Vec::new(),
    };
    Decision { events }
}

fn closed(account: &AccountState, order: &OpenOrder, status: OrderStatus, reason: &str) -> Body {
    Body::OrderCanceled(OrderCanceled {
        account_id: account.account_id.clone(),
        order_id: order.order_id.clone(),
        client_order_id: order.client_order_id.clone(),
        symbol: order.symbol.clone(),
        side: order.side.as_str().to_owned(),
        status: status.as_str().to_owned(),
        reason: reason.to_owned(),
        canceled_quantity: order.leaves(),
        filled_quantity: order.filled,
        order_quantity: order.quantity,
        limit_price: format_decimal(order.limit),
        time_in_force: order.time_in_force.as_str().to_owned(),
    })
}

/// One fill of an order: who, what, and how much of it was filled before.
struct FillSpec {
    order_id: String,
    trade_id: String,
    account_id: String,
    client_order_id: String,
    symbol: String,
    side: Side,
    limit: Option<Decimal>,
    time_in_force: TimeInForce,
    order_quantity: i64,
    filled_before: i64,
    /// Empty for a fill at placement.
    price_event: String,
}

fn check_notional(notional: Decimal, limits: OrderLimits) -> Result<(), DomainError> {
    if notional > limits.max_order_notional {
        return Err(DomainError::rejected(
            RejectReason::MaxNotionalExceeded,
            format!(
                "notional {} exceeds the maximum order notional {}",
                format_decimal(notional),
                format_decimal(limits.max_order_notional)
            ),
        ));
    }
    Ok(())
}

/// Refuses a buy of `quantity` that, with every resting buy of the symbol, could take the
/// position beyond its maximum.
fn ensure_position_room(
    account: &AccountState,
    symbol: &str,
    quantity: i64,
) -> Result<(), DomainError> {
    let held = account.positions.get(symbol).map_or(0, |p| p.quantity);
    let could_hold = held
        .saturating_add(account.pending_buy_quantity(symbol))
        .saturating_add(quantity);
    if could_hold > limits::MAX_POSITION_QUANTITY {
        return Err(DomainError::rejected(
            RejectReason::PositionLimitExceeded,
            format!(
                "buying {quantity} {symbol} would take the position beyond the maximum of {} shares",
                limits::MAX_POSITION_QUANTITY
            ),
        ));
    }
    Ok(())
}

/// Refuses selling `quantity` of `symbol` beyond what is held and not held back by resting
/// sells.
fn ensure_sellable(account: &AccountState, symbol: &str, quantity: i64) -> Result<(), DomainError> {
    let held = account.positions.get(symbol).map_or(0, |p| p.quantity);
    let reserved = account.reserved_quantity(symbol);
    let free = held.saturating_sub(reserved);
    if quantity > free {
        let detail = if reserved > 0 {
            format!(
                "selling {quantity} {symbol} but {held} held, {reserved} of them by resting sells"
            )
        } else {
            format!("selling {quantity} {symbol} but {held} held")
        };
        return Err(DomainError::rejected(
            RejectReason::InsufficientPosition,
            detail,
        ));
    }
    Ok(())
}

/// The trade filling `quantity` of `spec`'s order at `price`, checked against `account` (from
/// which the order's own reservation has been taken out).
fn fill(
    account: &AccountState,
    spec: &FillSpec,
    quantity: i64,
    price: Decimal,
    limits: OrderLimits,
) -> Result<TradeExecuted, DomainError> {
    // Both factors are bounded at the edge (at most 10^9 each), so this fits; checked anyway.
    let notional = price
        .checked_mul(Decimal::from(quantity))
        .unwrap_or(Decimal::MAX);
    if spec.price_event.is_empty() {
        check_notional(notional, limits)?;
    }
    let mut position = account
        .positions
        .get(&spec.symbol)
        .cloned()
        .unwrap_or_default();
    let cash_after = match spec.side {
        Side::Buy => {
            ensure_cash(
                account,
                notional,
                format!("notional {}", format_decimal(notional)),
            )?;
            ensure_position_room(account, &spec.symbol, quantity)?;
            position.buy(quantity, price).map_err(|_| {
                DomainError::rejected(
                    RejectReason::PositionLimitExceeded,
                    "the position would not fit",
                )
            })?;
            // Cannot go below zero: ensure_cash refused a larger notional.
            account.cash.saturating_sub(notional)
        }
        Side::Sell => {
            ensure_sellable(account, &spec.symbol, quantity)?;
            let proceeds = format!("proceeds {}", format_decimal(notional));
            let cash_after = within_cash_limit(account.cash.checked_add(notional), proceeds)?;
            position.sell(quantity, price).map_err(|_| {
                DomainError::rejected(
                    RejectReason::BalanceLimitExceeded,
                    "realized profit beyond what an account can hold",
                )
            })?;
            cash_after
        }
    };
    let filled = spec.filled_before.saturating_add(quantity);
    let leaves = spec.order_quantity.saturating_sub(filled);
    let status = if leaves > 0 {
        OrderStatus::PartiallyFilled
    } else {
        OrderStatus::Filled
    };
    let (order_type, limit_price) = match spec.limit {
        None => ("MARKET", String::new()),
        Some(limit) => ("LIMIT", format_decimal(limit)),
    };
    Ok(TradeExecuted {
        account_id: spec.account_id.clone(),
        trade_id: spec.trade_id.clone(),
        order_id: spec.order_id.clone(),
        client_order_id: spec.client_order_id.clone(),
        symbol: spec.symbol.clone(),
        side: spec.side.as_str().to_owned(),
        quantity,
        price: format_decimal(price),
        notional: format_decimal(notional),
        cash_balance: format_decimal(cash_after),
        position_quantity: position.quantity,
        position_average_cost: format_decimal(position.average_cost),
        order_type: order_type.to_owned(),
        limit_price,
        time_in_force: spec.time_in_force.as_str().to_owned(),
        order_quantity: spec.order_quantity,
        filled_quantity: filled,
        leaves_quantity: leaves,
        order_status: status.as_str().to_owned(),
        price_event: spec.price_event.clone(),
    })
}

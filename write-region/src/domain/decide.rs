//! Commands decided against current state. Each decision is the list of event bodies that
//! records the command; the store stamps envelopes and versions and derives the new state by
//! folding those same events, so state and stream can never disagree.

use ledger::{AccountState, Instrument, Side, format_decimal, limits};
use rust_decimal::Decimal;
use trading_proto::events::v1::{
    AccountOpened, CashDeposited, CashWithdrawn, TradeExecuted, raw_event::Body,
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

/// Refuses spending `amount`, described by `what`, beyond the account's cash.
fn ensure_cash(account: &AccountState, amount: Decimal, what: String) -> Result<(), DomainError> {
    if amount > account.cash {
        return Err(DomainError::rejected(
            RejectReason::InsufficientFunds,
            format!(
                "{what} exceeds the cash balance of {}",
                format_decimal(account.cash)
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

/// Ids the caller generates for a new trade (kept out of the pure decision so it is testable).
#[derive(Debug, Clone)]
pub struct TradeIds {
    pub order_id: String,
    pub trade_id: String,
}

/// Fills `order` at the instrument's current price, or refuses it.
pub fn decide_order(
    account: &AccountState,
    instrument: &Instrument,
    order: &OrderCommand,
    limits: OrderLimits,
    ids: TradeIds,
) -> Result<Decision, DomainError> {
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
    if let OrderKind::Limit(limit) = order.kind {
        let marketable = match order.side {
            Side::Buy => price <= limit,
            Side::Sell => price >= limit,
        };
        if !marketable {
            return Err(DomainError::rejected(
                RejectReason::NotMarketable,
                format!(
                    "{} limit {} is not marketable at the current price {}",
                    order.side.as_str(),
                    format_decimal(limit),
                    format_decimal(price)
                ),
            ));
        }
    }
    // Both factors are bounded at the edge (at most 10^9 each), so this fits; checked anyway.
    let notional = price
        .checked_mul(Decimal::from(order.quantity))
        .unwrap_or(Decimal::MAX);
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
    let mut position = account
        .positions
        .get(&order.symbol)
        .cloned()
        .unwrap_or_default();
    let position_limit = || {
        DomainError::rejected(
            RejectReason::PositionLimitExceeded,
            format!(
                "buying {} {} would take the position beyond the maximum of {} shares",
                order.quantity,
                order.symbol,
                limits::MAX_POSITION_QUANTITY
            ),
        )
    };
    let cash_after = match order.side {
        Side::Buy => {
            ensure_cash(
                account,
                notional,
                format!("notional {}", format_decimal(notional)),
            )?;
            position
                .buy(order.quantity, price)
                .map_err(|_| position_limit())?;
            if position.quantity > limits::MAX_POSITION_QUANTITY {
                return Err(position_limit());
            }
            // Cannot go below zero: ensure_cash refused a larger notional.
            account.cash.saturating_sub(notional)
        }
        Side::Sell => {
            if order.quantity > position.quantity {
                return Err(DomainError::rejected(
                    RejectReason::InsufficientPosition,
                    format!(
                        "selling {} {} but {} held",
                        order.quantity, order.symbol, position.quantity
                    ),
                ));
            }
            let proceeds = format!("proceeds {}", format_decimal(notional));
            let cash_after = within_cash_limit(account.cash.checked_add(notional), proceeds)?;
            position.sell(order.quantity, price).map_err(|_| {
                DomainError::rejected(
                    RejectReason::BalanceLimitExceeded,
                    "realized profit beyond what an account can hold",
                )
            })?;
            cash_after
        }
    };
    let limit_price = match order.kind {
        OrderKind::Market => String::new(),
        OrderKind::Limit(limit) => format_decimal(limit),
    };
    Ok(Decision {
        events: vec![Body::TradeExecuted(TradeExecuted {
            account_id: order.account_id.clone(),
            trade_id: ids.trade_id,
            order_id: ids.order_id,
            client_order_id: order.client_order_id.clone(),
            symbol: order.symbol.clone(),
            side: order.side.as_str().to_owned(),
            quantity: order.quantity,
            price: format_decimal(price),
            notional: format_decimal(notional),
            cash_balance: format_decimal(cash_after),
            position_quantity: position.quantity,
            position_average_cost: format_decimal(position.average_cost),
            order_type: if limit_price.is_empty() {
                "MARKET"
            } else {
                "LIMIT"
            }
            .to_owned(),
            limit_price,
        })],
    })
}

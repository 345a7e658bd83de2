//! Orders as the API shows them: an order's state after an event as a `PlaceOrderResponse`, a
//! resting order as its book entry, and the account's orders page by page.

use ledger::{
    AccountState, OpenOrder, OrderProgress, OrderStatus, Side, TimeInForce, format_decimal,
    timestamp_from_ms, timestamp_ms,
};
use prost::Message;
use rust_decimal::Decimal;
use trading_proto::{events::v1::RawEvent, trading::v1 as api};

use super::{CommandError, Commands};
use crate::{
    domain::{DomainError, OrderRef, OrdersPage},
    store::{AggregateKey, BookEntry, RecordKind},
};

/// Units of 1e-8 per unit of price: the book's limits are integers in these, so the index
/// orders them as numbers.
const PRICE_UNITS: i64 = 100_000_000;

/// A price in 1e-8 units; `None` beyond what the index holds (prices are bounded far below).
pub fn price_units(price: Decimal) -> Option<i64> {
    price
        .checked_mul(Decimal::from(PRICE_UNITS))
        .filter(|units| units.fract().is_zero())
        .and_then(|units| i64::try_from(units).ok())
}

/// The index entry of a resting order of `account`.
pub fn book_entry(account: &AccountState, order: &OpenOrder) -> Option<BookEntry> {
    Some(BookEntry {
        symbol: order.symbol.clone(),
        side: order.side,
        limit_units: price_units(order.limit)?,
        accepted_ms: timestamp_ms(order.accepted_at.as_ref()),
        account_id: account.account_id.clone(),
        client_order_id: order.client_order_id.clone(),
        quantity: order.leaves(),
        expires_at_ms: order.expires_at_ms,
    })
}

pub fn api_side(side: &str) -> api::Side {
    match Side::parse(side) {
        Some(Side::Buy) => api::Side::Buy,
        Some(Side::Sell) => api::Side::Sell,
        None => api::Side::Unspecified,
    }
}

fn api_status(status: OrderStatus) -> api::OrderStatus {
    match status {
        OrderStatus::New => api::OrderStatus::New,
        OrderStatus::PartiallyFilled => api::OrderStatus::PartiallyFilled,
        OrderStatus::Filled => api::OrderStatus::Filled,
        OrderStatus::Canceled => api::OrderStatus::Canceled,
        OrderStatus::Expired => api::OrderStatus::Expired,
    }
}

fn api_time_in_force(text: &str) -> api::TimeInForce {
    match TimeInForce::parse(text) {
        Some(TimeInForce::Day) => api::TimeInForce::Day,
        Some(TimeInForce::Gtc) => api::TimeInForce::Gtc,
        Some(TimeInForce::Ioc) => api::TimeInForce::Ioc,
        Some(TimeInForce::Fok) => api::TimeInForce::Fok,
        None => api::TimeInForce::Unspecified,
    }
}

/// The order's state after `event`, with the account's cash and version after it.
pub fn order_response(
    progress: &OrderProgress,
    account: &AccountState,
    event: &RawEvent,
) -> api::PlaceOrderResponse {
    let (trade_id, fill_price, executed_at) = match &event.body {
        Some(trading_proto::events::v1::raw_event::Body::TradeExecuted(trade)) => (
            trade.trade_id.clone(),
            trade.price.clone(),
            event.envelope.as_ref().and_then(|e| e.occurred_at),
        ),
        _ => Default::default(),
    };
    let order_type = if progress.order_type == "MARKET" {
        api::OrderType::Market
    } else {
        api::OrderType::Limit
    };
    api::PlaceOrderResponse {
        order_id: progress.order_id.clone(),
        trade_id,
        status: api_status(progress.status).into(),
        fill_price,
        quantity: progress.quantity,
        notional: format_decimal(progress.filled_notional),
        cash_balance: format_decimal(account.cash),
        account_version: account.version,
        account_id: account.account_id.clone(),
        client_order_id: progress.client_order_id.clone(),
        symbol: progress.symbol.clone(),
        side: api_side(&progress.side).into(),
        executed_at,
        order_type: order_type.into(),
        limit_price: progress.limit_price.clone(),
        time_in_force: api_time_in_force(&progress.time_in_force).into(),
        filled_quantity: progress.filled,
        leaves_quantity: progress.leaves(),
        average_fill_price: progress
            .average_fill_price()
            .map(format_decimal)
            .unwrap_or_default(),
        reserved_cash: format_decimal(progress.reserved_cash),
        reserved_quantity: progress.reserved_quantity,
        expires_at: timestamp_from_ms(progress.expires_at_ms),
        reason: progress.reason.clone(),
        accepted_at: progress.accepted_at,
    }
}

/// An order's current state as stored: the state row, written by every event of the order.
fn decode_state(key: &AggregateKey, bytes: &[u8]) -> Result<api::PlaceOrderResponse, CommandError> {
    api::PlaceOrderResponse::decode(bytes).map_err(CommandError::corrupt(key))
}

impl Commands {
    /// The order's current state; an order placed before states were recorded answers as its
    /// placement did (it filled whole then, and nothing has changed it since).
    pub async fn order(&self, order: &OrderRef) -> Result<api::PlaceOrderResponse, CommandError> {
        let key = AggregateKey::account(order.account_id.as_str());
        if let Some(bytes) = self
            .store
            .load_record(&key, RecordKind::OrderState, &order.client_order_id)
            .await?
        {
            return decode_state(&key, &bytes);
        }
        self.recorded(&key, RecordKind::Order, &order.client_order_id)
            .await?
            .ok_or_else(|| DomainError::not_found("order", &order.client_order_id).into())
    }

    /// A page of the account's orders in client order id order, and the token of the next.
    pub async fn orders(&self, page: &OrdersPage) -> Result<api::ListOrdersResponse, CommandError> {
        // The account must exist, so an unknown one is NOT_FOUND rather than an empty page.
        self.account(&page.account_id).await?;
        let key = AggregateKey::account(page.account_id.as_str());
        let wanted = |order: &api::PlaceOrderResponse| {
            page.statuses.is_empty()
                || page
                    .statuses
                    .iter()
                    .any(|status| i32::from(api_status(*status)) == order.status)
        };
        let page_size = usize::try_from(page.page_size).unwrap_or(usize::MAX);
        let mut after = page.after.clone().unwrap_or_default();
        let mut orders = Vec::new();
        // A filter may skip most rows: read on until the page is full or the rows run out.
        loop {
            let rows = self
                .store
                .load_rows(&key, RecordKind::OrderState, &after, page.page_size)
                .await?;
            let exhausted = rows.len() < page_size;
            for (id, bytes) in rows {
                let order = decode_state(&key, &bytes)?;
                after = id;
                if wanted(&order) {
                    orders.push(order);
                    if orders.len() == page_size {
                        return Ok(api::ListOrdersResponse {
                            orders,
                            next_page_token: after,
                        });
                    }
                }
            }
            if exhausted {
                return Ok(api::ListOrdersResponse {
                    orders,
                    next_page_token: String::new(),
                });
            }
        }
    }
}

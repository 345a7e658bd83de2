//! The write region's API (`trading.v1`) as tests drive it: the requests and the setup steps
//! (a funded account, a priced instrument) that most scenarios start with, over a channel to
//! any write region (in-process, a child process or the stack's service).

use crate::Channel;
use trading_proto::trading::v1::{
    self as api, account_service_client::AccountServiceClient,
    market_data_service_client::MarketDataServiceClient, order_service_client::OrderServiceClient,
};

/// Anything with a channel to a write region: its three services' clients, and the setup steps
/// below, without the caller wiring clients by hand.
pub trait WriteApi {
    fn channel(&self) -> &Channel;

    fn accounts(&self) -> AccountServiceClient<Channel> {
        AccountServiceClient::new(self.channel().clone())
    }

    fn market(&self) -> MarketDataServiceClient<Channel> {
        MarketDataServiceClient::new(self.channel().clone())
    }

    fn orders(&self) -> OrderServiceClient<Channel> {
        OrderServiceClient::new(self.channel().clone())
    }
}

impl WriteApi for Channel {
    fn channel(&self) -> &Channel {
        self
    }
}

/// A tradable US equity called `<symbol> Inc.`.
pub fn instrument(symbol: &str, tick_size: &str, lot_size: i64) -> api::UpsertInstrumentRequest {
    api::UpsertInstrumentRequest {
        symbol: symbol.into(),
        name: format!("{symbol} Inc."),
        asset_class: "equity".into(),
        sector: "Technology".into(),
        currency: "USD".into(),
        tick_size: tick_size.into(),
        lot_size,
        tradable: true,
    }
}

/// A market order.
pub fn order(
    account_id: &str,
    client_order_id: &str,
    symbol: &str,
    side: api::Side,
    quantity: i64,
) -> api::PlaceOrderRequest {
    api::PlaceOrderRequest {
        account_id: account_id.into(),
        client_order_id: client_order_id.into(),
        symbol: symbol.into(),
        side: side.into(),
        quantity,
        order_type: api::OrderType::Market.into(),
        limit_price: String::new(),
        time_in_force: api::TimeInForce::Unspecified.into(),
    }
}

/// A LIMIT order with a time in force.
pub fn limit_order(
    account_id: &str,
    client_order_id: &str,
    symbol: &str,
    side: api::Side,
    quantity: i64,
    limit_price: &str,
    time_in_force: api::TimeInForce,
) -> api::PlaceOrderRequest {
    api::PlaceOrderRequest {
        order_type: api::OrderType::Limit.into(),
        limit_price: limit_price.into(),
        time_in_force: time_in_force.into(),
        ..order(account_id, client_order_id, symbol, side, quantity)
    }
}

/// Moves an instrument's price with `size` shares available at it (per side), and answers how
/// many resting orders it filled.
pub async fn publish_sized(
    region: &impl WriteApi,
    symbol: &str,
    price: &str,
    size: Option<i64>,
) -> anyhow::Result<api::PublishPriceResponse> {
    Ok(region
        .market()
        .publish_price(api::PublishPriceRequest {
            symbol: symbol.into(),
            price: price.into(),
            size,
        })
        .await?
        .into_inner())
}

/// Opens a USD account and deposits `cash` into it.
pub async fn funded_account(
    region: &impl WriteApi,
    account_id: &str,
    cash: &str,
) -> anyhow::Result<()> {
    let mut accounts = region.accounts();
    accounts
        .open_account(api::OpenAccountRequest {
            account_id: account_id.into(),
            owner_name: "Test Owner".into(),
            base_currency: "USD".into(),
        })
        .await?;
    accounts
        .deposit(api::DepositRequest {
            account_id: account_id.into(),
            amount: cash.into(),
            idempotency_key: format!("{account_id}-initial"),
        })
        .await?;
    Ok(())
}

/// Lists an instrument (tick 0.01, lot 1) and gives it a price.
pub async fn priced_instrument(
    region: &impl WriteApi,
    symbol: &str,
    price: &str,
) -> anyhow::Result<()> {
    let listing = instrument(symbol, "0.01", 1);
    region.market().upsert_instrument(listing).await?;
    publish_price(region, symbol, price).await
}

/// Moves an instrument's price.
pub async fn publish_price(
    region: &impl WriteApi,
    symbol: &str,
    price: &str,
) -> anyhow::Result<()> {
    publish_sized(region, symbol, price, None).await?;
    Ok(())
}

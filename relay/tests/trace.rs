//! One trace follows an order: the trace a client starts around `PlaceOrder` continues in the
//! write region's raw event and in the relay's span, whose context the enriched events carry.

mod support;

use std::time::Duration;

use support::{Relay, WriteRegion, configs};
use tonic::{Request, metadata::MetadataValue};
use trading_proto::{
    events::v1::enriched_event::Body as Enriched,
    trading::v1::{
        self as api, account_service_client::AccountServiceClient,
        market_data_service_client::MarketDataServiceClient,
        order_service_client::OrderServiceClient,
    },
};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// The trace id of a W3C `traceparent` (version-traceid-spanid-flags).
fn trace_id(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or_default()
}

#[tokio::test]
async fn the_trace_started_by_place_order_continues_in_the_relay() -> anyhow::Result<()> {
    // Spans need a real tracer for trace ids to exist; this test binary installs one.
    let _telemetry = platform::telemetry::init("trace-test")?;
    let (write_config, relay_config) = configs();
    let region = WriteRegion::start(write_config.clone()).await?;
    let relay = Relay::start(relay_config.clone()).await?;
    let mut accounts = AccountServiceClient::new(region.channel.clone());
    let mut market = MarketDataServiceClient::new(region.channel.clone());
    accounts
        .open_account(api::OpenAccountRequest {
            account_id: "tracy".into(),
            owner_name: "Tracy".into(),
            base_currency: "USD".into(),
        })
        .await?;
    accounts
        .deposit(api::DepositRequest {
            account_id: "tracy".into(),
            amount: "1000".into(),
            idempotency_key: "d".into(),
        })
        .await?;
    market
        .upsert_instrument(api::UpsertInstrumentRequest {
            symbol: "TRC".into(),
            name: "Trace Co".into(),
            asset_class: "equity".into(),
            sector: "Technology".into(),
            currency: "USD".into(),
            tick_size: "0.01".into(),
            lot_size: 1,
            tradable: true,
        })
        .await?;
    market
        .publish_price(api::PublishPriceRequest {
            symbol: "TRC".into(),
            price: "10".into(),
        })
        .await?;

    let mut request = Request::new(api::PlaceOrderRequest {
        account_id: "tracy".into(),
        client_order_id: "traced".into(),
        symbol: "TRC".into(),
        side: api::Side::Buy.into(),
        quantity: 3,
        order_type: api::OrderType::Market.into(),
        limit_price: String::new(),
    });
    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    request.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(traceparent.as_str())?,
    );
    request.metadata_mut().insert(
        "x-correlation-id",
        MetadataValue::from_static("corr-traced"),
    );
    OrderServiceClient::new(region.channel.clone())
        .place_order(request)
        .await?;

    let events = support::enriched(&relay_config, 7, Duration::from_secs(30)).await?;
    let profit = events
        .iter()
        .find(|event| matches!(event.body, Some(Enriched::TradeProfitCalculated(_))))
        .and_then(|event| event.envelope.clone())
        .ok_or_else(|| anyhow::anyhow!("no TradeProfitCalculated among {events:?}"))?;
    assert_eq!(profit.correlation_id, "corr-traced");
    let relayed = profit
        .metadata
        .get("traceparent")
        .ok_or_else(|| anyhow::anyhow!("no trace context on {profit:?}"))?;
    assert_eq!(trace_id(relayed), TRACE_ID, "same trace in the relay");
    assert_ne!(
        relayed, &traceparent,
        "the relay's own span, not the client's"
    );
    relay.stop().await;
    region.stop().await
}

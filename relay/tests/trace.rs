//! One trace follows an order: the trace a client starts around `PlaceOrder` continues in the
//! write region's raw event and in the relay's span, whose context the enriched events carry.

use std::time::Duration;

use testkit::{
    relay::{Relay, configs, enriched},
    trading::{WriteApi, funded_account, order, priced_instrument},
    write_region::WriteRegion,
};
use tonic::{Request, metadata::MetadataValue};
use trading_proto::{events::v1::enriched_event::Body as Enriched, trading::v1 as api};

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
    funded_account(&region, "tracy", "1000").await?;
    priced_instrument(&region, "TRC", "10").await?;

    let mut request = Request::new(order("tracy", "traced", "TRC", api::Side::Buy, 3));
    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    request.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(traceparent.as_str())?,
    );
    request.metadata_mut().insert(
        "x-correlation-id",
        MetadataValue::from_static("corr-traced"),
    );
    region.orders().place_order(request).await?;

    let events = enriched(&relay_config, 7, Duration::from_secs(30)).await?;
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

//! The relay against real NATS (and the real write region): exact enriched figures for a known
//! session, poison messages dead-lettered without stopping the flow, and older schema versions
//! upcast.

use std::time::Duration;

use platform::names::Aggregate;
use testkit::{
    read_messages,
    relay::{Relay, configs, enriched, publish_raw, raw, raw_prefix, raw_streams},
    trading::{self, WriteApi, funded_account, publish_price},
    write_region::WriteRegion,
};
use trading_proto::{
    events::v1::{
        AccountOpened, CashDeposited, EnrichedEvent, InstrumentUpserted, PriceUpdated,
        TradeExecuted, enriched_event::Body as Enriched, raw_event::Body as Raw,
    },
    trading::v1 as api,
};

/// (aggregate, version, part, parts, event type) of each enriched event.
fn shape(events: &[EnrichedEvent]) -> Vec<(String, u64, u32, u32, String)> {
    events
        .iter()
        .map(|event| {
            let envelope = event.envelope.clone().unwrap_or_default();
            (
                envelope.aggregate_id,
                envelope.version,
                event.part,
                event.parts,
                envelope.event_type,
            )
        })
        .collect()
}

fn of_account<'a>(events: &'a [EnrichedEvent], account: &str) -> Vec<&'a EnrichedEvent> {
    events
        .iter()
        .filter(|e| {
            e.envelope.as_ref().is_some_and(|e| {
                e.aggregate_type == Aggregate::Account.as_str() && e.aggregate_id == account
            })
        })
        .collect()
}

fn order(client_order_id: &str, side: api::Side, quantity: i64) -> api::PlaceOrderRequest {
    trading::order("erin", client_order_id, "AAPL", side, quantity)
}

#[tokio::test]
async fn a_known_session_enriches_to_hand_computed_events() -> anyhow::Result<()> {
    let (write_config, relay_config) = configs();
    let region = WriteRegion::start(write_config).await?;
    let relay = Relay::start(relay_config.clone()).await?;
    let mut orders = region.orders();
    funded_account(&region, "erin", "10000").await?;
    region
        .market()
        .upsert_instrument(api::UpsertInstrumentRequest {
            name: "Apple Inc.".into(),
            ..trading::instrument("AAPL", "0.01", 1)
        })
        .await?;
    publish_price(&region, "AAPL", "100").await?;
    orders.place_order(order("b1", api::Side::Buy, 10)).await?;
    publish_price(&region, "AAPL", "120").await?;
    orders.place_order(order("b2", api::Side::Buy, 10)).await?;
    orders.place_order(order("s1", api::Side::Sell, 5)).await?;
    // Valuations use the relay's latest prices, so let it value the sell at 120 first.
    enriched(&relay_config, 12, Duration::from_secs(30)).await?;
    // (110 - 80) / 110 = 27 % below cost: beyond the 20 % stop-loss, once.
    publish_price(&region, "AAPL", "80").await?;
    publish_price(&region, "AAPL", "70").await?;

    // account: 1 + 4 x 2 parts; instrument: upsert + 4 prices + 1 alert.
    let events = enriched(&relay_config, 15, Duration::from_secs(30)).await?;
    let erin = of_account(&events, "erin");
    let erin_shape = shape(&erin.iter().map(|e| (*e).clone()).collect::<Vec<_>>());
    let expected: Vec<(String, u64, u32, u32, String)> = [
        (1, 1, 1, "AccountRegistered"),
        (2, 1, 2, "CashBalanceChanged"),
        (2, 2, 2, "PortfolioValueUpdated"),
        (3, 1, 2, "TradeProfitCalculated"),
        (3, 2, 2, "PortfolioValueUpdated"),
        (4, 1, 2, "TradeProfitCalculated"),
        (4, 2, 2, "PortfolioValueUpdated"),
        (5, 1, 2, "TradeProfitCalculated"),
        (5, 2, 2, "PortfolioValueUpdated"),
    ]
    .into_iter()
    .map(|(v, p, n, t)| ("erin".to_owned(), v, p, n, t.to_owned()))
    .collect();
    assert_eq!(erin_shape, expected);

    let Some(Enriched::TradeProfitCalculated(second_buy)) = &erin[5].body else {
        panic!("{:?}", erin[5]);
    };
    assert_eq!(
        (
            second_buy.average_cost_before.as_str(),
            second_buy.average_cost_after.as_str()
        ),
        ("100", "110")
    );
    assert_eq!(
        (
            second_buy.instrument_name.as_str(),
            second_buy.sector.as_str()
        ),
        ("Apple Inc.", "Technology")
    );
    let Some(Enriched::TradeProfitCalculated(sell)) = &erin[7].body else {
        panic!("{:?}", erin[7]);
    };
    // (120 - 110) x 5.
    assert_eq!(
        (sell.realized_pnl.as_str(), sell.notional.as_str()),
        ("50", "600")
    );
    assert_eq!(sell.position_quantity_after, 15);
    let Some(Enriched::PortfolioValueUpdated(value)) = &erin[8].body else {
        panic!("{:?}", erin[8]);
    };
    // cash 10000 - 1000 - 1200 + 600; 15 at 120 = 1800.
    assert_eq!(value.cash_balance, "8400");
    assert_eq!(
        (
            value.total_market_value.as_str(),
            value.total_value.as_str()
        ),
        ("1800", "10200")
    );
    assert_eq!(
        (value.realized_pnl.as_str(), value.unrealized_pnl.as_str()),
        ("50", "150")
    );
    assert_eq!(value.positions[0].average_cost, "110");

    let alerts: Vec<_> = events
        .iter()
        .filter_map(|event| match &event.body {
            Some(Enriched::RiskThresholdBreached(alert)) => Some((event, alert)),
            _ => None,
        })
        .collect();
    assert_eq!(
        alerts.len(),
        1,
        "the 70 price must not alert again: {alerts:?}"
    );
    let (event, alert) = alerts[0];
    assert_eq!(
        (
            alert.rule.as_str(),
            alert.account_id.as_str(),
            alert.observed.as_str()
        ),
        ("stop_loss", "erin", "0.272727")
    );
    let envelope = event.envelope.clone().unwrap_or_default();
    assert_eq!(
        (
            envelope.aggregate_type.as_str(),
            envelope.version,
            event.part,
            event.parts
        ),
        ("instrument", 4, 2, 2)
    );
    assert_eq!(events.len(), 15, "nothing extra: {:?}", shape(&events));

    // Every output names its raw cause and has a unique id.
    let ids: std::collections::HashSet<_> = events
        .iter()
        .filter_map(|e| e.envelope.as_ref().map(|e| e.event_id.clone()))
        .collect();
    assert_eq!(ids.len(), events.len());
    assert!(events.iter().all(|e| {
        e.envelope
            .as_ref()
            .is_some_and(|e| !e.causation_id.is_empty() && !e.correlation_id.is_empty())
    }));
    relay.stop().await;
    region.stop().await
}

fn opened(account: &str) -> Raw {
    Raw::AccountOpened(AccountOpened {
        account_id: account.into(),
        owner_name: "Owner".into(),
        base_currency: "USD".into(),
    })
}

fn deposited(account: &str, amount: &str) -> Raw {
    Raw::CashDeposited(CashDeposited {
        account_id: account.into(),
        amount: amount.into(),
        ..Default::default()
    })
}

fn trade(account: &str, side: &str, quantity: i64, price: &str) -> Raw {
    Raw::TradeExecuted(TradeExecuted {
        account_id: account.into(),
        trade_id: uuid::Uuid::new_v4().to_string(),
        symbol: "XYZ".into(),
        side: side.into(),
        quantity,
        price: price.into(),
        ..Default::default()
    })
}

fn instrument() -> Raw {
    Raw::InstrumentUpserted(InstrumentUpserted {
        symbol: "XYZ".into(),
        name: "XYZ Corp".into(),
        sector: "Industrials".into(),
        currency: "USD".into(),
        tick_size: "0.01".into(),
        lot_size: 1,
        tradable: true,
        ..Default::default()
    })
}

#[tokio::test]
async fn poison_is_dead_lettered_and_the_flow_continues() -> anyhow::Result<()> {
    let (_, config) = configs();
    let prefix = raw_prefix(&config);
    let jetstream = raw_streams(&config, &prefix).await?;
    let relay = Relay::start(config.clone()).await?;
    publish_raw(
        &jetstream,
        &prefix,
        &[
            raw("instrument", "XYZ", 1, instrument()),
            raw("account", "p1", 1, opened("p1")),
        ],
    )
    .await?;
    // Undecodable bytes, then a version that cannot follow, then good events again.
    jetstream
        .publish(
            format!("{prefix}.account.p1"),
            b"\xff\xfenot protobuf".as_slice().into(),
        )
        .await?
        .await?;
    publish_raw(
        &jetstream,
        &prefix,
        &[
            raw("account", "p1", 7, deposited("p1", "1")),
            raw("account", "p1", 2, deposited("p1", "500")),
            raw("account", "p1", 3, trade("p1", "BUY", 2, "10")),
        ],
    )
    .await?;

    let dead = read_messages(
        &config.nats_url,
        &config.dead_letter_stream,
        2,
        Duration::from_secs(20),
    )
    .await?;
    assert_eq!(dead.len(), 2);
    let reasons: Vec<String> = dead
        .iter()
        .map(|m| {
            m.headers
                .as_ref()
                .and_then(|h| h.get("reason"))
                .map(|r| r.as_str().to_owned())
                .unwrap_or_default()
        })
        .collect();
    assert!(reasons[0].contains("undecodable"), "{reasons:?}");
    assert!(
        reasons[1].contains("version 7 cannot follow version 1"),
        "{reasons:?}"
    );
    assert_eq!(dead[0].payload.as_ref(), b"\xff\xfenot protobuf");

    let events = enriched(&config, 6, Duration::from_secs(20)).await?;
    let p1 = of_account(&events, "p1");
    let versions: Vec<u64> = p1
        .iter()
        .filter_map(|e| e.envelope.as_ref().map(|e| e.version))
        .collect();
    assert_eq!(
        versions,
        [1, 2, 2, 3, 3],
        "the events after the poison are processed"
    );
    assert_eq!(relay.running.counters.snapshot()[3], 2, "dead-letter count");
    relay.stop().await;
    Ok(())
}

#[tokio::test]
async fn older_schema_versions_and_duplicates_are_handled() -> anyhow::Result<()> {
    let (_, config) = configs();
    let prefix = raw_prefix(&config);
    let jetstream = raw_streams(&config, &prefix).await?;
    let relay = Relay::start(config.clone()).await?;
    let mut old_trade = raw("account", "o1", 3, trade("o1", "BUY", 3, "12.5"));
    if let Some(envelope) = &mut old_trade.envelope {
        envelope.schema_version = 1; // written before TradeExecuted carried a notional
    }
    let opened = raw("account", "o1", 1, opened("o1"));
    publish_raw(
        &jetstream,
        &prefix,
        &[
            raw("instrument", "XYZ", 1, instrument()),
            raw(
                "instrument",
                "XYZ",
                2,
                Raw::PriceUpdated(PriceUpdated {
                    symbol: "XYZ".into(),
                    price: "12.5".into(),
                    previous_price: String::new(),
                }),
            ),
            opened.clone(),
            raw("account", "o1", 2, deposited("o1", "100")),
            // A redelivered copy of version 1 changes nothing.
            opened,
            old_trade,
        ],
    )
    .await?;
    let events = enriched(&config, 7, Duration::from_secs(20)).await?;
    let o1 = of_account(&events, "o1");
    assert_eq!(o1.len(), 5, "{:?}", shape(&events));
    let Some(Enriched::TradeProfitCalculated(profit)) = &o1[3].body else {
        panic!("{:?}", o1[3]);
    };
    assert_eq!(
        (profit.notional.as_str(), profit.price.as_str()),
        ("37.5", "12.5")
    );
    let Some(Enriched::PortfolioValueUpdated(value)) = &o1[4].body else {
        panic!("{:?}", o1[4]);
    };
    assert_eq!(
        (value.cash_balance.as_str(), value.total_value.as_str()),
        ("62.5", "100")
    );
    assert_eq!(
        relay.running.counters.snapshot()[2],
        1,
        "one duplicate skipped"
    );
    relay.stop().await;
    Ok(())
}

//! The relay against real NATS (and the real write region): exact enriched figures for a known
//! session and for a resting order's life, poison messages dead-lettered without stopping the
//! flow, and older schema versions upcast.

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
        AccountOpened, CashDeposited, EnrichedEvent, InstrumentUpserted, OrderAccepted,
        OrderCanceled, PriceUpdated, TradeExecuted, enriched_event::Body as Enriched,
        raw_event::Body as Raw,
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

/// What a trade naming its order's progress (schema 3) becomes, short of a risk alert.
const FILL: [&str; 3] = [
    "TradeProfitCalculated",
    "PortfolioValueUpdated",
    "OrderUpdated",
];

/// The expected [`shape`] of `account`'s sets: each version's event types, as parts 1..n.
fn sets(account: &str, sets: &[(u64, &[&str])]) -> Vec<(String, u64, u32, u32, String)> {
    sets.iter()
        .flat_map(|&(version, types)| {
            let parts = u32::try_from(types.len()).expect("a few parts");
            types.iter().zip(1..).map(move |(event_type, part)| {
                (
                    account.to_owned(),
                    version,
                    part,
                    parts,
                    (*event_type).to_owned(),
                )
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
    enriched(&relay_config, 15, Duration::from_secs(30)).await?;
    // (110 - 80) / 110 = 27 % below cost: beyond the 20 % stop-loss, once.
    publish_price(&region, "AAPL", "80").await?;
    publish_price(&region, "AAPL", "70").await?;

    // account: 1 + 2 + 3 x 3 parts; instrument: upsert + 4 prices + 1 alert.
    let events = enriched(&relay_config, 18, Duration::from_secs(30)).await?;
    let erin = of_account(&events, "erin");
    let erin_shape = shape(&erin.iter().map(|e| (*e).clone()).collect::<Vec<_>>());
    // The write region names each order's progress (schema 3), so every trade ends with its
    // order's state: a MARKET order filled whole.
    assert_eq!(
        erin_shape,
        sets(
            "erin",
            &[
                (1, &["AccountRegistered"]),
                (2, &["CashBalanceChanged", "PortfolioValueUpdated"]),
                (3, &FILL),
                (4, &FILL),
                (5, &FILL),
            ]
        )
    );

    let Some(Enriched::TradeProfitCalculated(second_buy)) = &erin[6].body else {
        panic!("{:?}", erin[6]);
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
    let Some(Enriched::TradeProfitCalculated(sell)) = &erin[9].body else {
        panic!("{:?}", erin[9]);
    };
    // (120 - 110) x 5.
    assert_eq!(
        (sell.realized_pnl.as_str(), sell.notional.as_str()),
        ("50", "600")
    );
    assert_eq!(sell.position_quantity_after, 15);
    let Some(Enriched::PortfolioValueUpdated(value)) = &erin[10].body else {
        panic!("{:?}", erin[10]);
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
    // Nothing rests, so nothing is held back.
    assert_eq!(
        (value.reserved_cash.as_str(), value.buying_power.as_str()),
        ("0", "8400")
    );
    let Some(Enriched::OrderUpdated(sold)) = &erin[11].body else {
        panic!("{:?}", erin[11]);
    };
    assert_eq!(
        (
            sold.client_order_id.as_str(),
            sold.order_type.as_str(),
            sold.status.as_str()
        ),
        ("s1", "MARKET", "FILLED")
    );
    assert_eq!(
        (sold.quantity, sold.filled_quantity, sold.leaves_quantity),
        (5, 5, 0)
    );
    assert_eq!(
        (
            sold.average_fill_price.as_str(),
            sold.last_fill_price.as_str(),
            sold.last_fill_quantity
        ),
        ("120", "120", 5)
    );

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
    assert_eq!(events.len(), 18, "nothing extra: {:?}", shape(&events));

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

/// A trade as schema 2 wrote it: no order's progress.
fn executed(account: &str, side: &str, quantity: i64, price: &str) -> TradeExecuted {
    TradeExecuted {
        account_id: account.into(),
        trade_id: uuid::Uuid::new_v4().to_string(),
        symbol: "XYZ".into(),
        side: side.into(),
        quantity,
        price: price.into(),
        ..Default::default()
    }
}

fn trade(account: &str, side: &str, quantity: i64, price: &str) -> Raw {
    Raw::TradeExecuted(executed(account, side, quantity, price))
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
                    size: None,
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

fn accepted(account: &str, order: &str, side: &str, quantity: i64, limit: &str) -> OrderAccepted {
    OrderAccepted {
        account_id: account.into(),
        order_id: format!("order-{order}"),
        client_order_id: order.into(),
        symbol: "XYZ".into(),
        side: side.into(),
        quantity,
        limit_price: limit.into(),
        time_in_force: "GTC".into(),
        expires_at_ms: 0,
    }
}

/// A schema 3 fill of resting buy `order` at a limit of 100: `[order quantity, filled after it]`.
fn resting_buy_fill(
    account: &str,
    order: &str,
    quantity: i64,
    price: &str,
    progress: [i64; 2],
) -> Raw {
    let [order_quantity, filled] = progress;
    let leaves = order_quantity - filled;
    Raw::TradeExecuted(TradeExecuted {
        order_id: format!("order-{order}"),
        client_order_id: order.into(),
        order_type: "LIMIT".into(),
        limit_price: "100".into(),
        time_in_force: "GTC".into(),
        order_quantity,
        filled_quantity: filled,
        leaves_quantity: leaves,
        order_status: if leaves > 0 {
            "PARTIALLY_FILLED"
        } else {
            "FILLED"
        }
        .into(),
        price_event: "XYZ@2".into(),
        ..executed(account, "BUY", quantity, price)
    })
}

#[tokio::test]
async fn a_resting_orders_life_enriches_on_its_account_stream() -> anyhow::Result<()> {
    let (_, config) = configs();
    let prefix = raw_prefix(&config);
    let jetstream = raw_streams(&config, &prefix).await?;
    let relay = Relay::start(config.clone()).await?;
    // A trade from before orders rested, as its writer stamped it.
    let mut schema_2_trade = raw("account", "r1", 8, trade("r1", "BUY", 1, "100"));
    if let Some(envelope) = &mut schema_2_trade.envelope {
        envelope.schema_version = 2;
    }
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
                    price: "100".into(),
                    previous_price: String::new(),
                    size: None,
                }),
            ),
            raw("account", "r1", 1, opened("r1")),
            raw("account", "r1", 2, deposited("r1", "10000")),
            raw(
                "account",
                "r1",
                3,
                Raw::OrderAccepted(accepted("r1", "b1", "BUY", 10, "100")),
            ),
            raw(
                "account",
                "r1",
                4,
                resting_buy_fill("r1", "b1", 4, "95", [10, 4]),
            ),
            raw(
                "account",
                "r1",
                5,
                resting_buy_fill("r1", "b1", 6, "90", [10, 10]),
            ),
            raw(
                "account",
                "r1",
                6,
                Raw::OrderAccepted(OrderAccepted {
                    time_in_force: "DAY".into(),
                    expires_at_ms: 1_767_222_000_000,
                    ..accepted("r1", "s1", "SELL", 8, "120")
                }),
            ),
            raw(
                "account",
                "r1",
                7,
                Raw::OrderCanceled(OrderCanceled {
                    account_id: "r1".into(),
                    order_id: "order-s1".into(),
                    client_order_id: "s1".into(),
                    symbol: "XYZ".into(),
                    side: "SELL".into(),
                    status: "EXPIRED".into(),
                    reason: "SESSION_CLOSE".into(),
                    canceled_quantity: 8,
                    ..Default::default()
                }),
            ),
            schema_2_trade,
        ],
    )
    .await?;

    // Instrument: 2; account: 1 + 2 + 2 + 3 + 3 + 2 + 2 + 2.
    let events = enriched(&config, 19, Duration::from_secs(20)).await?;
    let r1: Vec<EnrichedEvent> = of_account(&events, "r1").into_iter().cloned().collect();
    let order = ["OrderUpdated", "PortfolioValueUpdated"];
    assert_eq!(
        shape(&r1),
        sets(
            "r1",
            &[
                (1, &["AccountRegistered"]),
                (2, &["CashBalanceChanged", "PortfolioValueUpdated"]),
                (3, &order),
                (4, &FILL),
                (5, &FILL),
                (6, &order),
                (7, &order),
                // The set a trade had before orders rested.
                (8, &FILL[..2]),
            ]
        )
    );

    let orders: Vec<_> = r1
        .iter()
        .filter_map(|event| match &event.body {
            Some(Enriched::OrderUpdated(order)) => Some(order),
            _ => None,
        })
        .collect();
    let progress: Vec<_> = orders
        .iter()
        .map(|o| {
            (
                o.client_order_id.as_str(),
                o.status.as_str(),
                o.filled_quantity,
                o.leaves_quantity,
                o.reserved_cash.as_str(),
                o.reserved_quantity,
            )
        })
        .collect();
    // A buy of 10 at 100 holds back 1000, 100 for each share not yet bought; a sell holds
    // back its shares instead, until it expires.
    assert_eq!(
        progress,
        [
            ("b1", "NEW", 0, 10, "1000", 0),
            ("b1", "PARTIALLY_FILLED", 4, 6, "600", 0),
            ("b1", "FILLED", 10, 0, "0", 0),
            ("s1", "NEW", 0, 8, "0", 8),
            ("s1", "EXPIRED", 0, 0, "0", 0),
        ]
    );
    // (4 x 95 + 6 x 90) / 10.
    assert_eq!(
        (
            orders[2].average_fill_price.as_str(),
            orders[2].last_fill_price.as_str(),
            orders[2].last_fill_quantity
        ),
        ("92", "90", 6)
    );
    assert_eq!(
        (orders[4].reason.as_str(), orders[4].expires_at_ms),
        ("SESSION_CLOSE", 1_767_222_000_000)
    );

    let funds: Vec<_> = r1
        .iter()
        .filter_map(|event| match &event.body {
            Some(Enriched::PortfolioValueUpdated(value)) => Some((
                value.cash_balance.as_str(),
                value.reserved_cash.as_str(),
                value.buying_power.as_str(),
                value
                    .positions
                    .first()
                    .map(|p| (p.quantity, p.reserved_quantity)),
            )),
            _ => None,
        })
        .collect();
    // Cash: 10000, less 4 x 95, 6 x 90, then 1 x 100.
    assert_eq!(
        funds,
        [
            ("10000", "0", "10000", None),
            ("10000", "1000", "9000", None),
            ("9620", "600", "9020", Some((4, 0))),
            ("9080", "0", "9080", Some((10, 0))),
            ("9080", "0", "9080", Some((10, 8))),
            ("9080", "0", "9080", Some((10, 0))),
            ("8980", "0", "8980", Some((11, 0))),
        ]
    );
    relay.stop().await;
    Ok(())
}

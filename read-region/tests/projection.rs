//! The read region against the real leafs and Redis: figures, read-your-writes, idempotent and
//! ordered projection, the watch stream and the error contract.

use std::time::Duration;

use futures::StreamExt;
use testkit::{read_region::*, tag};
use trading_proto::portfolio::v1 as api;

const WAIT: Duration = Duration::from_secs(20);

/// The scenario both regions must show identically: two accounts, two instruments, trades
/// on both sides, price moves after the trades, and alerts of both kinds.
fn scenario(relay: &mut Relay) -> Vec<trading_proto::events::v1::EnrichedEvent> {
    let mut events = Vec::new();
    events.extend(relay.instrument("AAPL", "Apple Inc.", "Technology"));
    events.extend(relay.instrument("MSFT", "Microsoft Corp.", "Software"));
    events.extend(relay.price("AAPL", "150", &[]));
    events.extend(relay.price("MSFT", "300", &[]));
    events.extend(relay.open_account("alice"));
    events.extend(relay.deposit("alice", "100000"));
    events.extend(relay.open_account("bob"));
    events.extend(relay.deposit("bob", "1000"));
    events.extend(relay.trade("alice", "AAPL", "BUY", 10, true));
    events.extend(relay.trade("alice", "MSFT", "BUY", 5, false));
    events.extend(relay.trade("bob", "MSFT", "BUY", 1, false));
    events.extend(relay.trade("bob", "MSFT", "SELL", 1, false));
    events.extend(relay.price("AAPL", "160", &[]));
    events.extend(relay.trade("alice", "AAPL", "BUY", 10, false));
    events.extend(relay.trade("alice", "AAPL", "SELL", 5, false));
    events.extend(relay.price("MSFT", "290", &["alice"]));
    events
}

fn assert_alice(portfolio: &api::Portfolio, region: &str) {
    assert_eq!(portfolio.region, region);
    assert_eq!(portfolio.version, 6);
    assert_eq!(portfolio.cash_balance, "96200");
    assert_eq!(portfolio.total_market_value, "3850");
    assert_eq!(portfolio.total_value, "100050");
    assert_eq!(portfolio.realized_pnl, "25");
    assert_eq!(portfolio.unrealized_pnl, "25");
    let summary: Vec<_> = portfolio
        .positions
        .iter()
        .map(|p| {
            (
                p.symbol.as_str(),
                p.name.as_str(),
                p.sector.as_str(),
                p.quantity,
                p.average_cost.as_str(),
                p.last_price.as_str(),
                p.market_value.as_str(),
                p.unrealized_pnl.as_str(),
                p.realized_pnl.as_str(),
                p.weight.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "AAPL",
                "Apple Inc.",
                "Technology",
                15,
                "155",
                "160",
                "2400",
                "75",
                "25",
                "0.02398801"
            ),
            (
                "MSFT",
                "Microsoft Corp.",
                "Software",
                5,
                "300",
                "290",
                "1450",
                "-50",
                "0",
                "0.01449275"
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_regions_show_identical_correct_figures() -> anyhow::Result<()> {
    let tag = tag();
    let hub = HubStream::create(&tag).await?;
    let eu_config = isolated_config(&eu(), &hub, &tag);
    let ap_config = isolated_config(&ap(), &hub, &tag);
    let eu = ReadRegion::start(eu_config.clone()).await?;
    let ap = ReadRegion::start(ap_config.clone()).await?;
    let mut relay = Relay::default();
    hub.publish(&scenario(&mut relay)).await?;

    for (region, name) in [(&eu, "eu"), (&ap, "ap")] {
        let alice = region.portfolio_settled(&relay, "alice", WAIT).await?;
        assert_alice(&alice, name);
        let bob = region.portfolio_at("bob", 4, WAIT).await?;
        assert_eq!(
            (
                bob.cash_balance.as_str(),
                bob.positions.len(),
                bob.realized_pnl.as_str()
            ),
            ("1000", 0, "0")
        );
        assert_eq!(bob.total_value, "1000");

        let mut client = region.client();
        // Trades newest first, paged.
        let first = client
            .list_trades(api::ListTradesRequest {
                account_id: "alice".into(),
                page_size: 3,
                page_token: String::new(),
            })
            .await?
            .into_inner();
        let versions: Vec<u64> = first.trades.iter().map(|t| t.account_version).collect();
        assert_eq!(versions, [6, 5, 4]);
        assert_eq!(first.trades[0].side, "SELL");
        assert_eq!(first.trades[0].realized_pnl, "25");
        assert_eq!(first.trades[0].notional, "800");
        assert!(!first.next_page_token.is_empty());
        let second = client
            .list_trades(api::ListTradesRequest {
                account_id: "alice".into(),
                page_size: 3,
                page_token: first.next_page_token,
            })
            .await?
            .into_inner();
        let versions: Vec<u64> = second.trades.iter().map(|t| t.account_version).collect();
        assert_eq!(versions, [3]);
        assert!(second.next_page_token.is_empty());

        let alerts = client
            .list_risk_alerts(api::ListRiskAlertsRequest {
                account_id: "alice".into(),
            })
            .await?
            .into_inner()
            .alerts;
        let alerts: Vec<_> = alerts
            .iter()
            .map(|a| (a.rule.as_str(), a.symbol.as_str(), a.account_version))
            .collect();
        assert_eq!(
            alerts,
            [("concentration", "AAPL", 3), ("stop_loss", "MSFT", 6)]
        );

        let dashboard = client
            .get_market_dashboard(api::GetMarketDashboardRequest {})
            .await?
            .into_inner();
        assert_eq!(dashboard.region, name);
        assert_eq!(
            (
                dashboard.accounts,
                dashboard.trades_today,
                dashboard.volume_today,
                dashboard.notional_today.as_str()
            ),
            (2, 6, 32, "6000")
        );
        let symbols: Vec<_> = dashboard
            .symbols
            .iter()
            .map(|s| {
                (
                    s.symbol.as_str(),
                    s.name.as_str(),
                    s.last_price.as_str(),
                    s.trades_today,
                    s.volume_today,
                    s.notional_today.as_str(),
                    s.holders,
                )
            })
            .collect();
        assert_eq!(
            symbols,
            [
                ("AAPL", "Apple Inc.", "160", 3, 25, "3900", 1),
                ("MSFT", "Microsoft Corp.", "290", 3, 7, "2100", 1),
            ]
        );
    }
    // Identical apart from who answers and how fresh it is.
    let mut from_eu = eu.portfolio("alice").await?;
    let mut from_ap = ap.portfolio("alice").await?;
    for portfolio in [&mut from_eu, &mut from_ap] {
        portfolio.region.clear();
        portfolio.staleness_ms = 0;
    }
    assert_eq!(from_eu, from_ap);

    eu.stop().await?;
    ap.stop().await?;
    clean_up(&eu_config).await;
    clean_up(&ap_config).await;
    hub.delete().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_accounts_and_malformed_requests_are_refused_precisely() -> anyhow::Result<()> {
    let tag = tag();
    let hub = HubStream::create(&tag).await?;
    let config = isolated_config(&eu(), &hub, &tag);
    let region = ReadRegion::start(config.clone()).await?;
    let mut relay = Relay::default();
    hub.publish(&relay.open_account("known")).await?;
    region.portfolio_at("known", 1, WAIT).await?;
    let mut client = region.client();

    let status = region
        .portfolio("nobody")
        .await
        .expect_err("unknown account");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let status = client
        .list_trades(api::ListTradesRequest {
            account_id: "nobody".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown account");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let status = client
        .list_risk_alerts(api::ListRiskAlertsRequest {
            account_id: "nobody".into(),
        })
        .await
        .expect_err("unknown account");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let status = client
        .watch_portfolio(api::WatchPortfolioRequest {
            account_id: "nobody".into(),
        })
        .await
        .expect_err("unknown account");
    assert_eq!(status.code(), tonic::Code::NotFound);

    // Ids the write region refuses are refused here the same way, not merely not found.
    let too_long = "a".repeat(65);
    for malformed in ["", "bad id!", "a.b", too_long.as_str()] {
        let status = region
            .portfolio(malformed)
            .await
            .expect_err("malformed account id");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{malformed:?}");
        assert!(status.message().contains("account_id"), "{status:?}");
    }
    let status = client
        .list_trades(api::ListTradesRequest {
            account_id: "known".into(),
            page_size: 10,
            page_token: "not-a-token".into(),
        })
        .await
        .expect_err("foreign page token");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("page_token"), "{status:?}");

    region.stop().await?;
    clean_up(&config).await;
    hub.delete().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn min_version_waits_for_the_write_and_names_the_version_reached() -> anyhow::Result<()> {
    let tag = tag();
    let hub = HubStream::create(&tag).await?;
    let config = isolated_config(&eu(), &hub, &tag);
    let region = ReadRegion::start(config.clone()).await?;
    let mut relay = Relay::default();
    hub.publish(&relay.open_account("reader")).await?;
    region.portfolio_at("reader", 1, WAIT).await?;

    // Asked before the write arrives: the read waits for it instead of answering stale.
    let mut client = region.client();
    let waiting = tokio::spawn(async move {
        let mut request = tonic::Request::new(api::GetPortfolioRequest {
            account_id: "reader".into(),
            min_version: 2,
        });
        request.set_timeout(Duration::from_secs(10));
        client.get_portfolio(request).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    hub.publish(&relay.deposit("reader", "250.75")).await?;
    let portfolio = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await???
        .into_inner();
    assert!(portfolio.version >= 2);
    assert_eq!(portfolio.cash_balance, "250.75");

    // A version that never comes: a clear answer before the caller's deadline.
    let started = std::time::Instant::now();
    let mut request = tonic::Request::new(api::GetPortfolioRequest {
        account_id: "reader".into(),
        min_version: 9,
    });
    request.set_timeout(Duration::from_millis(800));
    let status = region
        .client()
        .get_portfolio(request)
        .await
        .expect_err("version 9 never arrives");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("version 2"), "{status:?}");
    assert!(status.message().contains("min_version 9"), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    region.stop().await?;
    clean_up(&config).await;
    hub.delete().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicates_replays_and_out_of_order_events_change_nothing() -> anyhow::Result<()> {
    let tag = tag();
    let hub = HubStream::create(&tag).await?;
    let config = isolated_config(&eu(), &hub, &tag);
    let region = ReadRegion::start(config.clone()).await?;
    let mut relay = Relay::default();
    let mut all = Vec::new();
    let mut publish_now = Vec::new();
    publish_now.extend(relay.instrument("NVDA", "Nvidia", "Semis"));
    publish_now.extend(relay.price("NVDA", "100", &[]));
    publish_now.extend(relay.open_account("carol"));
    hub.publish(&publish_now).await?;
    all.extend(publish_now);
    region.portfolio_at("carol", 1, WAIT).await?;

    let deposit = relay.deposit("carol", "5000"); // version 2, two parts
    let trade = relay.trade("carol", "NVDA", "BUY", 7, false); // version 3
    // Version 3 first, then the second part of version 2: neither may apply yet.
    hub.publish(&trade).await?;
    hub.publish(&deposit[1..]).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let early = region.portfolio("carol").await?;
    assert_eq!((early.version, early.cash_balance.as_str()), (1, "0"));
    assert!(early.positions.is_empty());
    // The predecessor arrives: everything applies, in order.
    hub.publish(&deposit[..1]).await?;
    let caught_up = region.portfolio_at("carol", 3, WAIT).await?;
    all.extend(deposit);
    all.extend(trade);

    // Every event again, once under fresh message ids (the hub stores them again, as a
    // republish after the de-duplication window would) and once under the same ids.
    hub.publish_with_ids(&all, |event| format!("{}-again", event_id(event)))
        .await?;
    hub.publish(&all).await?;
    // A later version marks the point where the stream has been consumed past the replay.
    let marker = relay.deposit("carol", "1");
    hub.publish(&marker).await?;
    let after = region.portfolio_at("carol", 4, WAIT).await?;

    assert_eq!(caught_up.cash_balance, "4300");
    assert_eq!(after.cash_balance, "4301");
    assert_eq!(after.positions.len(), 1);
    assert_eq!(after.positions[0].quantity, 7);
    assert_eq!(after.positions[0].average_cost, "100");
    let trades = region
        .client()
        .list_trades(api::ListTradesRequest {
            account_id: "carol".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .trades;
    assert_eq!(trades.len(), 1, "a replayed trade must not be listed twice");
    let dashboard = region
        .client()
        .get_market_dashboard(api::GetMarketDashboardRequest {})
        .await?
        .into_inner();
    assert_eq!(
        (
            dashboard.accounts,
            dashboard.trades_today,
            dashboard.volume_today
        ),
        (1, 1, 7)
    );
    assert_eq!(dashboard.symbols[0].holders, 1);

    region.stop().await?;
    clean_up(&config).await;
    hub.delete().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_delivers_every_version_in_order() -> anyhow::Result<()> {
    let tag = tag();
    let hub = HubStream::create(&tag).await?;
    let config = isolated_config(&eu(), &hub, &tag);
    let region = ReadRegion::start(config.clone()).await?;
    let mut relay = Relay::default();
    let mut setup = relay.instrument("AMD", "AMD", "Semis");
    setup.extend(relay.price("AMD", "50", &[]));
    setup.extend(relay.open_account("dave"));
    setup.extend(relay.deposit("dave", "100000"));
    hub.publish(&setup).await?;
    region.portfolio_at("dave", 2, WAIT).await?;

    let mut updates = region
        .client()
        .watch_portfolio(api::WatchPortfolioRequest {
            account_id: "dave".into(),
        })
        .await?
        .into_inner();
    let first = tokio::time::timeout(WAIT, updates.next())
        .await?
        .expect("current portfolio")?;
    assert_eq!(first.version, 2);

    // Trades published one by one and in bursts while the account is watched.
    for round in 0..20 {
        let trade = relay.trade("dave", "AMD", "BUY", 1, round % 5 == 0);
        hub.publish(&trade).await?;
        if round % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut versions = Vec::new();
    while versions.len() < 20 {
        let update = tokio::time::timeout(WAIT, updates.next())
            .await?
            .expect("stream open")?;
        versions.push(update.version);
        if update.version == 22 {
            assert_eq!(update.positions[0].quantity, 20);
        }
    }
    assert_eq!(versions, (3..=22).collect::<Vec<u64>>());

    region.stop().await?;
    clean_up(&config).await;
    hub.delete().await;
    Ok(())
}

//! Resting orders in a read region, against the real leaf and Redis: an order's life ends in
//! the right `ListOrders` answer (filtered by status, paged) and the right reservations in
//! `GetPortfolio`; redelivered events double nothing; `WatchOrders` pushes each state change in
//! order; and the order requests the API refuses, precisely.

use std::time::Duration;

use futures::StreamExt;
use testkit::{read_region::*, tag};
use trading_proto::portfolio::v1 as api;

const WAIT: Duration = Duration::from_secs(20);

/// What a list of orders shows at a glance: id, status, filled, leaves.
fn summary(orders: &[api::Order]) -> Vec<(&str, &str, i64, i64)> {
    orders
        .iter()
        .map(|o| {
            let quantities = (o.filled_quantity, o.leaves_quantity);
            (
                o.client_order_id.as_str(),
                o.status.as_str(),
                quantities.0,
                quantities.1,
            )
        })
        .collect()
}

fn ids(orders: &[api::Order]) -> Vec<&str> {
    orders.iter().map(|o| o.client_order_id.as_str()).collect()
}

async fn list(
    region: &ReadRegion,
    account: &str,
    statuses: &[&str],
    page_size: u32,
    page_token: String,
) -> Result<api::ListOrdersResponse, tonic::Status> {
    region
        .client()
        .list_orders(api::ListOrdersRequest {
            account_id: account.into(),
            statuses: statuses.iter().map(|s| (*s).to_owned()).collect(),
            page_size,
            page_token,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Cash reserved, buying power, and each position's symbol, quantity and reserved quantity.
fn reservations(portfolio: &api::Portfolio) -> (&str, &str, Vec<(&str, i64, i64)>) {
    let positions = portfolio
        .positions
        .iter()
        .map(|p| (p.symbol.as_str(), p.quantity, p.reserved_quantity))
        .collect();
    (
        portfolio.reserved_cash.as_str(),
        portfolio.buying_power.as_str(),
        positions,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_orders_life_ends_in_the_right_lists_and_reservations() -> anyhow::Result<()> {
    let tag = tag();
    let hub = HubStream::create(&tag).await?;
    let config = isolated_config(&eu(), &hub, &tag);
    let region = ReadRegion::start(config.clone()).await?;
    let mut relay = Relay::default();
    let mut all = Vec::new();
    let mut setup = relay.instrument("AAPL", "Apple Inc.", "Technology");
    setup.extend(relay.price("AAPL", "100", &[]));
    setup.extend(relay.open_account("alice"));
    setup.extend(relay.deposit("alice", "10000")); // version 2
    // Two resting buys, then the first fills in two steps: each step is its own version.
    setup.extend(relay.place_limit("alice", "o-1", "AAPL", "BUY", 10, "90"));
    setup.extend(relay.place_limit("alice", "o-2", "AAPL", "BUY", 5, "80"));
    setup.extend(relay.fill("alice", "o-1", 4)); // version 5
    hub.publish(&setup).await?;
    all.extend(setup);

    // 6 x 90 still reserved for o-1 and 5 x 80 for o-2, out of 10000 - 4 x 90.
    let partly = region.portfolio_at("alice", 5, WAIT).await?;
    assert_eq!(partly.cash_balance, "9640");
    assert_eq!(reservations(&partly), ("940", "8700", vec![("AAPL", 4, 0)]));
    let listed = list(&region, "alice", &[], 0, String::new()).await?;
    assert_eq!(
        summary(&listed.orders),
        [("o-1", "PARTIALLY_FILLED", 4, 6), ("o-2", "NEW", 0, 5)]
    );

    let mut rest = relay.fill("alice", "o-1", 6); // version 6
    rest.extend(relay.place_limit("alice", "o-3", "AAPL", "SELL", 4, "120"));
    rest.extend(relay.cancel("alice", "o-2")); // version 8
    hub.publish(&rest).await?;
    all.extend(rest);
    let done = region.portfolio_at("alice", 8, WAIT).await?;
    // Nothing left on resting buys: all the cash may be spent; the resting sell holds 4 shares.
    assert_eq!(done.cash_balance, "9100");
    assert_eq!(reservations(&done), ("0", "9100", vec![("AAPL", 10, 4)]));

    let everything = list(&region, "alice", &[], 0, String::new()).await?;
    assert_eq!(
        summary(&everything.orders),
        [
            ("o-1", "FILLED", 10, 0),
            ("o-2", "CANCELED", 0, 0),
            ("o-3", "NEW", 0, 4)
        ]
    );
    assert!(everything.next_page_token.is_empty());
    let filled = &everything.orders[0];
    assert_eq!(
        (
            filled.account_id.as_str(),
            filled.account_version,
            filled.side.as_str(),
            filled.order_type.as_str(),
            filled.limit_price.as_str(),
            filled.average_fill_price.as_str(),
            filled.reserved_cash.as_str(),
        ),
        ("alice", 6, "BUY", "LIMIT", "90", "90", "0")
    );
    assert!(filled.updated_at.is_some());
    let canceled = &everything.orders[1];
    assert_eq!(
        (canceled.reason.as_str(), canceled.account_version),
        ("USER", 8)
    );
    assert_eq!(everything.orders[2].reserved_quantity, 4);

    // Filtered by status; a status asked for twice lists its orders once.
    let open = list(
        &region,
        "alice",
        &["NEW", "PARTIALLY_FILLED"],
        0,
        String::new(),
    )
    .await?;
    assert_eq!(ids(&open.orders), ["o-3"]);
    let closed = list(
        &region,
        "alice",
        &["CANCELED", "FILLED", "FILLED"],
        0,
        String::new(),
    )
    .await?;
    assert_eq!(ids(&closed.orders), ["o-1", "o-2"]);
    let expired = list(&region, "alice", &["EXPIRED"], 0, String::new()).await?;
    assert!(expired.orders.is_empty() && expired.next_page_token.is_empty());

    // Paged: every order once, in id order, the last page without a token.
    let (mut pages, mut token) = (Vec::new(), String::new());
    loop {
        let page = list(&region, "alice", &[], 2, token).await?;
        pages.push(ids(&page.orders).join(","));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, ["o-1,o-2", "o-3"]);
    let first = list(&region, "alice", &["NEW", "CANCELED"], 1, String::new()).await?;
    let second = list(
        &region,
        "alice",
        &["NEW", "CANCELED"],
        1,
        first.next_page_token,
    )
    .await?;
    assert_eq!(
        (ids(&first.orders), ids(&second.orders)),
        (vec!["o-2"], vec!["o-3"])
    );
    assert!(second.next_page_token.is_empty());

    // Every event again, under fresh message ids and under the same ones; a later version
    // marks where the stream has been consumed past the replay.
    hub.publish_with_ids(&all, |event| format!("{}-again", event_id(event)))
        .await?;
    hub.publish(&all).await?;
    hub.publish(&relay.deposit("alice", "1")).await?;
    let after = region.portfolio_at("alice", 9, WAIT).await?;
    assert_eq!(after.cash_balance, "9101");
    assert_eq!(reservations(&after), ("0", "9101", vec![("AAPL", 10, 4)]));
    let replayed = list(&region, "alice", &[], 0, String::new()).await?;
    assert_eq!(
        replayed, everything,
        "a redelivered order event changes nothing"
    );

    region.stop().await?;
    clean_up(&config).await;
    hub.delete().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_orders_starts_with_the_open_orders_then_pushes_each_change() -> anyhow::Result<()> {
    let tag = tag();
    let hub = HubStream::create(&tag).await?;
    let config = isolated_config(&eu(), &hub, &tag);
    let region = ReadRegion::start(config.clone()).await?;
    let mut relay = Relay::default();
    let mut setup = relay.instrument("MSFT", "Microsoft Corp.", "Software");
    setup.extend(relay.price("MSFT", "300", &[]));
    setup.extend(relay.open_account("erin"));
    setup.extend(relay.deposit("erin", "100000"));
    setup.extend(relay.place_limit("erin", "w-1", "MSFT", "BUY", 10, "290")); // version 3
    setup.extend(relay.place_limit("erin", "w-0", "MSFT", "BUY", 1, "280"));
    setup.extend(relay.cancel("erin", "w-0")); // version 5: closed before the watch
    hub.publish(&setup).await?;
    region.portfolio_at("erin", 5, WAIT).await?;

    let mut updates = region
        .client()
        .watch_orders(api::WatchOrdersRequest {
            account_id: "erin".into(),
        })
        .await?
        .into_inner();
    let mut next = async || -> anyhow::Result<(String, String, u64)> {
        let order = tokio::time::timeout(WAIT, updates.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the watch ended"))??;
        Ok((order.client_order_id, order.status, order.account_version))
    };
    assert_eq!(next().await?, ("w-1".into(), "NEW".into(), 3));

    // One change at a time, each seen before the next is made; a deposit changes no order.
    let steps = [
        (relay.fill("erin", "w-1", 3), ("w-1", "PARTIALLY_FILLED", 6)),
        (
            relay.place_limit("erin", "w-2", "MSFT", "SELL", 2, "310"),
            ("w-2", "NEW", 7),
        ),
        (relay.fill("erin", "w-1", 7), ("w-1", "FILLED", 8)),
    ];
    for (events, (id, status, version)) in steps {
        hub.publish(&events).await?;
        assert_eq!(next().await?, (id.into(), status.into(), version));
    }
    let mut burst = relay.deposit("erin", "5"); // version 9
    burst.extend(relay.cancel("erin", "w-2")); // version 10
    hub.publish(&burst).await?;
    assert_eq!(next().await?, ("w-2".into(), "CANCELED".into(), 10));

    region.stop().await?;
    clean_up(&config).await;
    hub.delete().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_requests_are_refused_precisely() -> anyhow::Result<()> {
    let tag = tag();
    let hub = HubStream::create(&tag).await?;
    let config = isolated_config(&eu(), &hub, &tag);
    let region = ReadRegion::start(config.clone()).await?;
    let mut relay = Relay::default();
    let mut setup = relay.instrument("ANY", "Any plc", "Industrials");
    setup.extend(relay.price("ANY", "1", &[]));
    setup.extend(relay.open_account("known"));
    setup.extend(relay.open_account("other"));
    hub.publish(&setup).await?;
    region.portfolio_at("known", 1, WAIT).await?;
    region.portfolio_at("other", 1, WAIT).await?;

    // An account without orders lists none.
    let none = list(&region, "known", &[], 0, String::new()).await?;
    assert!(none.orders.is_empty() && none.next_page_token.is_empty());

    let status = list(&region, "nobody", &[], 0, String::new())
        .await
        .expect_err("unknown account");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let status = region
        .client()
        .watch_orders(api::WatchOrdersRequest {
            account_id: "nobody".into(),
        })
        .await
        .expect_err("unknown account");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");

    let refused = [
        (
            list(&region, "bad id!", &[], 0, String::new()).await,
            "account_id",
        ),
        (
            list(&region, "known", &["OPEN"], 0, String::new()).await,
            "statuses",
        ),
        (
            list(&region, "known", &["new"], 0, String::new()).await,
            "statuses",
        ),
        (
            list(&region, "known", &[], 501, String::new()).await,
            "page_size",
        ),
        (
            list(&region, "known", &[], 0, "po1-6f2d31.00".into()).await,
            "page_token",
        ),
    ];
    for (answer, field) in refused {
        let status = answer.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{status:?}");
    }
    let status = region
        .client()
        .watch_orders(api::WatchOrdersRequest {
            account_id: String::new(),
        })
        .await
        .expect_err("no account id");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // A token is good for the account and the list it was issued for only: one of a trades
    // page or of another account's orders is refused.
    for (account, id) in [("known", "k-"), ("other", "x-")] {
        let mut orders = Vec::new();
        for n in 0..3 {
            orders.extend(relay.place_limit(account, &format!("{id}{n}"), "ANY", "SELL", 1, "1"));
        }
        hub.publish(&orders).await?;
        region.portfolio_at(account, 4, WAIT).await?;
    }
    let page = list(&region, "other", &[], 1, String::new()).await?;
    let status = list(&region, "known", &[], 1, page.next_page_token)
        .await
        .expect_err("another account's token");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let mut trades = relay.trade("known", "ANY", "BUY", 1, false);
    trades.extend(relay.trade("known", "ANY", "BUY", 1, false));
    hub.publish(&trades).await?;
    region.portfolio_at("known", 6, WAIT).await?;
    let trades_page = region
        .client()
        .list_trades(api::ListTradesRequest {
            account_id: "known".into(),
            page_size: 1,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    assert!(!trades_page.next_page_token.is_empty());
    let status = list(&region, "known", &[], 1, trades_page.next_page_token)
        .await
        .expect_err("a trades page's token");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    region.stop().await?;
    clean_up(&config).await;
    hub.delete().await;
    Ok(())
}

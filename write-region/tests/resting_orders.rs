//! Resting LIMIT orders against the real Cassandra and NATS hub: a scripted session whose every
//! figure was computed by hand, times in force, cancels, bad input, DAY expiry, and races of new
//! orders, cancels and fills across two servers on one keyspace, and the sweep finishing the
//! check a placement killed after its commit left.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, future::join_all};
use platform::names::Aggregate;
use testkit::{
    trading::{
        WriteApi, funded_account, instrument, limit_order, order, priced_instrument, publish_sized,
    },
    write_region::WriteRegion,
};
use tonic::{Code, Status};
use trading_proto::trading::v1::{self as api, OrderStatus, TimeInForce};
use write_region::store::{AggregateKey, PlacementMarker, Store};

use api::Side::{Buy, Sell};

async fn account(region: &impl WriteApi, id: &str) -> anyhow::Result<api::Account> {
    Ok(region
        .accounts()
        .get_account(api::GetAccountRequest {
            account_id: id.into(),
        })
        .await?
        .into_inner())
}

async fn get_order(
    region: &impl WriteApi,
    account_id: &str,
    client_order_id: &str,
) -> anyhow::Result<api::PlaceOrderResponse> {
    Ok(region
        .orders()
        .get_order(api::GetOrderRequest {
            account_id: account_id.into(),
            client_order_id: client_order_id.into(),
        })
        .await?
        .into_inner())
}

async fn cancel(
    region: &impl WriteApi,
    account_id: &str,
    client_order_id: &str,
) -> Result<api::PlaceOrderResponse, Status> {
    region
        .orders()
        .cancel_order(api::CancelOrderRequest {
            account_id: account_id.into(),
            client_order_id: client_order_id.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn place(
    region: &impl WriteApi,
    request: api::PlaceOrderRequest,
) -> anyhow::Result<api::PlaceOrderResponse> {
    Ok(region.orders().place_order(request).await?.into_inner())
}

/// (status, filled, leaves, average fill price, reserved cash, reserved quantity)
fn progress(order: &api::PlaceOrderResponse) -> (OrderStatus, i64, i64, &str, &str, i64) {
    (
        order.status(),
        order.filled_quantity,
        order.leaves_quantity,
        order.average_fill_price.as_str(),
        order.reserved_cash.as_str(),
        order.reserved_quantity,
    )
}

fn position<'a>(account: &'a api::Account, symbol: &str) -> Option<&'a api::Position> {
    account.positions.iter().find(|p| p.symbol == symbol)
}

fn reason(status: &Status) -> String {
    tonic_types::StatusExt::get_error_details(status)
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_price_path_through_resting_orders_ends_in_hand_computed_states() -> anyhow::Result<()> {
    let region = WriteRegion::start(support::isolated_config()).await?;
    priced_instrument(&region, "RST", "100.00").await?;
    funded_account(&region, "ra", "100000").await?;
    funded_account(&region, "rb", "50000").await?;
    // rb holds 300 at 100: cash 50000 - 30000 = 20000.
    place(&region, order("rb", "seed", "RST", Buy, 300)).await?;

    let b1 = place(
        &region,
        limit_order("ra", "b1", "RST", Buy, 100, "95", TimeInForce::Gtc),
    )
    .await?;
    assert_eq!(progress(&b1), (OrderStatus::New, 0, 100, "", "9500", 0));
    assert!(b1.trade_id.is_empty() && b1.executed_at.is_none());
    // A retry while it rests answers as the first time; another order under its id is refused.
    let retried = place(
        &region,
        limit_order("ra", "b1", "RST", Buy, 100, "95", TimeInForce::Gtc),
    )
    .await?;
    assert_eq!(retried, b1);
    let reused = region
        .orders()
        .place_order(limit_order(
            "ra",
            "b1",
            "RST",
            Buy,
            100,
            "94",
            TimeInForce::Gtc,
        ))
        .await
        .expect_err("b1 names another order");
    assert_eq!(
        (reused.code(), reason(&reused).as_str()),
        (Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED")
    );
    place(
        &region,
        limit_order("ra", "b2", "RST", Buy, 50, "90", TimeInForce::Day),
    )
    .await?;
    place(
        &region,
        limit_order("ra", "b3", "RST", Buy, 40, "95", TimeInForce::Gtc),
    )
    .await?;
    let s1 = place(
        &region,
        limit_order("rb", "s1", "RST", Sell, 100, "105", TimeInForce::Gtc),
    )
    .await?;
    assert_eq!(progress(&s1), (OrderStatus::New, 0, 100, "", "0", 100));
    place(
        &region,
        limit_order("rb", "s2", "RST", Sell, 80, "110", TimeInForce::Gtc),
    )
    .await?;

    // Reservations: ra 9500 + 4500 + 3800; rb 180 of its 300 shares.
    let ra = account(&region, "ra").await?;
    assert_eq!(
        (
            ra.cash_balance.as_str(),
            ra.reserved_cash.as_str(),
            ra.buying_power.as_str()
        ),
        ("100000", "17800", "82200")
    );
    assert_eq!(ra.open_orders.len(), 3);
    assert!(
        position(&account(&region, "rb").await?, "RST").is_some_and(|p| p.reserved_quantity == 180)
    );
    let oversell = region
        .orders()
        .place_order(order("rb", "too-many", "RST", Sell, 150))
        .await
        .expect_err("only 120 shares are free");
    assert_eq!(reason(&oversell), "INSUFFICIENT_POSITION", "{oversell:?}");
    let overspend = region
        .orders()
        .place_order(order("ra", "too-much", "RST", Buy, 830))
        .await
        .expect_err("830 x 100 exceeds the buying power of 82200");
    assert_eq!(reason(&overspend), "INSUFFICIENT_FUNDS", "{overspend:?}");

    // 96 crosses nothing.
    assert_eq!(publish_sized(&region, "RST", "96", None).await?.fills, 0);
    // 94.50 with 120 shares: b1 (95, first) takes 100, b3 (95, later) 20; b2 (90) is not crossed.
    assert_eq!(
        publish_sized(&region, "RST", "94.50", Some(120))
            .await?
            .fills,
        2
    );
    assert_eq!(
        progress(&get_order(&region, "ra", "b1").await?),
        (OrderStatus::Filled, 100, 0, "94.5", "0", 0)
    );
    assert_eq!(
        progress(&get_order(&region, "ra", "b3").await?),
        (OrderStatus::PartiallyFilled, 20, 20, "94.5", "1900", 0)
    );
    // 100000 - 120 x 94.50 = 88660; reserved 4500 (b2) + 1900 (b3).
    let ra = account(&region, "ra").await?;
    assert_eq!(
        (ra.cash_balance.as_str(), ra.reserved_cash.as_str()),
        ("88660", "6400")
    );

    // 89, no size: b3's last 20 (95 first), then b2's 50 (90), all at 89.
    assert_eq!(publish_sized(&region, "RST", "89", None).await?.fills, 2);
    // b3: (20 x 94.50 + 20 x 89) / 40 = 91.75.
    assert_eq!(
        progress(&get_order(&region, "ra", "b3").await?),
        (OrderStatus::Filled, 40, 0, "91.75", "0", 0)
    );
    assert_eq!(
        progress(&get_order(&region, "ra", "b2").await?),
        (OrderStatus::Filled, 50, 0, "89", "0", 0)
    );
    // 88660 - 70 x 89 = 82430; 190 shares costing 11340 + 6230 = 17570.
    let ra = account(&region, "ra").await?;
    assert_eq!(
        (
            ra.cash_balance.as_str(),
            ra.reserved_cash.as_str(),
            ra.buying_power.as_str()
        ),
        ("82430", "0", "82430")
    );
    let held = position(&ra, "RST").expect("a position");
    assert_eq!(
        (held.quantity, held.average_cost.as_str()),
        (190, "92.47368421")
    );

    // 106 with 60 shares: s1 (105) sells 60 of 100 at 106, realizing 6 x 60 = 360.
    assert_eq!(
        publish_sized(&region, "RST", "106", Some(60)).await?.fills,
        1
    );
    assert_eq!(
        progress(&get_order(&region, "rb", "s1").await?),
        (OrderStatus::PartiallyFilled, 60, 40, "106", "0", 40)
    );
    // rb cancels the rest of s1; a retry answers the same; s2 still holds 80.
    let canceled = cancel(&region, "rb", "s1").await?;
    assert_eq!(
        progress(&canceled),
        (OrderStatus::Canceled, 60, 0, "106", "0", 0)
    );
    assert_eq!(canceled.reason, "USER");
    assert_eq!(
        cancel(&region, "rb", "s1").await?.status(),
        OrderStatus::Canceled
    );
    let rb = account(&region, "rb").await?;
    assert_eq!(rb.cash_balance, "26360");
    assert!(position(&rb, "RST").is_some_and(|p| (p.quantity, p.reserved_quantity) == (240, 80)));

    // 111 fills s2 whole: 26360 + 80 x 111 = 35240; realized 360 + 11 x 80 = 1240.
    assert_eq!(publish_sized(&region, "RST", "111", None).await?.fills, 1);
    let rb = account(&region, "rb").await?;
    let held = position(&rb, "RST").expect("a position");
    assert_eq!(
        (
            rb.cash_balance.as_str(),
            held.quantity,
            held.realized_pnl.as_str(),
            held.reserved_quantity
        ),
        ("35240", 160, "1240", 0)
    );
    let not_open = cancel(&region, "rb", "s2").await.expect_err("s2 is filled");
    assert_eq!(
        (not_open.code(), reason(&not_open).as_str()),
        (Code::FailedPrecondition, "ORDER_NOT_OPEN")
    );
    let unknown = cancel(&region, "rb", "never")
        .await
        .expect_err("no such order");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    // At 111: IOC and FOK below the price cancel at once; a marketable IOC fills whole.
    let ioc = place(
        &region,
        limit_order("ra", "ioc-1", "RST", Buy, 10, "110", TimeInForce::Ioc),
    )
    .await?;
    assert_eq!(
        (ioc.status(), ioc.reason.as_str(), ioc.filled_quantity),
        (OrderStatus::Canceled, "IOC", 0)
    );
    let fok = place(
        &region,
        limit_order("ra", "fok-1", "RST", Buy, 10, "110", TimeInForce::Fok),
    )
    .await?;
    assert_eq!(
        (fok.status(), fok.reason.as_str()),
        (OrderStatus::Canceled, "FOK")
    );
    let filled = place(
        &region,
        limit_order("ra", "ioc-2", "RST", Buy, 10, "112", TimeInForce::Ioc),
    )
    .await?;
    assert_eq!(
        (
            filled.status(),
            filled.fill_price.as_str(),
            filled.cash_balance.as_str()
        ),
        (OrderStatus::Filled, "111", "81320")
    );

    // ListOrders: in client order id order, filtered, in pages.
    let mut orders = region.orders();
    let list = |statuses: Vec<OrderStatus>, page_size, page_token: String| api::ListOrdersRequest {
        account_id: "ra".into(),
        statuses: statuses.into_iter().map(i32::from).collect(),
        page_size,
        page_token,
    };
    let ids = |page: &api::ListOrdersResponse| {
        page.orders
            .iter()
            .map(|o| o.client_order_id.clone())
            .collect::<Vec<_>>()
    };
    let canceled = orders
        .list_orders(list(vec![OrderStatus::Canceled], 0, String::new()))
        .await?
        .into_inner();
    assert_eq!(ids(&canceled), ["fok-1", "ioc-1"]);
    let first = orders
        .list_orders(list(vec![], 3, String::new()))
        .await?
        .into_inner();
    assert_eq!(ids(&first), ["b1", "b2", "b3"]);
    let rest = orders
        .list_orders(list(vec![], 3, first.next_page_token.clone()))
        .await?
        .into_inner();
    assert_eq!(ids(&rest), ["fok-1", "ioc-1", "ioc-2"]);
    region.stop().await
}

#[tokio::test]
async fn bad_order_input_is_refused_and_records_nothing() -> anyhow::Result<()> {
    let region = WriteRegion::start(support::isolated_config()).await?;
    priced_instrument(&region, "BAD", "50.00").await?;
    funded_account(&region, "bi", "10000").await?;
    let account_before = account(&region, "bi").await?;
    let instrument_before = region
        .market()
        .list_instruments(api::ListInstrumentsRequest {})
        .await?
        .into_inner();

    let unknown = cancel(&region, "bi", "nothing-here")
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let cases = [
        (
            limit_order("bi", "x", "BAD", Buy, 1, "49.995", TimeInForce::Gtc),
            "limit_price",
        ),
        (
            api::PlaceOrderRequest {
                time_in_force: 5,
                ..limit_order("bi", "x", "BAD", Buy, 1, "49", TimeInForce::Gtc)
            },
            "time_in_force",
        ),
    ];
    for (request, field) in cases {
        let status = region
            .orders()
            .place_order(request)
            .await
            .expect_err("malformed");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{status:?}");
    }
    let negative = region
        .market()
        .publish_price(api::PublishPriceRequest {
            symbol: "BAD".into(),
            price: "49".into(),
            size: Some(-1),
        })
        .await
        .expect_err("a negative size");
    assert_eq!(negative.code(), Code::InvalidArgument, "{negative:?}");
    assert!(negative.message().contains("size"), "{negative:?}");
    let statuses = region
        .orders()
        .list_orders(api::ListOrdersRequest {
            account_id: "bi".into(),
            statuses: vec![99],
            ..Default::default()
        })
        .await
        .expect_err("an unknown status");
    assert_eq!(statuses.code(), Code::InvalidArgument, "{statuses:?}");

    assert_eq!(account(&region, "bi").await?, account_before);
    let instrument_after = region
        .market()
        .list_instruments(api::ListInstrumentsRequest {})
        .await?
        .into_inner();
    assert_eq!(instrument_after, instrument_before);
    region.stop().await
}

#[tokio::test]
async fn a_day_order_expires_at_the_session_close_and_a_gtc_order_stays() -> anyhow::Result<()> {
    // The session closes a few seconds from now; the sweep looks often.
    let close = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 8;
    let config = write_region::Config {
        session_close_utc: format!(
            "{:02}:{:02}:{:02}",
            close / 3600 % 24,
            close / 60 % 60,
            close % 60
        ),
        book_sweep_interval_ms: 200,
        ..support::isolated_config()
    };
    let region = WriteRegion::start(config).await?;
    priced_instrument(&region, "DAYX", "20.00").await?;
    funded_account(&region, "da", "10000").await?;
    let day = place(
        &region,
        limit_order("da", "day-1", "DAYX", Buy, 100, "19", TimeInForce::Day),
    )
    .await?;
    let close_seconds = i64::try_from(close)?;
    assert!(
        day.expires_at.is_some_and(|at| at.seconds == close_seconds),
        "{day:?}"
    );
    place(
        &region,
        limit_order("da", "gtc-1", "DAYX", Buy, 10, "18", TimeInForce::Gtc),
    )
    .await?;
    assert_eq!(account(&region, "da").await?.reserved_cash, "2080");

    let expired = testkit::eventually(Duration::from_secs(30), || async {
        let order = get_order(&region, "da", "day-1").await?;
        Ok((order.status() == OrderStatus::Expired).then_some(order))
    })
    .await?;
    assert_eq!(
        (
            expired.reason.as_str(),
            expired.leaves_quantity,
            expired.reserved_cash.as_str()
        ),
        ("SESSION_CLOSE", 0, "0")
    );
    assert_eq!(
        get_order(&region, "da", "gtc-1").await?.status(),
        OrderStatus::New
    );
    let after = account(&region, "da").await?;
    assert_eq!(
        (after.reserved_cash.as_str(), after.buying_power.as_str()),
        ("180", "9820")
    );
    region.stop().await
}

/// Another server on the same keyspace (a second process's worth).
fn sharing(config: &write_region::Config) -> write_region::Config {
    write_region::Config {
        listen_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ..config.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_orders_against_reservations_never_overspend_across_two_servers() -> anyhow::Result<()>
{
    let config = support::isolated_config();
    let first = WriteRegion::start(config.clone()).await?;
    let second = WriteRegion::start(sharing(&config)).await?;
    priced_instrument(&first, "RSV", "110.00").await?;
    funded_account(&first, "rv", "10000").await?;
    // 8000 of the 10000 held back by a resting buy: 2000 left to spend.
    place(
        &first,
        limit_order("rv", "held", "RSV", Buy, 80, "100", TimeInForce::Gtc),
    )
    .await?;
    // 64 at once, half on each server: market buys of one share at 110 and resting buys of one
    // share at 100, each wanting buying power the others want too.
    let calls = (0..64).map(|i| {
        let region = if i % 2 == 0 { &first } else { &second };
        let request = if i % 4 < 2 {
            order("rv", &format!("m-{i}"), "RSV", Buy, 1)
        } else {
            limit_order(
                "rv",
                &format!("l-{i}"),
                "RSV",
                Buy,
                1,
                "100",
                TimeInForce::Gtc,
            )
        };
        let mut orders = region.orders();
        async move {
            orders
                .place_order(request)
                .await
                .map(tonic::Response::into_inner)
        }
    });
    let answers = join_all(calls).await;
    let (mut markets, mut limits) = (0_i64, 0_i64);
    for answer in &answers {
        match answer {
            Ok(placed) if placed.status() == OrderStatus::Filled => markets += 1,
            Ok(placed) => {
                assert_eq!(placed.status(), OrderStatus::New);
                limits += 1;
            }
            Err(status) => assert_eq!(reason(status), "INSUFFICIENT_FUNDS", "{status:?}"),
        }
    }
    // Whatever the interleaving: 110 per market buy and 100 per resting buy fit in 2000, and
    // no more could have (the next one of either kind would not fit).
    let spent = markets * 110 + limits * 100;
    assert!(spent <= 2000 && spent > 2000 - 110, "spent {spent}");
    let rv = account(&first, "rv").await?;
    let cash = 10000 - markets * 110;
    let reserved = 8000 + limits * 100;
    assert_eq!(
        (
            rv.cash_balance.clone(),
            rv.reserved_cash.clone(),
            rv.buying_power.clone()
        ),
        (
            cash.to_string(),
            reserved.to_string(),
            (cash - reserved).to_string()
        )
    );
    first.stop().await?;
    second.stop().await
}

/// A resting order whose first commit lost a race holds one place in the queue, the one its
/// commit names: once it has filled, the next price's shares go to the order behind it, not to an
/// index entry its lost attempt left at another time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_placed_after_a_lost_race_holds_one_place_in_the_queue() -> anyhow::Result<()> {
    let config = support::isolated_config();
    let first = WriteRegion::start(config.clone()).await?;
    let second = WriteRegion::start(sharing(&config)).await?;
    priced_instrument(&first, "LOST", "110.00").await?;
    // `first` keeps the account as it committed it; `second` then moves it on, so the placement
    // on `first` loses its first commit (IF version) and commits on its second attempt.
    funded_account(&first, "lr", "10000").await?;
    second
        .accounts()
        .deposit(api::DepositRequest {
            account_id: "lr".into(),
            amount: "1".into(),
            idempotency_key: "lr-second".into(),
        })
        .await?;
    let raced = limit_order("lr", "raced", "LOST", Buy, 10, "100", TimeInForce::Gtc);
    assert_eq!(place(&first, raced).await?.status(), OrderStatus::New);
    let behind = limit_order("lr", "behind", "LOST", Buy, 10, "100", TimeInForce::Gtc);
    assert_eq!(place(&first, behind).await?.status(), OrderStatus::New);
    // Ten shares at the limit: the first in time takes them all.
    assert_eq!(
        publish_sized(&first, "LOST", "100.00", Some(10))
            .await?
            .fills,
        1
    );
    let status = |order: api::PlaceOrderResponse| (order.status(), order.filled_quantity);
    assert_eq!(
        status(get_order(&first, "lr", "raced").await?),
        (OrderStatus::Filled, 10)
    );
    assert_eq!(
        status(get_order(&first, "lr", "behind").await?),
        (OrderStatus::New, 0)
    );
    // Ten more: the order behind's.
    assert_eq!(
        publish_sized(&first, "LOST", "100.00", Some(10))
            .await?
            .fills,
        1
    );
    assert_eq!(
        status(get_order(&first, "lr", "behind").await?),
        (OrderStatus::Filled, 10)
    );
    first.stop().await?;
    second.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sweep_makes_the_check_a_killed_placement_left() -> anyhow::Result<()> {
    let config = write_region::Config {
        book_sweep_interval_ms: 200,
        ..support::isolated_config()
    };
    let region = WriteRegion::start(config.clone()).await?;
    let store = Store::connect(&config.store()).await?;
    priced_instrument(&region, "MISS", "100.00").await?;
    funded_account(&region, "pm", "10000").await?;
    let instrument = AggregateKey {
        kind: Aggregate::Instrument,
        id: "MISS".into(),
    };
    let seen_version = store.load(&instrument, false).await?.version;
    let late = limit_order("pm", "late", "MISS", Buy, 10, "95", TimeInForce::Gtc);
    assert_eq!(place(&region, late).await?.status(), OrderStatus::New);
    let marks_of_late = |markers: Vec<PlacementMarker>| {
        markers
            .into_iter()
            .filter(|marker| marker.client_order_id == "late")
            .count()
    };
    // The request made its check and dropped its mark.
    assert_eq!(marks_of_late(store.placement_markers().await?), 0);

    // What a process killed between the order's commit and its check leaves when a price
    // crossed the order while it was being placed: the order on the book, a price whose plan
    // was made before the order was on it (so it filled nothing), and the order's mark.
    let entries = store.book_of("MISS").await?;
    assert_eq!(entries.len(), 1);
    store.unindex_resting(&entries[0]).await?;
    assert_eq!(
        publish_sized(&region, "MISS", "90.00", None).await?.fills,
        0
    );
    store.index_resting(&entries[0]).await?;
    assert_eq!(
        get_order(&region, "pm", "late").await?.status(),
        OrderStatus::New
    );
    store
        .mark_placement(&PlacementMarker {
            account_id: "pm".into(),
            client_order_id: "late".into(),
            symbol: "MISS".into(),
            seen_version,
            // Older than the grace a request in flight is given.
            marked_at: SystemTime::now() - Duration::from_secs(10),
        })
        .await?;

    // Nobody asks: the sweep fills it at the price that crossed it, once.
    let mut order = get_order(&region, "pm", "late").await?;
    for _ in 0..150 {
        if order.status() != OrderStatus::New {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        order = get_order(&region, "pm", "late").await?;
    }
    assert_eq!(progress(&order), (OrderStatus::Filled, 10, 0, "90", "0", 0));
    let after = account(&region, "pm").await?;
    assert_eq!(after.cash_balance, "9100");
    assert_eq!(position(&after, "MISS").map(|p| p.quantity), Some(10));
    // opened, funded, accepted, filled
    assert_eq!(after.version, 4);
    assert_eq!(marks_of_late(store.placement_markers().await?), 0);
    region.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_racing_a_fill_ends_in_exactly_one_of_them() -> anyhow::Result<()> {
    let config = support::isolated_config();
    let first = WriteRegion::start(config.clone()).await?;
    let second = WriteRegion::start(sharing(&config)).await?;
    priced_instrument(&first, "RACE", "100.00").await?;
    const ORDERS: usize = 100;
    const ACCOUNTS: usize = 10;
    let holder = |i: usize| format!("rc-{}", i % ACCOUNTS);
    for a in 0..ACCOUNTS {
        funded_account(&first, &holder(a), "100000").await?;
    }
    // At most 16 calls in flight on one connection: the server's per-connection limit.
    let placed: Vec<_> = futures::stream::iter(0..ORDERS)
        .map(|i| {
            let request = limit_order(
                &holder(i),
                &format!("r-{i}"),
                "RACE",
                Buy,
                10,
                "95",
                TimeInForce::Gtc,
            );
            place(&first, request)
        })
        .buffered(16)
        .collect()
        .await;
    for order in placed {
        assert_eq!(order?.status(), OrderStatus::New);
    }
    // The price crosses all of them on one server while the other cancels each.
    let fill = publish_sized(&first, "RACE", "94", None);
    let cancels = futures::stream::iter(0..ORDERS)
        .map(|i| {
            let second = &second;
            async move { cancel(second, &holder(i), &format!("r-{i}")).await }
        })
        .buffered(16)
        .collect::<Vec<_>>();
    let (fills, cancels) = tokio::join!(fill, cancels);
    let fills = fills?.fills as usize;

    let mut filled_per_account = [0_i64; ACCOUNTS];
    let mut canceled = 0;
    for (i, answer) in cancels.into_iter().enumerate() {
        let state = get_order(&first, &holder(i), &format!("r-{i}")).await?;
        match answer {
            Ok(answer) => {
                assert_eq!(answer.status(), OrderStatus::Canceled, "order {i}");
                assert_eq!(
                    (state.status(), state.filled_quantity),
                    (OrderStatus::Canceled, 0),
                    "order {i}"
                );
                canceled += 1;
            }
            Err(status) => {
                assert_eq!(reason(&status), "ORDER_NOT_OPEN", "order {i}: {status:?}");
                assert_eq!(
                    (
                        state.status(),
                        state.filled_quantity,
                        state.average_fill_price.as_str()
                    ),
                    (OrderStatus::Filled, 10, "94"),
                    "order {i}"
                );
                filled_per_account[i % ACCOUNTS] += 10;
            }
        }
    }
    assert_eq!(
        canceled + fills,
        ORDERS,
        "every order ends in exactly one outcome"
    );
    for (a, shares) in filled_per_account.iter().enumerate() {
        let state = account(&first, &holder(a)).await?;
        assert_eq!(
            state.cash_balance,
            (100000 - shares * 94).to_string(),
            "{}",
            holder(a)
        );
        assert_eq!(state.reserved_cash, "0", "{}", holder(a));
        assert_eq!(
            position(&state, "RACE").map_or(0, |p| p.quantity),
            *shares,
            "{}",
            holder(a)
        );
    }
    first.stop().await?;
    second.stop().await
}

#[tokio::test]
async fn a_lot_sized_price_fills_whole_lots_only() -> anyhow::Result<()> {
    let region = WriteRegion::start(support::isolated_config()).await?;
    region
        .market()
        .upsert_instrument(instrument("LOTX", "0.05", 10))
        .await?;
    publish_sized(&region, "LOTX", "10.00", None).await?;
    funded_account(&region, "lx", "10000").await?;
    place(
        &region,
        limit_order("lx", "l1", "LOTX", Buy, 50, "9.50", TimeInForce::Gtc),
    )
    .await?;
    // 25 shares at 9.50: two whole lots of 10 fill, the rest of the size is unusable.
    assert_eq!(
        publish_sized(&region, "LOTX", "9.50", Some(25))
            .await?
            .fills,
        1
    );
    let order = get_order(&region, "lx", "l1").await?;
    assert_eq!(
        progress(&order),
        (OrderStatus::PartiallyFilled, 20, 30, "9.5", "285", 0)
    );
    // A size of zero fills nothing.
    assert_eq!(
        publish_sized(&region, "LOTX", "9.45", Some(0)).await?.fills,
        0
    );
    region.stop().await
}

//! The command path against real Cassandra and NATS: a scripted session with time travel, bad
//! input refused with the right code, contention that never overspends or oversells, and
//! idempotent retries.

mod support;

use std::time::Duration;

use futures::future::join_all;
use testkit::{
    trading::{WriteApi, funded_account, instrument, order, priced_instrument},
    write_region::WriteRegion,
};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use trading_proto::{
    events::v1::{RawEvent, raw_event::Body},
    trading::v1::{self as api, get_account_as_of_request::Point},
};

fn position<'a>(account: &'a api::Account, symbol: &str) -> &'a api::Position {
    account
        .positions
        .iter()
        .find(|position| position.symbol == symbol)
        .unwrap_or_else(|| panic!("no {symbol} position in {account:?}"))
}

async fn as_of(region: &WriteRegion, account_id: &str, point: Point) -> api::Account {
    region
        .accounts()
        .get_account_as_of(api::GetAccountAsOfRequest {
            account_id: account_id.into(),
            point: Some(point),
        })
        .await
        .expect("as of")
        .into_inner()
}

#[tokio::test]
async fn scripted_session_ends_with_hand_computed_state_and_time_travels() -> anyhow::Result<()> {
    let region = WriteRegion::start(support::isolated_config()).await?;
    let mut accounts = region.accounts();
    let mut market = region.market();
    let mut orders = region.orders();

    let opened = accounts
        .open_account(api::OpenAccountRequest {
            account_id: "alice".into(),
            owner_name: "Alice Liddell".into(),
            base_currency: "USD".into(),
        })
        .await?
        .into_inner();
    assert_eq!((opened.version, opened.cash_balance.as_str()), (1, "0"));
    let deposit = accounts
        .deposit(api::DepositRequest {
            account_id: "alice".into(),
            amount: "100000.00".into(),
            idempotency_key: "dep-1".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        (deposit.account_version, deposit.cash_balance.as_str()),
        (2, "100000")
    );

    market
        .upsert_instrument(instrument("AAPL", "0.01", 1))
        .await?;
    market
        .upsert_instrument(instrument("MSFT", "0.05", 10))
        .await?;
    let listed = market
        .list_instruments(api::ListInstrumentsRequest {})
        .await?
        .into_inner();
    let symbols: Vec<_> = listed
        .instruments
        .iter()
        .map(|i| i.symbol.as_str())
        .collect();
    assert_eq!(symbols, ["AAPL", "MSFT"]);
    assert_eq!(listed.instruments[1].lot_size, 10);
    for (symbol, price) in [("AAPL", "175.50"), ("MSFT", "410.00")] {
        market
            .publish_price(api::PublishPriceRequest {
                symbol: symbol.into(),
                price: price.into(),
                ..Default::default()
            })
            .await?;
    }

    // Buy 100 AAPL at market: 100 x 175.50 = 17550.
    let buy_aapl = orders
        .place_order(order("alice", "o-1", "AAPL", api::Side::Buy, 100))
        .await?
        .into_inner();
    assert_eq!(buy_aapl.status(), api::OrderStatus::Filled);
    assert_eq!(
        (buy_aapl.fill_price.as_str(), buy_aapl.notional.as_str()),
        ("175.5", "17550")
    );
    assert_eq!(
        (buy_aapl.cash_balance.as_str(), buy_aapl.account_version),
        ("82450", 3)
    );

    // Buy 20 MSFT with a marketable limit: fills at the current 410, not the limit.
    let buy_msft = orders
        .place_order(api::PlaceOrderRequest {
            order_type: api::OrderType::Limit.into(),
            limit_price: "410.05".into(),
            ..order("alice", "o-2", "MSFT", api::Side::Buy, 20)
        })
        .await?
        .into_inner();
    assert_eq!(
        (buy_msft.fill_price.as_str(), buy_msft.notional.as_str()),
        ("410", "8200")
    );
    assert_eq!(
        (buy_msft.cash_balance.as_str(), buy_msft.account_version),
        ("74250", 4)
    );

    market
        .publish_price(api::PublishPriceRequest {
            symbol: "AAPL".into(),
            price: "180.25".into(),
            ..Default::default()
        })
        .await?;
    // Sell 40 AAPL at 180.25: +7210 cash, realized (180.25 - 175.50) x 40 = 190.
    let sell = orders
        .place_order(order("alice", "o-3", "AAPL", api::Side::Sell, 40))
        .await?
        .into_inner();
    assert_eq!(
        (sell.notional.as_str(), sell.cash_balance.as_str()),
        ("7210", "81460")
    );

    let account = accounts
        .get_account(api::GetAccountRequest {
            account_id: "alice".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        (account.cash_balance.as_str(), account.version),
        ("81460", 5)
    );
    let aapl = position(&account, "AAPL");
    assert_eq!(
        (
            aapl.quantity,
            aapl.average_cost.as_str(),
            aapl.realized_pnl.as_str()
        ),
        (60, "175.5", "190")
    );
    let msft = position(&account, "MSFT");
    assert_eq!((msft.quantity, msft.average_cost.as_str()), (20, "410"));

    // Every intermediate version, rebuilt from the event stream.
    let expected_cash = ["0", "100000", "82450", "74250", "81460"];
    for (version, cash) in (1..=5).zip(expected_cash) {
        let then = as_of(&region, "alice", Point::Version(version)).await;
        assert_eq!((then.version, then.cash_balance.as_str()), (version, cash));
    }
    let after_first_buy = as_of(&region, "alice", Point::Version(3)).await;
    assert_eq!(position(&after_first_buy, "AAPL").quantity, 100);
    assert!(after_first_buy.positions.iter().all(|p| p.symbol != "MSFT"));
    // By time: the instant of the first fill shows version 3.
    let executed_at = buy_aapl.executed_at.expect("executed_at");
    let by_time = as_of(&region, "alice", Point::AsOfTime(executed_at)).await;
    assert_eq!(by_time.version, 3);
    let beyond = region
        .accounts()
        .get_account_as_of(api::GetAccountAsOfRequest {
            account_id: "alice".into(),
            point: Some(Point::Version(6)),
        })
        .await
        .expect_err("version 6 does not exist yet");
    assert_eq!(beyond.code(), Code::InvalidArgument);

    // GetOrder returns the recorded fill.
    let fetched = orders
        .get_order(api::GetOrderRequest {
            account_id: "alice".into(),
            client_order_id: "o-1".into(),
        })
        .await?
        .into_inner();
    assert_eq!(fetched, buy_aapl);

    // The raw account stream holds the five events in order, once each.
    let events = testkit::read_events::<RawEvent>(
        &region.config.nats_url,
        &region.config.account_stream,
        5,
        Duration::from_secs(20),
    )
    .await?;
    let versions: Vec<u64> = events
        .iter()
        .map(|event| event.envelope.as_ref().map_or(0, |e| e.version))
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    assert!(matches!(events[2].body, Some(Body::TradeExecuted(_))));
    region.stop().await
}

fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn bad_input_is_refused_with_the_right_code_and_records_nothing() -> anyhow::Result<()> {
    let region = WriteRegion::start(support::isolated_config()).await?;
    funded_account(&region, "bob", "1000").await?;
    priced_instrument(&region, "AAPL", "100.00").await?;
    let mut market = region.market();
    market
        .upsert_instrument(instrument("LOTS", "0.05", 10))
        .await?;
    market
        .publish_price(api::PublishPriceRequest {
            symbol: "LOTS".into(),
            price: "10.00".into(),
            ..Default::default()
        })
        .await?;
    market
        .upsert_instrument(api::UpsertInstrumentRequest {
            tradable: false,
            ..instrument("HALT", "0.01", 1)
        })
        .await?;
    market
        .publish_price(api::PublishPriceRequest {
            symbol: "HALT".into(),
            price: "5.00".into(),
            ..Default::default()
        })
        .await?;
    market
        .upsert_instrument(instrument("NOPX", "0.01", 1))
        .await?;
    let mut orders = region.orders();
    orders
        .place_order(order("bob", "seed", "AAPL", api::Side::Buy, 1))
        .await?;
    let before = region
        .accounts()
        .get_account(api::GetAccountRequest {
            account_id: "bob".into(),
        })
        .await?
        .into_inner();

    let limit = |symbol: &str, side, quantity, price: &str| api::PlaceOrderRequest {
        order_type: api::OrderType::Limit.into(),
        limit_price: price.into(),
        ..order("bob", "x", symbol, side, quantity)
    };
    // (request, expected code, text the message must contain)
    let cases = [
        (
            order("bob", "x", "AAPL", api::Side::Buy, 0),
            Code::InvalidArgument,
            "quantity",
        ),
        (
            order("bad id!", "x", "AAPL", api::Side::Buy, 1),
            Code::InvalidArgument,
            "account_id",
        ),
        (
            order("bob", "", "AAPL", api::Side::Buy, 1),
            Code::InvalidArgument,
            "client_order_id",
        ),
        (
            order("bob", "x", "AAPL", api::Side::Unspecified, 1),
            Code::InvalidArgument,
            "side",
        ),
        (
            limit("AAPL", api::Side::Buy, 1, "abc"),
            Code::InvalidArgument,
            "limit_price",
        ),
        (
            limit("LOTS", api::Side::Buy, 10, "10.02"),
            Code::InvalidArgument,
            "tick size",
        ),
        (
            order("bob", "x", "LOTS", api::Side::Buy, 15),
            Code::InvalidArgument,
            "lots of 10",
        ),
        (
            order("nobody", "x", "AAPL", api::Side::Buy, 1),
            Code::NotFound,
            "nobody",
        ),
        (
            order("bob", "x", "ZZZZ", api::Side::Buy, 1),
            Code::NotFound,
            "ZZZZ",
        ),
        (
            order("bob", "x", "AAPL", api::Side::Buy, 11),
            Code::FailedPrecondition,
            "INSUFFICIENT_FUNDS",
        ),
        (
            order("bob", "x", "AAPL", api::Side::Sell, 2),
            Code::FailedPrecondition,
            "INSUFFICIENT_POSITION",
        ),
        (
            order("bob", "x", "HALT", api::Side::Buy, 1),
            Code::FailedPrecondition,
            "INSTRUMENT_HALTED",
        ),
        (
            order("bob", "x", "NOPX", api::Side::Buy, 1),
            Code::FailedPrecondition,
            "NO_PRICE",
        ),
        // A limit that would rest must be able to hold back what it may spend or sell.
        (
            limit("AAPL", api::Side::Buy, 10, "99.99"),
            Code::FailedPrecondition,
            "INSUFFICIENT_FUNDS",
        ),
        (
            limit("AAPL", api::Side::Sell, 2, "100.01"),
            Code::FailedPrecondition,
            "INSUFFICIENT_POSITION",
        ),
        (
            api::PlaceOrderRequest {
                time_in_force: 9,
                ..limit("AAPL", api::Side::Buy, 1, "99.99")
            },
            Code::InvalidArgument,
            "time_in_force",
        ),
    ];
    for (request, code, needle) in cases {
        let status = orders
            .place_order(request.clone())
            .await
            .expect_err(&format!("{request:?} must be refused"));
        assert_eq!(status.code(), code, "{request:?}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{needle:?} not in {status:?}"
        );
        if code == Code::FailedPrecondition {
            assert_eq!(reason(&status), needle, "machine-readable reason");
        }
    }

    let mut accounts = region.accounts();
    let cash_cases = [
        (
            api::WithdrawRequest {
                account_id: "bob".into(),
                amount: "-5".into(),
                idempotency_key: "w".into(),
            },
            Code::InvalidArgument,
        ),
        (
            api::WithdrawRequest {
                account_id: "bob".into(),
                amount: "1.123456789".into(),
                idempotency_key: "w".into(),
            },
            Code::InvalidArgument,
        ),
        (
            api::WithdrawRequest {
                account_id: "bob".into(),
                amount: "5".into(),
                idempotency_key: String::new(),
            },
            Code::InvalidArgument,
        ),
        (
            api::WithdrawRequest {
                account_id: "bob".into(),
                amount: "1000000".into(),
                idempotency_key: "w".into(),
            },
            Code::FailedPrecondition,
        ),
        (
            api::WithdrawRequest {
                account_id: "ghost".into(),
                amount: "5".into(),
                idempotency_key: "w".into(),
            },
            Code::NotFound,
        ),
    ];
    for (request, code) in cash_cases {
        let status = accounts
            .withdraw(request.clone())
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{request:?}: {status:?}");
    }
    let opened_again = accounts
        .open_account(api::OpenAccountRequest {
            account_id: "bob".into(),
            owner_name: "Someone Else".into(),
            base_currency: "EUR".into(),
        })
        .await
        .expect_err("account id taken");
    assert_eq!(opened_again.code(), Code::AlreadyExists);
    let bad_instrument = market
        .upsert_instrument(api::UpsertInstrumentRequest {
            tick_size: "0".into(),
            ..instrument("BAD", "0.01", 1)
        })
        .await
        .expect_err("zero tick");
    assert_eq!(bad_instrument.code(), Code::InvalidArgument);
    assert!(bad_instrument.message().contains("tick_size"));

    // Probed from outside: a currency that does not exist, a lot size past the maximum, a
    // 16 KB client order id (refused, never echoed back), and times no Timestamp can hold.
    let xyz = accounts
        .open_account(api::OpenAccountRequest {
            account_id: "newcomer".into(),
            owner_name: "New Comer".into(),
            base_currency: "XYZ".into(),
        })
        .await
        .expect_err("no such currency");
    assert_eq!(xyz.code(), Code::InvalidArgument);
    assert!(xyz.message().contains("ISO 4217"), "{xyz:?}");
    let huge_lots = market
        .upsert_instrument(instrument("HUGE", "0.01", i64::MAX))
        .await
        .expect_err("lot size past the maximum");
    assert_eq!(huge_lots.code(), Code::InvalidArgument);
    let long_id = "x".repeat(16 * 1024);
    let lookup = orders
        .get_order(api::GetOrderRequest {
            account_id: "bob".into(),
            client_order_id: long_id.clone(),
        })
        .await
        .expect_err("malformed client order id");
    assert_eq!(lookup.code(), Code::InvalidArgument);
    assert!(lookup.message().contains("client_order_id"));
    assert!(
        !lookup.message().contains(&long_id[..64]),
        "the id is not echoed back"
    );
    for (seconds, nanos) in [
        (1_700_000_000, -1),
        (1_700_000_000, 2_000_000_000),
        (1 << 62, 0),
    ] {
        let status = accounts
            .get_account_as_of(api::GetAccountAsOfRequest {
                account_id: "bob".into(),
                point: Some(Point::AsOfTime(prost_types::Timestamp { seconds, nanos })),
            })
            .await
            .expect_err("not a normalized time");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{seconds} {nanos}: {status:?}"
        );
        assert!(status.message().contains("as_of_time"));
    }

    let after = accounts
        .get_account(api::GetAccountRequest {
            account_id: "bob".into(),
        })
        .await?
        .into_inner();
    assert_eq!(after, before, "a refused command must record nothing");
    region.stop().await
}

/// Another server on the same keyspace and streams as `config` (a second process's worth).
fn sharing(config: &write_region::Config) -> write_region::Config {
    write_region::Config {
        listen_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ..config.clone()
    }
}

/// Runs `count` orders from `clients` separate connections, split over two write-region
/// processes' worth of servers sharing one keyspace, all at once.
async fn race(
    regions: &[&WriteRegion],
    clients: usize,
    requests: Vec<api::PlaceOrderRequest>,
) -> Vec<Result<api::PlaceOrderResponse, Status>> {
    let mut channels = Vec::new();
    for client in 0..clients {
        let region = regions[client % regions.len()];
        channels.push(testkit::connect(region.addr).await.expect("connect"));
    }
    let calls = requests.into_iter().enumerate().map(|(index, request)| {
        let mut client = api::order_service_client::OrderServiceClient::new(
            channels[index % channels.len()].clone(),
        );
        async move { client.place_order(request).await.map(|r| r.into_inner()) }
    });
    join_all(calls).await
}

#[tokio::test]
async fn concurrent_orders_never_overspend_or_oversell() -> anyhow::Result<()> {
    let first = WriteRegion::start(support::isolated_config()).await?;
    // A second server on the same keyspace: the conditional batch, not the in-process lock,
    // must keep the two apart.
    let second = WriteRegion::start(sharing(&first.config)).await?;
    funded_account(&first, "carol", "10000").await?;
    priced_instrument(&first, "AAPL", "100.00").await?;

    // 64 buys of 10 x 100 = 1000 each against 10000 of cash: exactly 10 are affordable.
    let buys = (0..64)
        .map(|i| order("carol", &format!("buy-{i}"), "AAPL", api::Side::Buy, 10))
        .collect();
    let results = race(&[&first, &second], 8, buys).await;
    let filled = results.iter().filter(|result| result.is_ok()).count();
    assert_eq!(filled, 10, "exactly the affordable buys fill");
    for result in &results {
        if let Err(status) = result {
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert_eq!(reason(status), "INSUFFICIENT_FUNDS");
        }
    }
    let account = first
        .accounts()
        .get_account(api::GetAccountRequest {
            account_id: "carol".into(),
        })
        .await?
        .into_inner();
    assert_eq!(account.cash_balance, "0");
    assert_eq!(position(&account, "AAPL").quantity, 100);
    assert_eq!(account.version, 12, "open, deposit and 10 fills");

    // 64 sells of 10 against a position of 100: exactly 10 fill.
    let sells = (0..64)
        .map(|i| order("carol", &format!("sell-{i}"), "AAPL", api::Side::Sell, 10))
        .collect();
    let results = race(&[&first, &second], 8, sells).await;
    assert_eq!(results.iter().filter(|result| result.is_ok()).count(), 10);
    for result in &results {
        if let Err(status) = result {
            assert_eq!(reason(status), "INSUFFICIENT_POSITION", "{status:?}");
        }
    }
    let account = second
        .accounts()
        .get_account(api::GetAccountRequest {
            account_id: "carol".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        (account.cash_balance.as_str(), account.version),
        ("10000", 22)
    );
    assert_eq!(position(&account, "AAPL").quantity, 0);

    // Gap-free: every version rebuilds, each fill moved cash by exactly one order, and cash
    // never went negative at any version.
    let mut previous_cash = None;
    for version in 1..=22 {
        let then = as_of(&first, "carol", Point::Version(version)).await;
        assert_eq!(then.version, version);
        assert!(
            !then.cash_balance.starts_with('-'),
            "negative cash at {version}"
        );
        previous_cash = Some(then.cash_balance);
    }
    assert_eq!(previous_cash.as_deref(), Some("10000"));
    second.stop().await?;
    first.stop().await
}

/// The server may keep the state its last commit produced and decide a retry against it: a
/// retry must still answer as the first time, even though that state could not fill it again.
#[tokio::test]
async fn a_retry_answers_as_the_first_time_though_its_own_fill_spent_the_cash() -> anyhow::Result<()>
{
    let region = WriteRegion::start(support::isolated_config()).await?;
    funded_account(&region, "erin", "1000").await?;
    priced_instrument(&region, "AAPL", "100.00").await?;
    let all_in = || order("erin", "all-in", "AAPL", api::Side::Buy, 10);
    let first = region.orders().place_order(all_in()).await?.into_inner();
    let retry = region.orders().place_order(all_in()).await?.into_inner();
    assert_eq!(retry, first);
    let refused = region
        .orders()
        .place_order(order("erin", "one-more", "AAPL", api::Side::Buy, 1))
        .await
        .expect_err("no cash left");
    assert_eq!(reason(&refused), "INSUFFICIENT_FUNDS");
    region.stop().await
}

#[tokio::test]
async fn retries_with_one_key_trade_once_and_answer_identically() -> anyhow::Result<()> {
    let first = WriteRegion::start(support::isolated_config()).await?;
    let second = WriteRegion::start(sharing(&first.config)).await?;
    funded_account(&first, "dave", "100000").await?;
    priced_instrument(&first, "AAPL", "100.00").await?;

    let retries = vec![order("dave", "same-order", "AAPL", api::Side::Buy, 5); 10];
    let results = race(&[&first, &second], 10, retries).await;
    let responses: Vec<_> = results.into_iter().collect::<Result<_, _>>()?;
    assert!(responses.iter().all(|response| *response == responses[0]));
    assert_eq!(responses[0].account_version, 3);

    let deposits = (0..10).map(|index| {
        let mut client = if index % 2 == 0 {
            first.accounts()
        } else {
            second.accounts()
        };
        async move {
            client
                .deposit(api::DepositRequest {
                    account_id: "dave".into(),
                    amount: "250.50".into(),
                    idempotency_key: "same-deposit".into(),
                })
                .await
                .map(|response| response.into_inner())
        }
    });
    let deposits: Vec<_> = join_all(deposits)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    assert!(deposits.iter().all(|response| *response == deposits[0]));

    let account = first
        .accounts()
        .get_account(api::GetAccountRequest {
            account_id: "dave".into(),
        })
        .await?
        .into_inner();
    // 100000 - 5 x 100 + 250.50, once each.
    assert_eq!(
        (account.cash_balance.as_str(), account.version),
        ("99750.5", 4)
    );
    assert_eq!(position(&account, "AAPL").quantity, 5);

    // The same key with a different request is refused, not silently answered.
    let reused = first
        .orders()
        .place_order(order("dave", "same-order", "AAPL", api::Side::Buy, 6))
        .await
        .expect_err("different payload");
    assert_eq!(reused.code(), Code::AlreadyExists);
    assert_eq!(reason(&reused), "IDEMPOTENCY_KEY_REUSED");
    second.stop().await?;
    first.stop().await
}
